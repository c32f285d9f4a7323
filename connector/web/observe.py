"""Per-request observability: the request id (bound for logs, echoed back) and webhook counts."""

from __future__ import annotations

import re
import uuid
from contextvars import Token
from typing import Any

from flask import Flask, Response, g, request

from connector import logs, metrics, registry
from connector.platform import WebhookRequest

#: Heroku's router passes a client's X-Request-Id on when it is 20-200 characters of these,
#: else it sets a UUID (https://devcenter.heroku.com/articles/http-request-id); anything else
#: is replaced rather than written to a log line
_REQUEST_ID = re.compile(r"[A-Za-z0-9+/=_.:-]{1,200}")
REQUEST_ID_HEADER = "X-Request-Id"

#: what a webhook answer's HTTP status says when the body does not say more
_STATUS_OUTCOMES = {
    400: "invalid",
    401: "unauthorized",
    404: "unknown_store",
    405: "method_not_allowed",
    413: "too_large",
}


def request_id() -> str:
    """The current request's id: the router's X-Request-Id when well-formed, else a new one."""
    rid: str = g.get("request_id", "")
    return rid


def _topic(platform: str) -> str:
    known: str | None = g.get("webhook_topic")
    if known is not None:  # the webhook view read it already
        return known
    try:
        adapter = registry.get_adapter(platform)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return adapter.envelope(WebhookRequest(headers=headers, body=b"")).topic
    except Exception:  # an unknown platform or a delivery without its headers
        return "unknown"


def _outcome(response: Response) -> str:
    if response.status_code == 200:
        known: str | None = g.get("webhook_status")
        if known is not None:  # the status the webhook view put in its answer
            return known
        body: Any = response.get_json(silent=True)
        status = body.get("status") if isinstance(body, dict) else None
        return str(status or "ok")
    if response.status_code >= 500:
        return "error"
    return _STATUS_OUTCOMES.get(response.status_code, f"http_{response.status_code}")


def init_app(app: Flask) -> None:
    """Bind a request id to every log line of a request and count webhook answers."""

    @app.before_request
    def bind_request_id() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_id = rid
        view_args = request.view_args or {}
        g.log_token = logs.bind(
            request_id=rid, connection_id=view_args.get("connection_id")
        )

    @app.after_request
    def echo_and_count(response: Response) -> Response:
        rid = g.get("request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        if request.endpoint == "webhooks.receive":
            platform = (request.view_args or {}).get("platform", "")
            if platform in registry.adapters():
                topic = _topic(platform)
            else:  # the path is the sender's to choose: no label from it
                platform, topic = "unknown", "unknown"
            metrics.count_webhook(platform, topic, _outcome(response))
        return response

    @app.teardown_request
    def unbind(_exc: BaseException | None) -> None:
        token: Token[Any] | None = g.pop("log_token", None)
        if token is not None:
            try:
                logs.reset(token)
            except ValueError:  # bound in another context (a streamed response)
                logs.clear()
