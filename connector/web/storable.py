"""Whether what a delivery would write fits the database, checked before anything is written.

A signed body may hold what no column keeps: a raw UTF-16 surrogate (bytes ``ED A0 80``,
which Python's JSON reader accepts), a NUL character (PostgreSQL text refuses it), an order
id of 65 digits or ``1e308`` (an ``order_ref`` is 64 characters), a number no JSON column
takes (``1e999`` is infinity). SQLite stores most of these silently; PostgreSQL refuses the
statement, and the delivery would get a 500. Here every value of the receipt and the events
is measured against the column it goes to (lengths read from the models), so such a body is
recorded as unusable, with the reason, instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import String, Table

from connector.events import CanonicalEvent
from connector.store import queries
from connector.store.models import Event, WebhookReceipt

#: JSON escapes of NUL and of (possibly unpaired) surrogates; only then is the payload walked
_SUSPECT_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")

_RECEIPT_TEXT = (
    "delivery_id",
    "topic",
    "event_ref",
    "api_version",
    "order_ref",
    "customer_ref",
)
_EVENT_TEXT = ("event_name", "event_id", "order_ref", "customer_ref")


def _lengths(table: Any, names: Sequence[str]) -> dict[str, int | None]:
    columns = table.c if isinstance(table, Table) else table.__table__.c
    return {
        name: columns[name].type.length
        if isinstance(columns[name].type, String)
        else None
        for name in names
    }


_RECEIPT_LENGTHS = _lengths(WebhookReceipt, _RECEIPT_TEXT)
_EVENT_LENGTHS = _lengths(Event, _EVENT_TEXT)


def text_problem(body: bytes, payload: Any) -> str | None:
    """Why the parsed body holds text no database keeps, or None.

    Two C-speed scans decide for every ordinary body: a strict UTF-8 decode (which refuses
    raw surrogates) and a search for ``\\u0000``/``\\uD8xx`` escapes; only a body with such an
    escape is walked.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8 text (it holds a raw UTF-16 surrogate or other stray bytes)"
    if _SUSPECT_ESCAPES.search(body):
        if _holds(payload, _has_surrogate):
            return "the body holds an unpaired UTF-16 surrogate"
        if _holds(payload, lambda s: "\x00" in s):
            return "the body holds a NUL character"
    return None


def unfit(receipt: queries.ReceiptIn, events: Sequence[CanonicalEvent]) -> str | None:
    """Which value of the receipt or the events does not fit its column, or None."""
    for name, length in _RECEIPT_LENGTHS.items():
        problem = _text_unfit(getattr(receipt, name), length)
        if problem:
            return f"the delivery's {name} {problem}"
    if receipt.detail is not None and _text_unfit(receipt.detail, None):
        return "the delivery's detail holds text no database keeps"
    for ev in events:
        for name, length in _EVENT_LENGTHS.items():
            problem = _text_unfit(getattr(ev, name), length)
            if problem:
                return f"the {ev.event_name[:64]!a} event's {name} {problem}"
        try:
            text = json.dumps(ev.to_meta(), allow_nan=False, ensure_ascii=False)
        except (ValueError, OverflowError):
            return "a number in the event is out of range (infinite or not a number)"
        problem = _text_unfit(text, None)
        if problem:
            return f"the event's data {problem}"
    return None


def fitted(receipt: queries.ReceiptIn, reason: str) -> queries.ReceiptIn:
    """``receipt`` recorded as unusable with ``reason``: every value made to fit its column.

    A delivery id that does not fit becomes its digest, so a redelivery is still a no-op;
    references that do not fit are dropped (no redaction can name them anyway).
    """
    changes: dict[str, Any] = {"outcome": "skipped", "detail": reason}
    for name, length in _RECEIPT_LENGTHS.items():
        value = getattr(receipt, name)
        if value is None or not _text_unfit(value, length):
            continue
        if name == "delivery_id":
            raw = value.encode("utf-8", "surrogatepass")
            changes[name] = "digest:" + hashlib.sha256(raw).hexdigest()
        elif name == "topic":
            changes[name] = _clean(value)[: length or None]
        else:
            changes[name] = None
    return replace(receipt, **changes)


def _text_unfit(value: str | None, length: int | None) -> str | None:
    if value is None:
        return None
    if length is not None and len(value) > length:
        return f"is longer than {length} characters"
    if "\x00" in value:
        return "holds a NUL character"
    if _has_surrogate(value):
        return "holds an unpaired UTF-16 surrogate"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


def _holds(value: Any, test: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if test(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
