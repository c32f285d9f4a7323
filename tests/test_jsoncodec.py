"""The JSON codec of the outbox and the Graph API: the standard library's documents, faster."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector import jsoncodec

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_what_it_writes_the_standard_library_reads_back_the_same(value: Any) -> None:
    document = jsoncodec.dumps(value)
    assert json.loads(document) == value
    assert jsoncodec.loads(document) == value


@given(JSON_VALUES)
def test_it_reads_what_the_standard_library_wrote(value: Any) -> None:
    assert jsoncodec.loads(json.dumps(value)) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"a": 1, "b": [1, 2]}, b'{"a":1,"b":[1,2]}', id="compact"),
        pytest.param({"name": "Zoë 東京"}, '{"name":"Zoë 東京"}'.encode(), id="utf-8"),
        pytest.param({1: "x"}, b'{"1":"x"}', id="int-keys-as-json.dumps"),
        pytest.param([2**70], b"[1180591620717411303424]", id="beyond-64-bits"),
    ],
)
def test_documents(value: Any, expected: bytes) -> None:
    assert jsoncodec.dumps(value) == expected
    assert json.loads(jsoncodec.dumps(value)) == json.loads(json.dumps(value))


def test_nan_written_by_the_standard_library_still_reads() -> None:
    got = jsoncodec.loads(json.dumps({"value": float("inf")}))
    assert got == {"value": float("inf")}


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="line 1 column 2"):
        jsoncodec.loads(b"{not json")


def test_what_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        jsoncodec.dumps({"when": object()})
