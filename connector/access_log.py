"""Gunicorn's logger, with every secret taken out of access and error log lines.

Gunicorn's access log records the request line (query string included), the referrer and,
when a format asks for them, any header. Admin-link tokens, OAuth codes, states and HMACs
travel in query strings, and cookies and signatures in headers, so each value passes through
:mod:`connector.redact` before the line is formatted. Used by ``gunicorn.conf.py``.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from connector.redact import RedactSecrets, redact_headers, redact_query

_FILTER = RedactSecrets()


class RedactingLogger(Logger):  # type: ignore[misc]
    """A gunicorn ``logger_class`` whose lines hold no token, code, state, hmac or session."""

    def setup(self, cfg: Any) -> None:
        """Gunicorn's handlers, plus the redaction filter on the error log.

        The access log needs no filter: :meth:`atoms` redacts its values (and a filter would
        turn gunicorn's forgiving atoms mapping into a plain dict).
        """
        super().setup(cfg)
        if _FILTER not in self.error_log.filters:
            self.error_log.addFilter(_FILTER)

    def atoms(
        self, resp: Any, req: Any, environ: Any, request_time: Any
    ) -> dict[str, Any]:
        """Gunicorn's access-log atoms, with secret query values and headers blanked."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if not isinstance(value, str):
                continue
            if key.startswith("{") and key[-2:] in {"}i", "}o"}:
                atoms[key] = redact_headers(key[1:-2], value)
            elif key.startswith("{") and key.endswith("}e"):
                # the WSGI environ holds the raw query and every header (HTTP_COOKIE, ...)
                name = key[1:-2]
                header = name.removeprefix("http_").replace("_", "-")
                atoms[key] = redact_headers(header, value)
            else:
                atoms[key] = redact_query(value)
        return atoms
