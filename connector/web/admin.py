"""The operator's entrance: every connection in plain words, no secrets (pages: dashboard)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from connector.errors import NotFoundError
from connector.store.dashboard import store_list
from connector.web import get_runtime
from connector.web.dashboard import render_connections

bp = Blueprint("admin", __name__)


def _authorized() -> bool:
    settings = get_runtime().settings
    if settings.admin_password is None:
        # Without a password the page is for a developer's own machine only.
        return not settings.is_production and request.remote_addr in {
            "127.0.0.1",
            "::1",
        }
    auth = request.authorization
    given = (auth.password or "") if auth is not None else ""
    return hmac.compare_digest(given.encode(), settings.admin_password.encode())


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
        stores = store_list(session)
    page = render_connections(stores)
    return Response(page, mimetype="text/html")
