"""JSON in and out of the outbox and the Graph API, fast where it can be, exact where not.

Every outbox row's ``payload`` is read as JSON when a worker claims it, and every request to
Meta carries up to 1,000 of them as one JSON body: with the standard library these two passes
were the largest share of a worker's time. orjson (https://github.com/ijl/orjson) reads and
writes the same documents several times faster. Where it is stricter than the standard
library, the standard library takes over, so nothing that was readable or writable before
stops being so:

- writing: integers beyond 64 bits and other types orjson refuses (``TypeError``);
- reading: ``NaN`` and ``Infinity``, which Python's ``json.dumps`` writes but JSON forbids,
  escaped lone surrogates, and integers beyond 64 bits (orjson would make them floats).

One difference stays: ``NaN`` and infinities are written as ``null`` (JSON has no such
numbers; ``json.dumps`` wrote tokens no JSON reader accepts).

Dict keys that are not strings are written as strings, as ``json.dumps`` does.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS

#: digits as "0", a minus as itself, the rest as a space: runs of digits become easy to see
_NUMBERS = bytes(
    0x30 if 0x30 <= i <= 0x39 else 0x2D if i == 0x2D else 0x20 for i in range(256)
)
#: 20 digits may exceed an unsigned 64-bit integer; a minus and 19 a signed one
_BEYOND_64_BITS = b"0" * 20
_BELOW_INT64 = b"-" + b"0" * 19

#: a JSON document already written, placed into a larger one as it is by :func:`dumps`
Raw = orjson.Fragment


def raw(document: str | bytes) -> Raw:
    """``document`` (JSON text, trusted: it is not parsed again) to place inside another.

    The outbox stores each Meta event as JSON; a request to Meta carries up to 1,000 of
    them, and splicing their text costs nothing where a parse and a new serialization
    cost the most of a worker's time.
    """
    return orjson.Fragment(document)


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON bytes (no spaces, non-ASCII kept as is).

    Raises:
        TypeError: the value is not JSON-serializable (as ``json.dumps`` raises it).
        ValueError: it holds a circular reference.
    """
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        # (A document holding :data:`Raw` parts cannot take this way: it raises TypeError.)
        # A 65-bit integer, say: the standard library writes what orjson will not.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )


def dumps_text(value: Any) -> str:
    """SQLAlchemy's ``json_serializer`` for JSON columns: compact JSON as a ``str``.

    What orjson refuses (a lone surrogate, an integer beyond 64 bits) is written as
    SQLAlchemy's own default writes it, ``json.dumps`` with non-ASCII escaped.
    """
    try:
        return orjson.dumps(value, option=_OPTIONS).decode("utf-8")
    except TypeError:
        return json.dumps(value)


def loads(document: str | bytes | bytearray | memoryview) -> Any:
    """The value of a JSON document: SQLAlchemy's ``json_deserializer`` for JSON columns.

    Raises:
        ValueError: the document is not JSON (``json.JSONDecodeError`` is a ValueError).
    """
    original: str | bytes
    if isinstance(document, str):
        original = document
        document = document.encode("utf-8", "surrogatepass")
    else:
        document = original = bytes(document)
    numbers = document.translate(_NUMBERS)
    if _BEYOND_64_BITS in numbers or _BELOW_INT64 in numbers:
        # orjson reads an integer beyond 64 bits as a float; the standard library keeps it.
        return json.loads(original)
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError:
        # NaN or Infinity, written by json.dumps before this module existed; escaped lone
        # surrogates.
        return json.loads(original)
