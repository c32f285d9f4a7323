"""The one place where exceptions become HTTP answers."""

from __future__ import annotations

import logging
from html import escape

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from connector.errors import ConfigError, ConnectorError

log = logging.getLogger(__name__)

#: what a browser sees for a feature this deployment has not configured
NOT_SET_UP = (
    "Not available here",
    "This part of the connector is not set up on this server yet. "
    "Ask the person who runs your connector.",
)


def _wants_html() -> bool:
    if request.path.startswith(("/webhooks/", "/healthz", "/metrics")):
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def render(status: int, name: str, detail: str) -> Response:
    if _wants_html():
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(name)}</title></head>"
            f"<body><h1>{escape(name)}</h1><p>{escape(detail)}</p></body></html>"
        )
        return Response(page, status=status, mimetype="text/html")
    rv = jsonify(error=name, detail=detail)
    rv.status_code = status
    return rv


def _title(exc: ConnectorError) -> str:
    name = type(exc).__name__
    return name.removesuffix("Error") or name


def init_app(app: Flask) -> None:
    @app.errorhandler(ConnectorError)
    def handle_connector_error(exc: ConnectorError) -> Response:
        if exc.http_status >= 500:
            log.error("%s on %s: %s", type(exc).__name__, request.path, exc)
        if isinstance(exc, ConfigError) and _wants_html():
            # A person's browser: the names of the server's settings are the operator's
            # business (README, `connector` at start-up), not the store owner's.
            return render(exc.http_status, NOT_SET_UP[0], NOT_SET_UP[1])
        return render(exc.http_status, _title(exc), exc.detail)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        rv = render(exc.code or 500, exc.name, exc.description or exc.name)
        # e.g. Allow on a 405, which RFC 9110 requires; our body keeps its own content type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                rv.headers[name] = value
        return rv

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return render(
            500, "Internal Server Error", "unexpected error; see the server log"
        )
