"""Elongation marks (Arabic tatweel and its kin) stay out of hashed names and cities."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.matching import hash_value, normalize, strip_elongation


@pytest.mark.parametrize(
    ("field", "typed", "plain"),
    [
        pytest.param("fn", "محـــمد", "محمد", id="first-name-tatweel"),
        pytest.param("ln", "العـــلي", "العلي", id="last-name-tatweel"),
        pytest.param("ct", "القـــاهرة", "القاهرة", id="city-tatweel"),
        pytest.param("ct", "جـدة", "جدة", id="city-one-tatweel"),
        pytest.param("fn", "\u07d3\u07fa\u07cc", "\u07d3\u07cc", id="nko-lajanyalan"),
        # U+FE71 is a tatweel carrying a fathatan: only the mark is kept
        pytest.param("fn", "سم\ufe71", "سم\u064b", id="presentation-form"),
    ],
)
def test_elongated_names_and_cities_hash_like_plain_ones(
    field: str, typed: str, plain: str
) -> None:
    value = normalize(field, typed)
    assert value is not None
    assert "\u0640" not in value
    assert normalize(field, plain) == value
    assert hash_value(plain) == hash_value(value)


@given(st.text(max_size=30))
def test_stripping_removes_every_tatweel_and_nothing_else(text: str) -> None:
    stripped = strip_elongation(text)
    assert "\u0640" not in stripped
    assert "\u07fa" not in stripped
    if not any("\ufe70" <= ch <= "\ufe7f" for ch in text):
        assert text.replace("\u0640", "").replace("\u07fa", "") == stripped
