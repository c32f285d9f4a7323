"""Log output for every process: one JSON object per line, or readable text in development.

Context that applies to many lines (the request id, a connection id, event ids) is bound in
a context variable and added to every record of that request or batch, so call sites stay
plain ``log.info(...)``. Every line passes :class:`connector.redact.RedactSecrets` before it
is rendered, and the rendered line (tracebacks included) through ``redact_query`` again.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from connector import redact

#: the keys :func:`bind` accepts; a closed set keeps personal data out by construction
CONTEXT_KEYS = ("request_id", "connection_id", "event_ids")
#: at most this many event ids on one line
MAX_EVENT_IDS = 20

#: an immutable empty default: bind() always sets a new mapping, never mutates this one
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "connector_log_context", default=_EMPTY
)


def bind(**values: Any) -> Token[Mapping[str, Any]]:
    """Add ``values`` to the context of every following log line; None removes a key.

    Raises:
        ValueError: a key outside :data:`CONTEXT_KEYS`.
    """
    unknown = set(values) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"not a log context key: {', '.join(sorted(unknown))}")
    merged = dict(_context.get())
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif key == "event_ids":
            merged[key] = [str(v) for v in list(value)[:MAX_EVENT_IDS]]
        else:
            merged[key] = str(value)
    return _context.set(merged)


def reset(token: Token[Mapping[str, Any]]) -> None:
    """Restore the context as it was before the :func:`bind` that returned ``token``."""
    _context.reset(token)


def clear() -> None:
    """Forget every bound value."""
    _context.set(_EMPTY)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """``with bound(connection_id=...):`` binds for the block only."""
    token = bind(**values)
    try:
        yield
    finally:
        reset(token)


def current() -> Mapping[str, Any]:
    """The values bound now."""
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (``record.request_id``, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for key in CONTEXT_KEYS:
            if key in ctx and not hasattr(record, key):
                setattr(record, key, ctx[key])
        record.context = "".join(
            f" {key}={','.join(v) if isinstance(v, list) else v}"
            for key, v in ((k, getattr(record, k, None)) for k in CONTEXT_KEYS)
            if v
        )
        return True


class JsonLines(JsonFormatter):
    """One JSON object per record: time, level, logger, message, process, context."""

    def __init__(self, process: str) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            static_fields={"process_type": process},
            reserved_attrs=[*_RESERVED, "context"],
        )

    def format(self, record: logging.LogRecord) -> str:
        return redact.redact_query(super().format(record))


class TextLines(logging.Formatter):
    """``time LEVEL logger message key=value...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            record.context = ""
        return redact.redact_query(super().format(record))


# LogRecord's own attributes: python-json-logger adds every other attribute as a field.
_RESERVED = [
    "args",
    "asctime",
    "created",
    "exc_info",
    "exc_text",
    "filename",
    "funcName",
    "levelno",
    "lineno",
    "module",
    "msecs",
    "msg",
    "pathname",
    "process",
    "processName",
    "relativeCreated",
    "stack_info",
    "thread",
    "threadName",
    "taskName",
]


def format_for(environ: Mapping[str, str]) -> str:
    """``CONNECTOR_LOG_FORMAT``, else json in production and text elsewhere (as Settings reads it)."""
    chosen = (environ.get("CONNECTOR_LOG_FORMAT") or "").strip().lower()
    if chosen in {"json", "text"}:
        return chosen
    env = (environ.get("CONNECTOR_ENV") or "").strip().lower()
    return "json" if env == "production" else "text"


class _ConnectorHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs, recognizable so a second call replaces it."""


def configure(
    log_format: str,
    *,
    process: str,
    stream: TextIO | None = None,
    level: int = logging.INFO,
    force: bool = False,
) -> logging.Handler | None:
    """Send the root logger's records to ``stream`` (stdout) as JSON lines or text.

    ``log_format`` is ``json`` or ``text``; ``process`` names the process type in each JSON
    line (web, worker, cli). Another handler already on the root logger (a test harness's,
    an embedding server's) is left in charge unless ``force``. Returns the handler installed.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _ConnectorHandler)]
    if not force and len(ours) != len(root.handlers):
        return None
    for old in ours:
        root.removeHandler(old)
    handler = _ConnectorHandler(stream or sys.stdout)
    handler.addFilter(redact.RedactSecrets())
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonLines(process) if log_format == "json" else TextLines())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def gunicorn_logconfig_dict(log_format: str) -> dict[str, Any]:
    """A ``logconfig_dict`` for gunicorn's configuration file: gunicorn's error and access logs,
    and the app's, through the connector's handler (JSON lines or text on stdout, redacted).

    https://docs.gunicorn.org/en/stable/settings.html#logconfig-dict
    """
    formatter: dict[str, Any] = (
        {"()": "connector.logs.JsonLines", "process": "web"}
        if log_format == "json"
        else {"()": "connector.logs.TextLines"}
    )
    handler = {
        "class": "connector.logs._ConnectorHandler",
        "stream": "ext://sys.stdout",
        "formatter": "connector",
        "filters": ["redact", "context"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": "connector.redact.RedactSecrets"},
            "context": {"()": "connector.logs.ContextFilter"},
        },
        "formatters": {"connector": formatter},
        "handlers": {"stdout": handler},
        "root": {"level": "INFO", "handlers": ["stdout"]},
        # No level on gunicorn's loggers: gunicorn sets them from --log-level before this
        # dictionary is applied, and a level here would override the operator's choice.
        "loggers": {
            "gunicorn.error": {"handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"handlers": ["stdout"], "propagate": False},
        },
    }
