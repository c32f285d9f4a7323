"""Shopify app install: the embedded entry, the authorization-code grant, the shop's page.

Two ways in, both ending with an expiring offline token stored encrypted and the
connector's webhook subscriptions in place:

- embedded (Shopify's recommendation): ``GET /shopify/app?id_token=...`` verifies the
  session token and exchanges it for an offline token (token-exchange grant);
- install link: ``GET /shopify/install?shop=...`` -> Shopify's consent page ->
  ``GET /shopify/callback`` (query HMAC, single-use state, shop, timestamp) -> code grant.

Tokens are refreshed by :func:`fresh_access_token` under a row lock, so two processes
never spend the same refresh token; a daily job re-creates missing subscriptions.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    jsonify,
    redirect,
    request,
    session,
)
from sqlalchemy import Text, func, select, type_coerce, update

from adapters.shopify import oauth
from adapters.shopify.admin_api import WEBHOOK_TOPICS, ShopifyAdmin, TokenRequestError
from adapters.shopify.session_token import SessionToken, verify_session_token
from connector.config import Settings
from connector.domains import normalize_shop_domain
from connector.errors import (
    ConnectorError,
    NotFoundError,
    PayloadError,
    PlatformError,
    SignatureError,
)
from connector.platform import PeriodicJob
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus
from connector.web import get_runtime
from connector.web.dashboard import render_store_overview

log = logging.getLogger(__name__)

PLATFORM = "shopify"
#: the OAuthState purpose of an install link
STATE_PURPOSE = "shopify_install"
#: where Shopify delivers the registered topics (the webhooks blueprint)
WEBHOOK_PATH = "/webhooks/shopify"
#: Connection.settings keys owned by the install flow
SETTINGS_APP = "shopify_app"
SETTINGS_WEBHOOKS = "shopify_webhooks"
SETTINGS_WEBHOOKS_AT = "shopify_webhooks_at"
#: the Flask session key remembering which shop this browser installed
SESSION_SHOP = "shopify_shop"
RECONCILE_INTERVAL = timedelta(days=1)

#: the install routes; registered by the Shopify adapter
blueprint = Blueprint("shopify_install", __name__, template_folder="templates")


def periodic_jobs() -> list[PeriodicJob]:
    """The worker's Shopify jobs: the daily webhook reconciliation (which also refreshes tokens)."""
    return [
        PeriodicJob(
            name="shopify-reconcile",
            interval_seconds=RECONCILE_INTERVAL.total_seconds(),
            run=_run_reconciliation,
        )
    ]


# -- routes -----------------------------------------------------------------------------


@blueprint.get("/shopify/install")
def install() -> Response:
    """Start the authorization-code grant: a single-use state, then Shopify's consent page."""
    runtime = get_runtime()
    settings = runtime.settings
    now = _now()
    shop = _shop_param(request.args.get("shop"))
    if "hmac" in request.args:
        # Shopify opening the install link signs it; an unsigned link from our own page is fine too.
        oauth.verify_query(_query_pairs(), _secrets(settings), now)
    with ShopifyAdmin.from_settings(settings) as admin:
        with runtime.sessions.begin() as s:
            state = queries.issue_state(s, STATE_PURPOSE, store=shop, now=now)
        url = oauth.authorize_url(
            admin.base(shop),
            client_id=admin.api_key,
            scopes=settings.shopify_scopes,
            redirect_uri=f"{settings.app_url}/shopify/callback",
            state=state,
        )
    return redirect(url, 302)  # type: ignore[return-value]


@blueprint.get("/shopify/callback")
def callback() -> Response:
    """Finish the grant: check HMAC, timestamp, state and shop; store the token; register webhooks."""
    runtime = get_runtime()
    settings = runtime.settings
    now = _now()
    oauth.verify_query(_query_pairs(), _secrets(settings), now)
    shop = _shop_param(request.args.get("shop"))
    code = request.args.get("code", "")
    if not code:
        raise PayloadError("Shopify's callback carries no authorization code")
    with runtime.sessions.begin() as s:
        # Spent here, before the exchange: a replayed callback fails even if the exchange did not.
        queries.consume_state(
            s, request.args.get("state", ""), STATE_PURPOSE, store=shop, now=now
        )
    with ShopifyAdmin.from_settings(settings) as admin:
        grant = admin.exchange_code(shop, code, now)
        conn_id = store_grant(runtime, shop, grant, now=now)
        register_webhooks(runtime, admin, conn_id, grant.access_token)
    session[SESSION_SHOP] = shop
    return _render_shop(runtime, conn_id, embedded=False, now=now)


@blueprint.get("/shopify/app")
def app_home() -> Response:
    """The app's page in the Shopify admin (embedded) or opened directly from Shopify."""
    runtime = get_runtime()
    settings = runtime.settings
    now = _now()
    id_token = request.args.get("id_token")
    if id_token:
        claims = _verify_session_token(settings, id_token, now)
        conn_id = ensure_installed(runtime, claims.shop, id_token, now=now)
        return _render_shop(runtime, conn_id, embedded=True, now=now)
    raw_shop = request.args.get("shop")
    if raw_shop is None:
        raise PayloadError("open the app from your Shopify admin (no shop given)")
    shop = _shop_param(raw_shop)
    trusted = session.get(SESSION_SHOP) == shop
    if not trusted and "hmac" in request.args:
        oauth.verify_query(_query_pairs(), _secrets(settings), now)
        trusted = True
    conn = _installed_connection(runtime, shop)
    if trusted and conn is not None:
        return _render_shop(runtime, conn.id, embedded=False, now=now)
    # Unknown or unproven: Shopify's consent page proves who the merchant is.
    return redirect(f"/shopify/install?{urlencode({'shop': shop})}", 302)  # type: ignore[return-value]


@blueprint.get("/shopify/status")
def status() -> Response:
    """The shop's connection as JSON, for the embedded page's requests (``Authorization: Bearer``)."""
    runtime = get_runtime()
    now = _now()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureError("send the session token as Authorization: Bearer")
    claims = _verify_session_token(runtime.settings, token.strip(), now)
    conn = _installed_connection(runtime, claims.shop)
    if conn is None:
        raise NotFoundError(f"{claims.shop} has not installed the app")
    view = _shop_view(runtime, conn.id)
    rv = jsonify(
        shop=view.shop,
        status=view.status,
        pixel_id=view.pixel,
        webhooks=view.webhook_count,
        events=dict(view.counts),
    )
    _frame_policy(rv, claims.shop)
    return rv


# -- install steps (used by the routes and the worker) ----------------------------------


def store_grant(
    runtime: Runtime, shop: str, grant: oauth.TokenGrant, *, now: datetime
) -> str:
    """Create or update the shop's connection with a fresh offline token; returns its id."""
    with runtime.sessions.begin() as s:
        conn = queries.upsert_connection(
            s,
            PLATFORM,
            shop,
            platform_token=grant.access_token,
            platform_token_expires_at=grant.expires_at,
            platform_refresh_token=grant.refresh_token,
            platform_refresh_token_expires_at=grant.refresh_token_expires_at,
            scopes=grant.scopes,
        )
        if conn.status == ConnectionStatus.ACTIVE:
            conn.status_reason = None
        # The install this grant made: an uninstall Shopify triggered before it (delivered
        # late) no longer applies, and the webhook path compares the two times.
        conn.installed_at = now
        conn.settings = {**(conn.settings or {}), SETTINGS_APP: True}
        # A reinstall: what the uninstall held can go again (if Meta is connected).
        queries.release_held(s, conn)
        if not oauth.granted_all(grant.scopes, runtime.settings.shopify_scopes):
            log.warning("shop %s granted fewer scopes than requested", shop)
        return conn.id


def register_webhooks(
    runtime: Runtime, admin: ShopifyAdmin, conn_id: str, token: str
) -> dict[str, str] | None:
    """Subscribe the shop to the connector's topics; a failure is logged and left to reconciliation."""
    with runtime.sessions() as s:
        shop = queries.get_connection(s, conn_id).store
    uri = f"{runtime.settings.app_url}{WEBHOOK_PATH}"
    try:
        ids = admin.ensure_subscriptions(shop, token, uri)
    except PlatformError as exc:
        log.warning(
            "webhook registration for %s failed; the daily reconciliation retries: %s",
            shop,
            exc,
        )
        return None
    with runtime.sessions.begin() as s:
        conn = queries.get_connection(s, conn_id)
        conn.settings = {
            **(conn.settings or {}),
            SETTINGS_WEBHOOKS: ids,
            # when the subscriptions were last checked or repaired, for the dashboard
            SETTINGS_WEBHOOKS_AT: _now().isoformat(),
        }
    return ids


def ensure_installed(
    runtime: Runtime, shop: str, session_token: str, *, now: datetime
) -> str:
    """The embedded first load: exchange the (verified) session token unless a usable token is stored."""
    conn = _installed_connection(runtime, shop)
    if conn is not None and _has_usable_token(conn, now):
        return conn.id
    with ShopifyAdmin.from_settings(runtime.settings) as admin:
        grant = admin.exchange_session_token(shop, session_token, now)
        conn_id = store_grant(runtime, shop, grant, now=now)
        register_webhooks(runtime, admin, conn_id, grant.access_token)
    return conn_id


#: how long one process may take to refresh a token before another may try
REFRESH_LEASE = timedelta(seconds=30)
#: how long a caller waits for another process's refresh before giving up
REFRESH_WAIT_SECONDS = 15.0


def fresh_access_token(
    runtime: Runtime,
    connection_id: str,
    *,
    now: datetime,
    admin: ShopifyAdmin | None = None,
    margin: timedelta = oauth.REFRESH_MARGIN,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The connection's access token, refreshed first when it expires within ``margin``.

    Shopify's refresh token is single use (a refresh returns a new pair:
    https://shopify.dev/docs/apps/build/authentication-authorization/access-token-types/offline-access-tokens):
    one process at a time may spend it, by a refresh lease taken in a short transaction
    (``refresh_leases``). Shopify is then asked with no database lock held, so webhooks for
    the shop never wait on the call, and the new pair is written only if the stored refresh
    token is still the one spent (compare-and-set). A caller that finds another's lease
    waits for that refresh and returns its token.

    Raises:
        PlatformError: no token, a refresh token Shopify refuses (the connection then needs
            the merchant to open the app again), Shopify unreachable, or another process's
            refresh that did not end within ``REFRESH_WAIT_SECONDS``.
    """
    own_admin = admin is None
    admin = admin or ShopifyAdmin.from_settings(runtime.settings)
    owner = secrets.token_hex(16)
    try:
        waited = 0.0
        while True:
            with runtime.sessions.begin() as s:
                conn = s.get(Connection, connection_id, populate_existing=True)
                if conn is None:
                    raise NotFoundError(f"no connection {connection_id}")
                if not conn.platform_token:
                    raise PlatformError(
                        f"connection {connection_id} holds no Shopify token; open the app in the Shopify admin"
                    )
                if not oauth.needs_refresh(
                    conn.platform_token_expires_at, now, margin=margin
                ):
                    return conn.platform_token
                store = conn.store
                refresh_token = conn.platform_refresh_token
                rt_expiry = conn.platform_refresh_token_expires_at
                sealed = _sealed_refresh_token(s, connection_id)
                taken = queries.take_refresh_lease(
                    s, connection_id, owner, now=_now(), ttl=REFRESH_LEASE
                )
            if taken:
                break
            if waited >= REFRESH_WAIT_SECONDS:
                raise PlatformError(
                    f"connection {connection_id}: another process is refreshing the Shopify "
                    "token; try again"
                )
            sleep(0.2)
            waited += 0.2
        try:
            return _spend_refresh_token(
                runtime,
                admin,
                connection_id,
                store,
                refresh_token,
                rt_expiry,
                sealed,
                now,
            )
        finally:
            with runtime.sessions.begin() as s:
                queries.drop_refresh_lease(s, connection_id, owner)
    finally:
        if own_admin:
            admin.close()


def _sealed_refresh_token(s: Any, connection_id: str) -> str | None:
    """The stored refresh token's ciphertext, to compare-and-set on."""
    col = Connection.__table__.c.platform_refresh_token
    rv: str | None = s.scalar(
        select(type_coerce(col, Text)).where(Connection.id == connection_id)
    )
    return rv


def _spend_refresh_token(
    runtime: Runtime,
    admin: ShopifyAdmin,
    connection_id: str,
    store: str,
    refresh_token: str | None,
    rt_expiry: datetime | None,
    sealed: str | None,
    now: datetime,
) -> str:
    refused: PlatformError | None = None
    grant: oauth.TokenGrant | None = None
    if not refresh_token or (rt_expiry is not None and rt_expiry <= now):
        refused = PlatformError(
            f"the Shopify refresh token of connection {connection_id} has expired"
        )
    else:
        try:
            grant = admin.refresh(store, refresh_token, now)
        except TokenRequestError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            refused = exc
    col = Connection.__table__.c.platform_refresh_token
    same_pair = (
        type_coerce(col, Text).is_(None)
        if sealed is None
        else type_coerce(col, Text) == sealed
    )
    with runtime.sessions.begin() as s:
        if grant is not None:
            values: dict[str, Any] = {
                "platform_token": grant.access_token,
                "platform_token_expires_at": grant.expires_at,
                "platform_refresh_token": grant.refresh_token,
                "platform_refresh_token_expires_at": grant.refresh_token_expires_at,
            }
            if grant.scopes:
                values["scopes"] = grant.scopes
        else:
            # Refused for good: forget the dead pair so the next app load exchanges afresh.
            values = {
                "platform_token": None,
                "platform_token_expires_at": None,
                "platform_refresh_token": None,
                "platform_refresh_token_expires_at": None,
                "status_reason": "Shopify no longer accepts the connector's token: open the app in the Shopify admin",
            }
        written = s.execute(
            update(Connection)
            .where(Connection.id == connection_id, same_pair)
            .values(**values)
        ).rowcount  # type: ignore[attr-defined]
    if grant is not None:
        if not written:
            # A reinstall stored a new pair meanwhile: it is the newer one, keep it.
            log.warning(
                "connection %s: the Shopify tokens changed during a refresh; kept the newer",
                connection_id,
            )
        return grant.access_token
    if refused is None:  # every path above either returned or set the reason
        raise PlatformError(f"connection {connection_id}: token refresh failed")
    raise refused


@dataclass(frozen=True, kw_only=True)
class ReconcileReport:
    """What a reconciliation pass did, per connection id."""

    checked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def reconcile(runtime: Runtime, *, now: datetime) -> ReconcileReport:
    """For every active app-installed shop: refresh a token near expiry, re-create missing subscriptions."""
    report = ReconcileReport()
    with runtime.sessions() as s:
        conns = list(
            s.scalars(
                select(Connection).where(
                    Connection.platform == PLATFORM,
                    Connection.status != ConnectionStatus.UNINSTALLED,
                )
            )
        )
        targets = [
            c.id
            for c in conns
            if (c.settings or {}).get(SETTINGS_APP) and c.platform_token
        ]
    if not targets:
        # Nothing installed through the app (and perhaps no app configured): nothing to do.
        return report
    with ShopifyAdmin.from_settings(runtime.settings) as admin:
        for conn_id in targets:
            try:
                # A refresh keeps the 90-day refresh-token chain alive even for a quiet shop.
                token = fresh_access_token(runtime, conn_id, now=now, admin=admin)
                if register_webhooks(runtime, admin, conn_id, token) is None:
                    report.failed[conn_id] = "webhook registration failed"
                    continue
            except ConnectorError as exc:
                log.warning("reconciliation of connection %s failed: %s", conn_id, exc)
                report.failed[conn_id] = str(exc)
                continue
            report.checked.append(conn_id)
    return report


def _run_reconciliation(runtime: Any) -> None:
    report = reconcile(runtime, now=_now())
    log.info(
        "shopify reconciliation: %d connections checked, %d failed",
        len(report.checked),
        len(report.failed),
    )


# -- helpers ----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _secrets(settings: Settings) -> list[str]:
    rv = [
        s
        for s in (settings.shopify_api_secret, settings.shopify_api_secret_previous)
        if s
    ]
    if not rv:
        ShopifyAdmin.from_settings(
            settings
        )  # raises the ConfigError naming what is missing
    return rv


def _query_pairs() -> list[tuple[str, str]]:
    return list(request.args.items(multi=True))


def _shop_param(raw: str | None) -> str:
    try:
        return normalize_shop_domain(raw or "")
    except ValueError as exc:
        raise PayloadError(
            "shop must be the store's NAME.myshopify.com address"
        ) from exc


def _verify_session_token(
    settings: Settings, token: str, now: datetime
) -> SessionToken:
    secrets = _secrets(settings)
    api_key = settings.shopify_api_key or ""
    return verify_session_token(token, api_key=api_key, secrets=secrets, now=now)


def _installed_connection(runtime: Runtime, shop: str) -> Connection | None:
    with runtime.sessions() as s:
        conn = queries.find_connection(s, PLATFORM, shop)
    if conn is None or conn.status == ConnectionStatus.UNINSTALLED:
        return None
    return conn


def _has_usable_token(conn: Connection, now: datetime) -> bool:
    if not conn.platform_token:
        return False
    if conn.platform_token_expires_at is None:
        # A non-expiring token: cycle it to an expiring one (Shopify's migration path).
        return False
    if conn.platform_refresh_token_expires_at is not None:
        return conn.platform_refresh_token_expires_at > now
    return True


@dataclass(frozen=True, kw_only=True)
class _ShopView:
    id: str
    shop: str
    status: str
    status_reason: str | None
    pixel: str | None
    webhook_count: int
    counts: list[tuple[str, int]]


def _shop_view(runtime: Runtime, conn_id: str) -> _ShopView:
    with runtime.sessions() as s:
        conn = queries.get_connection(s, conn_id)
        by_status = {
            status: int(n)
            for status, n in s.execute(
                select(Event.status, func.count())
                .where(Event.connection_id == conn_id)
                .group_by(Event.status)
            )
        }
    order = (EventStatus.PENDING, EventStatus.SENT, EventStatus.HELD, EventStatus.DEAD)
    webhooks = (conn.settings or {}).get(SETTINGS_WEBHOOKS) or {}
    return _ShopView(
        id=conn.id,
        shop=conn.store,
        status=conn.status,
        status_reason=conn.status_reason,
        pixel=conn.pixel_id,
        webhook_count=sum(1 for t in WEBHOOK_TOPICS if t in webhooks),
        counts=[(str(s), by_status.get(s, 0)) for s in order],
    )


def _render_shop(
    runtime: Runtime, conn_id: str, *, embedded: bool, now: datetime
) -> Response:
    # The shop is proven (session token, signed query or its own session): its dashboard.
    # (Its Content-Security-Policy lets only this shop's admin frame it.)
    return render_store_overview(conn_id, mode="embedded" if embedded else "standalone")


def _frame_policy(rv: Response, shop: str) -> None:
    # Only this shop's admin (and admin.shopify.com) may frame the page: no clickjacking elsewhere.
    rv.headers["Content-Security-Policy"] = (
        f"frame-ancestors https://{shop} https://admin.shopify.com;"
    )
    rv.headers["Cache-Control"] = "no-store"
