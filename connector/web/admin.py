"""The operator's page: connections and their outbox, no secrets."""

from __future__ import annotations

import hmac
from html import escape

from flask import Blueprint, Response, current_app, request
from sqlalchemy import func, select
from werkzeug.exceptions import TooManyRequests

from connector.errors import NotFoundError
from connector.store.models import Connection, Event
from connector.web import get_runtime
from connector.web.login_throttle import LoginThrottle

bp = Blueprint("admin", __name__)


def _authorized() -> bool:
    settings = get_runtime().settings
    if settings.admin_password is None:
        # Without a password the page is for a developer's own machine only.
        return not settings.is_production and request.remote_addr in {
            "127.0.0.1",
            "::1",
        }
    return _password_accepted(settings.admin_password)


def _password_accepted(password: str) -> bool:
    """The Basic-auth password checked against ``password``, throttled per address and overall.

    Raises:
        TooManyRequests: too many recent failures (429 with Retry-After).
    """
    throttle: LoginThrottle = current_app.extensions["login_throttle"]
    client = request.remote_addr or "-"
    wait = throttle.retry_after(client)
    if wait is not None:
        raise TooManyRequests(
            "too many failed logins; try again later", retry_after=wait
        )
    auth = request.authorization
    if auth is None:
        return False  # the browser's first request, before it asks for a password
    if hmac.compare_digest((auth.password or "").encode(), password.encode()):
        throttle.succeeded(client)
        return True
    throttle.failed(client)
    return False


@bp.get("/admin")
def index() -> Response:
    settings = get_runtime().settings
    if not _authorized():
        if settings.admin_password is None:
            raise NotFoundError(
                "the admin page needs ADMIN_PASSWORD outside local development"
            )
        return Response(
            "authentication required",
            401,
            {"WWW-Authenticate": 'Basic realm="connector"'},
        )
    with get_runtime().sessions() as session:
        conns = list(
            session.scalars(select(Connection).order_by(Connection.created_at))
        )
        counts: dict[tuple[str, str], int] = {
            (cid, status): int(n)
            for cid, status, n in session.execute(
                select(Event.connection_id, Event.status, func.count()).group_by(
                    Event.connection_id, Event.status
                )
            )
        }
    rows = []
    for c in conns:
        cells = [
            c.id,
            c.platform,
            c.store,
            c.status + (f" ({c.status_reason})" if c.status_reason else ""),
            c.pixel_id or "not connected",
            *(
                str(counts.get((c.id, s), 0))
                for s in ("pending", "held", "sent", "dead")
            ),
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "id",
            "platform",
            "store",
            "status",
            "pixel",
            "pending",
            "held",
            "sent",
            "dead",
        )
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Connector</title></head><body>"
        f"<h1>Connections</h1><table border='1'><tr>{head}</tr>{''.join(rows)}</table>"
        "</body></html>"
    )
    return Response(page, mimetype="text/html")
