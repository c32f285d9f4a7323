"""The dashboard: one store's health, events, match quality, settings and pixel setup.

Two entrances share these pages and templates:

- an operator (``ADMIN_PASSWORD``, HTTP Basic) sees every connection from ``/admin``;
- a store sees only itself through a signed, short-lived dashboard link
  (:func:`connector.links.sign_dashboard_link`): the Shopify app's embedded page mints one
  after verifying Shopify's session token, the WooCommerce connect flow after its return.
  The link's token travels as ``t`` in every link and form of the pages, because the
  Shopify admin's iframe cannot rely on cookies.

Every form that changes something carries a CSRF token signed with ``SECRET_KEY`` and bound
to who is looking (the operator, or one store): a page on another site can neither read it
nor make one (OWASP's "HMAC based token" pattern, with itsdangerous, Flask's own signer).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer

from connector import meta_oauth, registry
from connector.errors import ConfigError, SignatureError
from connector.links import (
    DASHBOARD_LINK_TTL,
    dashboard_link_expiry,
    dashboard_link_key,
    sign_admin_link,
    sign_dashboard_link,
    verify_dashboard_link,
)
from connector.store import dashboard as q
from connector.store import quality as quality_store
from connector.store import queries
from connector.store.models import Connection, EventStatus
from connector.web import dashboard_views as views
from connector.web import get_runtime

log = logging.getLogger(__name__)

#: pages only: the stylesheet and the copy button's script are the app's /static files
bp = Blueprint("dashboard", __name__)

#: Shopify's scripts for an embedded app, loaded from Shopify's CDN as Shopify requires
#: (https://shopify.dev/docs/api/app-bridge-library, https://shopify.dev/docs/api/app-home)
APP_BRIDGE_URL: Final = "https://cdn.shopify.com/shopifycloud/app-bridge.js"
POLARIS_URL: Final = "https://cdn.shopify.com/shopifycloud/polaris.js"
CSRF_SALT: Final = "dashboard-csrf"
PAGES: Final = ("overview", "events", "quality", "settings", "pixel")
#: the browser session's record of the stores whose dashboard it opened: {id: expiry}
SESSION_KEY: Final = "dashboards"
#: the largest id an events row can have (a signed 64-bit integer)
MAX_EVENT_PK: Final = 2**63 - 1
#: how spent standalone links are recorded (``oauth_states.purpose``)
SPENT_LINK_PURPOSE: Final = "dashboard_link"


@dataclass(frozen=True, kw_only=True)
class Viewer:
    """Who is looking: the operator (every store) or one store through its link."""

    operator: bool
    connection_id: str | None = None
    #: inside the Shopify admin's iframe
    embedded: bool = False
    #: the store's dashboard-link token, handed on in links and forms
    token: str | None = None

    @property
    def principal(self) -> str:
        return "operator" if self.operator else f"store:{self.connection_id}"

    def link_args(self) -> dict[str, str]:
        return {"t": self.token} if self.token else {}


def _now() -> datetime:
    return datetime.now(UTC)


def _operator() -> bool:
    from connector.web.admin import _authorized

    return _authorized()


def _session_store(connection_id: str, now: datetime) -> bool:
    """True when this browser's session opened ``connection_id``'s dashboard and is live."""
    opened = session.get(SESSION_KEY)
    if not isinstance(opened, dict):
        return False
    expires = opened.get(connection_id)
    return isinstance(expires, int) and expires > now.timestamp()


def _open_in_session(connection_id: str, token: str, now: datetime) -> None:
    """Spend a standalone link and let this browser's session hold the store's dashboard.

    A standalone link works once: whoever opens it first gets the dashboard for
    :data:`DASHBOARD_LINK_TTL` in that browser (a SameSite=Lax, HttpOnly session cookie), and
    the same link from anywhere else is refused, so a link copied from a screen, a history or
    a log opens nothing.

    Raises:
        SignatureError: the link was used before.
    """
    with get_runtime().sessions.begin() as db:
        fresh = queries.spend_once(
            db,
            dashboard_link_key(token),
            SPENT_LINK_PURPOSE,
            expires_at=dashboard_link_expiry(token),
        )
    if not fresh:
        raise SignatureError(
            "this link was used already (each link works once); open the dashboard from "
            "your store's connect page again"
        )
    opened = session.get(SESSION_KEY)
    opened = dict(opened) if isinstance(opened, dict) else {}
    # Forget what has expired, so the cookie stays small.
    opened = {
        k: v for k, v in opened.items() if isinstance(v, int) and v > now.timestamp()
    }
    opened[connection_id] = int((now + DASHBOARD_LINK_TTL).timestamp())
    session[SESSION_KEY] = opened


def _viewer(connection_id: str) -> Viewer:
    """The viewer of ``connection_id``'s pages, or 401 (with the operator's challenge)."""
    now = _now()
    if _session_store(connection_id, now):
        return Viewer(operator=False, connection_id=connection_id)
    token = request.values.get("t", "")
    if token:
        mode = verify_dashboard_link(
            get_runtime().settings.secret_key, connection_id, token, now
        )
        if mode == "embedded":
            return Viewer(
                operator=False,
                connection_id=connection_id,
                embedded=True,
                token=token,
            )
        if mode == "standalone":
            _open_in_session(connection_id, token, now)
            return Viewer(operator=False, connection_id=connection_id)
    if _operator():
        return Viewer(operator=True)
    if token:
        raise SignatureError(
            "this link is not valid or has expired; open the dashboard from your store's admin again"
        )
    if get_runtime().settings.admin_password is None:
        abort(404)
    abort(
        Response(
            "authentication required",
            401,
            {"WWW-Authenticate": 'Basic realm="connector"'},
        )
    )


def csrf_token(viewer: Viewer) -> str:
    """A token for this viewer's forms (valid as long as a dashboard link)."""
    signer = URLSafeTimedSerializer(get_runtime().settings.secret_key, salt=CSRF_SALT)
    return signer.dumps(viewer.principal)


def _check_csrf(viewer: Viewer) -> None:
    signer = URLSafeTimedSerializer(get_runtime().settings.secret_key, salt=CSRF_SALT)
    given = request.form.get("csrf_token", "")
    try:
        principal = signer.loads(given, max_age=int(DASHBOARD_LINK_TTL.total_seconds()))
    except BadSignature:
        principal = None
    if not isinstance(principal, str) or not hmac.compare_digest(
        principal, viewer.principal
    ):
        log.info("dashboard form refused: missing or foreign CSRF token")
        abort(
            Response(
                _render_message(
                    viewer,
                    "This form has expired",
                    "Reload the page and try again.",
                ),
                400,
                mimetype="text/html",
            )
        )


def _connection(connection_id: str) -> Connection:
    with get_runtime().sessions() as s:
        conn = s.get(Connection, connection_id)
    if conn is None:
        abort(404)
    return conn


def _page_url(viewer: Viewer, conn_id: str, page: str, **args: Any) -> str:
    endpoint = "dashboard.overview" if page == "overview" else f"dashboard.{page}"
    values: dict[str, Any] = {**viewer.link_args(), **args}
    return url_for(endpoint, connection_id=conn_id, **values)


def _respond(
    viewer: Viewer, conn: Connection, html: str, status: int = 200
) -> Response:
    rv = Response(html, status=status, mimetype="text/html")
    rv.headers["Cache-Control"] = "no-store"
    rv.headers["Referrer-Policy"] = (
        "no-referrer"  # the link token must not leak onwards
    )
    rv.headers["X-Content-Type-Options"] = "nosniff"
    # Only this shop's admin may frame the shop's own pages (Shopify's rule for embedded
    # apps, https://shopify.dev/docs/apps/build/security/set-up-iframe-protection); nothing
    # frames the others, the operator's pages of a Shopify store included (their buttons act
    # with the operator's credentials).
    ancestors = (
        f"https://{conn.store} https://admin.shopify.com"
        if conn.platform == "shopify" and not viewer.operator
        else "'none'"
    )
    scripts = "'self' https://cdn.shopify.com" if viewer.embedded else "'self'"
    rv.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:; connect-src 'self' https://*.shopify.com; "
        f"frame-ancestors {ancestors}; base-uri 'none'; form-action 'self'"
    )
    return rv


def _base_context(viewer: Viewer, conn: Connection | None, page: str) -> dict[str, Any]:
    settings = get_runtime().settings
    nav = []
    if conn is not None:
        nav = [(p, views.PAGE_TITLES[p], _page_url(viewer, conn.id, p)) for p in PAGES]
    return {
        "viewer": viewer,
        "conn": conn,
        "store_name": views.store_name(conn) if conn else None,
        "page": page,
        "nav": nav,
        "csrf_token": csrf_token(viewer),
        "embedded": viewer.embedded,
        "api_key": settings.shopify_api_key or "",
        "app_bridge_url": APP_BRIDGE_URL,
        "polaris_url": POLARIS_URL,
        "connections_url": url_for("admin.index") if viewer.operator else None,
    }


def _render_message(viewer: Viewer, heading: str, message: str) -> str:
    return render_template(
        "dashboard/message.html",
        heading=heading,
        message=message,
        **_base_context(viewer, None, "message"),
    )


def meta_connect_url(viewer: Viewer, conn: Connection, now: datetime) -> str | None:
    """Where "Connect Meta" leads, or None when this deployment has no Meta app to sign in to."""
    try:
        meta_oauth.require_app(get_runtime().settings)
    except ConfigError:
        return None
    settings = get_runtime().settings
    token = sign_admin_link(settings.secret_key, conn.id, now)
    # Absolute: from the Shopify admin's iframe it opens at the top (target=_top).
    return f"{settings.app_url}/meta/connect?{urlencode({'connection': conn.id, 'token': token})}"


# -- pages -------------------------------------------------------------------------------


@bp.get("/admin/connections/<connection_id>")
def overview(connection_id: str) -> Response:
    """Overview: state in plain words with the one fixing action, chart, last delivery."""
    viewer = _viewer(connection_id)
    return render_overview(viewer, _connection(connection_id))


def render_overview(viewer: Viewer, conn: Connection) -> Response:
    """The overview page of ``conn`` for ``viewer`` (the Shopify app's home renders it too)."""
    now = _now()
    with get_runtime().sessions() as s:
        data = q.overview(s, conn.id, now)
        sweep = q.sweep_summary(s, conn.id)
        repairs = q.recent_repairs(s, conn.id)
    too_old = sum(
        n
        for status, kind, n in data.problems
        if status == EventStatus.DEAD and kind == "too_old"
    )
    meta_url = meta_connect_url(viewer, conn, now)
    state = views.connection_state(
        conn,
        meta_connect_url=meta_url,
        settings_url=_page_url(viewer, conn.id, "settings"),
        operator=viewer.operator,
    )
    html = render_template(
        "dashboard/overview.html",
        data=data,
        state=state,
        meta_url=meta_url,
        chart=views.delivery_chart(data.days),
        webhooks=views.webhook_health(conn),
        sweep=sweep,
        sweep_text=views.sweep_text(sweep),
        repairs=[(r, views.repair_text(r.topic, r.action)) for r in repairs],
        too_old_text=views.too_old_text(too_old),
        retention_text=views.retention_text(
            get_runtime().settings.retain_personal_data_days
        ),
        problems=[
            (status, kind, n, views.reason_text(kind))
            for status, kind, n in data.problems
        ],
        problems_total=sum(n for _, _, n in data.problems),
        problem_sample=q.PROBLEM_SAMPLE,
        events_url=_page_url(viewer, conn.id, "events"),
        replay_url=url_for("dashboard.replay", connection_id=conn.id),
        message=views.done_message(request.args),
        **_base_context(viewer, conn, "overview"),
    )
    return _respond(viewer, conn, html)


@bp.get("/admin/connections/<connection_id>/events")
def events(connection_id: str) -> Response:
    """Events: a searchable, paginated list, newest first."""
    viewer = _viewer(connection_id)
    conn = _connection(connection_id)
    args = request.args
    query = args.get("q", "")[:255]
    status = args.get("status", "")
    name = args.get("event", "")[:64]
    before = _int(args.get("before"))
    with get_runtime().sessions() as s:
        page = q.list_events(
            s, conn.id, query=query, status=status, event_name=name, before=before
        )
    filters = {
        k: v for k, v in (("q", query), ("status", status), ("event", name)) if v
    }
    html = render_template(
        "dashboard/events.html",
        rows=page.rows,
        query=query,
        status=status,
        event_name=name,
        statuses=[str(s) for s in EventStatus],
        next_url=(
            _page_url(viewer, conn.id, "events", before=page.next_before, **filters)
            if page.next_before
            else None
        ),
        first_url=_page_url(viewer, conn.id, "events", **filters) if before else None,
        detail_url=lambda pk: _event_url(viewer, conn.id, pk),
        status_text=views.STATUS_TEXT,
        reason_text=views.reason_text,
        reason_kind=q.reason_kind,
        message=views.done_message(args),
        **_base_context(viewer, conn, "events"),
    )
    return _respond(viewer, conn, html)


@bp.get("/admin/connections/<connection_id>/events/<int:event_pk>")
def event(connection_id: str, event_pk: int) -> Response:
    """One event: which keys were sent (never values), Meta's answer, attempts, replay."""
    if event_pk > MAX_EVENT_PK:
        abort(404)  # no row has it, and the database could not even compare it
    viewer = _viewer(connection_id)
    conn = _connection(connection_id)
    with get_runtime().sessions() as s:
        detail = q.event_detail(s, conn.id, event_pk)
    if detail is None:
        abort(404)
    html = render_template(
        "dashboard/event.html",
        d=detail,
        key_names=views.KEY_NAMES,
        status_text=views.STATUS_TEXT,
        reason=views.reason_text(q.reason_kind(detail.row.reason))
        if detail.row.reason
        else None,
        replay_url=url_for("dashboard.replay", connection_id=conn.id),
        **_base_context(viewer, conn, "events"),
    )
    return _respond(viewer, conn, html)


@bp.post("/admin/connections/<connection_id>/replay")
def replay(connection_id: str) -> Response:
    """Send dead or held events again: one (``event``), or all of a (``status``, ``kind``)."""
    viewer = _viewer(connection_id)
    _check_csrf(viewer)
    conn = _connection(connection_id)
    form = request.form
    event_pk = _int(form.get("event"))
    status = form.get("status") or None
    kind = form.get("kind") or None
    if event_pk is None and (status is None or kind is None):
        abort(400)
    with get_runtime().sessions.begin() as s:
        result = q.replay_events(
            s, conn.id, _now(), event_pk=event_pk, status=status, kind=kind
        )
    log.info(
        "dashboard replay for connection %s: %d back to pending, %d too old",
        conn.id,
        result.replayed,
        result.too_old,
    )
    target = "events" if event_pk is not None else "overview"
    return redirect(  # type: ignore[return-value]
        _page_url(
            viewer,
            conn.id,
            target,
            done="replayed",
            n=result.replayed,
            old=result.too_old,
            more=int(result.more),
        ),
        303,
    )


@bp.get("/admin/connections/<connection_id>/quality")
def quality(connection_id: str) -> Response:
    """Match quality: per event name our key coverage and estimate, Meta's own score and
    dedup feedback, the connection's dedup warnings and the top three things to improve.

    Reads the daily coverage aggregates of the last :data:`q.CHART_DAYS` UTC days and Meta's
    stored answers (one row per event name): bounded whatever the store's volume.
    """
    viewer = _viewer(connection_id)
    conn = _connection(connection_id)
    until = _now().astimezone(UTC).date()
    since = until - timedelta(days=q.CHART_DAYS - 1)
    with get_runtime().sessions() as s:
        totals = quality_store.coverage_by_event(s, conn.id, since=since, until=until)
        daily = quality_store.coverage_by_day(s, conn.id, since=since, until=until)
        improvements = quality_store.top_improvements(
            s, conn.id, since=since, until=until
        )
        check = quality_store.last_meta_check(s, conn.id)
        meta = q.meta_event_views(s, conn.id)
        warnings = quality_store.active_warnings(s, conn.id)
    same_pixel = check is not None and check.pixel_id == conn.pixel_id
    meta_check = views.meta_check_text(
        outcome=check.outcome if check else None,
        detail=check.detail if check else None,
        checked_at=check.checked_at if check else None,
        same_pixel=same_pixel,
    )
    html = render_template(
        "dashboard/quality.html",
        coverage=views.coverage_views(
            totals, daily, meta if same_pixel and meta_check.asked else []
        ),
        since=since,
        until=until,
        meta_check=meta_check,
        warnings=[
            (w["event_name"], views.plain_warning(w["message"])) for w in warnings
        ],
        improvements=[views.plain_improvement(t) for t in improvements],
        pixel_url=_page_url(viewer, conn.id, "pixel"),
        **_base_context(viewer, conn, "quality"),
    )
    return _respond(viewer, conn, html)


@bp.route("/admin/connections/<connection_id>/settings", methods=["GET", "POST"])
def settings(connection_id: str) -> Response:
    """Settings: purchase trigger, content ids, value, and test mode / go live."""
    viewer = _viewer(connection_id)
    conn = _connection(connection_id)
    problems: list[str] = []
    fields = views.settings_fields(conn.platform)
    if request.method == "POST":
        _check_csrf(viewer)
        action = request.form.get("action", "save")
        with get_runtime().sessions.begin() as s:
            row = queries.get_connection(s, conn.id)
            if action == "go_live":
                q.set_test_event_code(s, row, None)
                done = "live"
            elif action == "test_mode":
                code = (request.form.get("test_event_code") or "").strip()
                if not code:
                    problems.append(
                        "Enter the test event code from Meta's Events Manager."
                    )
                elif len(code) > 64:
                    problems.append("A test event code is at most 64 characters.")
                else:
                    q.set_test_event_code(s, row, code)
                done = "test"
            else:
                new = views.apply_settings_form(
                    fields, row.settings or {}, request.form
                )
                problems = [
                    views.plain_problem(p)
                    for p in registry.get_adapter(row.platform).settings_problems(new)
                ]
                if not problems:
                    row.settings = new
                done = "saved"
        if not problems:
            return redirect(  # type: ignore[return-value]
                _page_url(viewer, conn.id, "settings", done=done), 303
            )
        conn = _connection(connection_id)
    html = render_template(
        "dashboard/settings.html",
        fields=views.field_values(fields, conn.settings or {}),
        problems=problems,
        action_url=url_for("dashboard.settings", connection_id=conn.id),
        message=views.done_message(request.args),
        **_base_context(viewer, conn, "settings"),
    )
    return _respond(viewer, conn, html, 400 if problems else 200)


@bp.get("/admin/connections/<connection_id>/pixel")
def pixel(connection_id: str) -> Response:
    """Pixel setup: the browser code that makes Meta deduplicate pixel and server events."""
    viewer = _viewer(connection_id)
    conn = _connection(connection_id)
    snippet = views.pixel_snippet(conn)
    html = render_template(
        "dashboard/pixel.html",
        snippet=snippet,
        **_base_context(viewer, conn, "pixel"),
    )
    return _respond(viewer, conn, html)


def store_dashboard_url(connection_id: str, now: datetime, *, mode: str) -> str:
    """A signed link to one store's overview (``mode``: embedded | standalone)."""
    token = sign_dashboard_link(
        get_runtime().settings.secret_key, connection_id, now, mode=mode
    )
    return url_for("dashboard.overview", connection_id=connection_id, t=token)


def render_store_overview(connection_id: str, *, mode: str) -> Response:
    """The overview for a store its platform has just authenticated (Shopify's app home)."""
    now = _now()
    token = sign_dashboard_link(
        get_runtime().settings.secret_key, connection_id, now, mode=mode
    )
    viewer = Viewer(
        operator=False,
        connection_id=connection_id,
        embedded=mode == "embedded",
        token=token,
    )
    return render_overview(viewer, _connection(connection_id))


def render_connections(stores: list[q.StoreRow]) -> str:
    """The operator's list of every connection with its state in plain words."""
    viewer = Viewer(operator=True)
    rows = [
        {
            "conn": r.conn,
            "name": views.store_name(r.conn),
            "state": views.connection_state(
                r.conn, meta_connect_url=None, settings_url="", operator=True
            ),
            "counts": r.open_counts,
            "last_delivered_at": r.last_delivered_at,
            "url": url_for("dashboard.overview", connection_id=r.conn.id),
        }
        for r in stores
    ]
    return render_template(
        "dashboard/connections.html",
        rows=rows,
        **_base_context(viewer, None, "connections"),
    )


def _event_url(viewer: Viewer, conn_id: str, pk: int) -> str:
    values: dict[str, Any] = dict(viewer.link_args())
    return url_for("dashboard.event", connection_id=conn_id, event_pk=pk, **values)


def _int(raw: str | None) -> int | None:
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)
