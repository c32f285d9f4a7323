"""The operator's entrance: every connection in plain words, no secrets (pages: dashboard)."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import TooManyRequests

from connector.config import Settings
from connector.errors import NotFoundError
from connector.store.dashboard import store_list
from connector.web import get_runtime
from connector.web.dashboard import render_connections
from connector.web.login_throttle import LoginThrottle

bp = Blueprint("admin", __name__)


#: host names that mean "this machine"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: headers a proxy or tunnel (ngrok, cloudflared, a load balancer) adds: the request came from
#: elsewhere even though the socket's peer is this machine
FORWARDING_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "CF-Connecting-IP",
    "True-Client-IP",
)


def _hostname(authority: str) -> str | None:
    try:
        return urlsplit(f"//{authority}").hostname
    except ValueError:
        return None


def local_request(settings: Settings) -> bool:
    """True when the request comes from a developer's own machine and nothing else: outside
    production, with APP_URL on this machine, from 127.0.0.1 or ::1, to a local Host, and
    through no proxy or tunnel (a tunnel's requests all come from 127.0.0.1)."""
    if settings.is_production:
        return False
    if urlsplit(settings.app_url).hostname not in LOCAL_HOSTS:
        return False
    if request.remote_addr not in {"127.0.0.1", "::1"}:
        return False
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    return _hostname(request.host) in LOCAL_HOSTS


def _authorized() -> bool:
    settings = get_runtime().settings
    if settings.admin_password is None:
        # Without a password the page is for a developer's own machine only.
        return local_request(settings)
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
        stores = store_list(session)
    page = render_connections(stores)
    return Response(page, mimetype="text/html")
