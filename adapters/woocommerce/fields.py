"""Lenient readers of WooCommerce order fields (pure).

WooCommerce sends numbers as strings, dates without an offset, and plugins add odd shapes;
the translation and the match keys read every field through these, so a field of the wrong
shape reads as missing instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def meta_value(order: Mapping[str, Any], key: str) -> Any:
    """The value of the first ``meta_data`` entry named ``key``, or None."""
    for item in as_list(order.get("meta_data")):
        if isinstance(item, Mapping) and item.get("key") == key:
            return item.get("value")
    return None


def as_str(value: Any) -> str | None:
    """A string, a number as its text, or None (booleans and blanks are None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float):
        return str(value)
    return None


def as_int(value: Any) -> int | None:
    """An integer from an int, a whole float or up to 19 ASCII digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 19:
            return int(text)
    return None


def as_gmt(value: Any) -> datetime | None:
    """A ``*_gmt`` field (``2017-03-22T19:28:08``, UTC without an offset) as an aware datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except (ValueError, OverflowError):
        return None
    return (
        parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    )


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
