"""Defensive readers for Shopify payload fields: a wrong type reads as absent (pure).

A verified payload still comes from outside. Whatever shape a field has, these return
the type the caller asked for or nothing, so translation never trips over a surprise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

#: control characters (NUL included): PostgreSQL text refuses NUL, and none belong in a field
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_TEXT = 2048
_EMPTY: Mapping[str, Any] = {}


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else _EMPTY


def items(value: Any) -> Sequence[Any]:
    """``value`` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else ()


def text(value: Any) -> str | None:
    """A non-empty, stripped, printable UTF-8 string, or None."""
    if not isinstance(value, str):
        return None
    rv = value.strip()
    if not rv or len(rv) > _MAX_TEXT or _CONTROL.search(rv):
        return None
    try:
        rv.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which json.loads lets through
        return None
    return rv


def money(value: Any) -> Decimal | None:
    """A finite, non-negative amount from Shopify's decimal string (or a JSON number)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount > Decimal(10) ** 12:
        return None
    return amount


def quantity(value: Any) -> int | None:
    """A positive whole quantity, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value < 2**31 else None


def timestamp(value: Any) -> datetime | None:
    """An ISO 8601 time that carries its offset (as Shopify writes them), or None."""
    raw = text(value)
    if raw is None or len(raw) > 64:
        return None
    raw = re.sub(r"(\.\d{6})\d+", r"\1", raw)
    try:
        rv = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if rv.tzinfo is None or not 1970 <= rv.year <= 9998:
        return None
    return rv


def attribute(resource: Mapping[str, Any], name: str) -> str | None:
    """A note/cart attribute's value: ``[{"name": .., "value": ..}]`` or a plain object."""
    for key in ("note_attributes", "attributes"):
        container = resource.get(key)
        if isinstance(container, Mapping):
            found = text(container.get(name))
            if found:
                return found
        for entry in items(container):
            entry = mapping(entry)
            if entry.get("name") == name:
                found = text(entry.get("value"))
                if found:
                    return found
    return None
