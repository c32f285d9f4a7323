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


@pytest.mark.parametrize(
    "document",
    [
        b'{"id": 123456789012345678901234567890}',
        '{"id": 18446744073709551616}',
        b"[-9300000000000000000]",
        memoryview(b'{"id": 123456789012345678901234567890}'),
    ],
)
def test_integers_beyond_64_bits_read_as_integers(document: Any) -> None:
    raw = bytes(document) if isinstance(document, memoryview) else document
    # exact: an int and the float orjson would make of it do not compare equal
    assert jsoncodec.loads(document) == json.loads(raw)


def test_a_column_with_a_lone_surrogate_is_written_as_before() -> None:
    """SQLAlchemy's default serializer escaped it; so does the column serializer."""
    value = {"name": "\ud800"}
    assert jsoncodec.dumps_text(value) == json.dumps(value)
    assert jsoncodec.loads(jsoncodec.dumps_text(value)) == value


def test_a_request_body_json_cannot_hold_is_a_value_error() -> None:
    from connector.capi import encode_json_body

    with pytest.raises(ValueError, match="cannot be written as JSON"):
        encode_json_body({"data": [jsoncodec.raw(b"{}")], "test_event_code": "\ud800"})
