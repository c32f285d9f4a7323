"""Connect a Meta account: the login dialog, a long-lived token, the pixel, and the token's health.

The flow (Facebook Login, "manually build a login flow"):

1. ``/meta/connect`` sends the store owner to ``{dialog}/{version}/dialog/oauth`` with a
   single-use state bound to the connection.
2. ``/meta/callback`` gets ``code`` + ``state``; the code becomes a short-lived user token
   (``oauth/access_token``), that becomes a long-lived one (``grant_type=fb_exchange_token``),
   ``debug_token`` says when it expires and what was granted, and the businesses and ad
   accounts the person can reach list the pixels (datasets) to choose from.
3. The chosen pixel and the encrypted token are stored; held events go out again.

A daily job asks ``debug_token`` about every stored token and flags the ones Meta no longer
accepts or that expire within a week.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import requests
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from connector.errors import ConfigError, GraphError
from connector.platform import PeriodicJob
from connector.store import queries
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    OAuthState,
)

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

# Secrets in the query strings urllib3 logs are redacted by connector.redact.

#: what the Conversions API needs from the person, and nothing more
SCOPES: tuple[str, ...] = ("ads_management", "business_management")
#: without this one no event can be sent with the token
REQUIRED_SCOPE = "ads_management"
CONNECT_PURPOSE = "meta_connect"
PICK_PURPOSE = "meta_pick"
#: a token that expires sooner than this is flagged so the owner reconnects in time
EXPIRY_WARNING = timedelta(days=7)
#: Meta rejects a whole request when one event is older than this
EVENT_MAX_AGE = timedelta(days=7)
CHECK_INTERVAL_SECONDS = 24 * 3600
#: the daily check skips tokens checked more recently than this (several workers run it)
RECHECK_AFTER = timedelta(hours=20)
#: a bound on paging through one edge, so a misbehaving answer cannot loop forever
MAX_PAGES = 50
PAGE_LIMIT = 100

#: status_reason prefixes this module writes, so it clears only its own notes
REASON_EXPIRING = "meta token expires"
REASON_INVALID = "meta token invalid"
REASON_DISCONNECTED = "meta disconnected"
TOO_OLD = "too_old"


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """HMAC-SHA256 of the token keyed by the app secret, hex: Graph's proof the caller is the app."""
    return hmac.new(
        app_secret.encode(), access_token.encode(), hashlib.sha256
    ).hexdigest()


def require_app(settings: Settings) -> tuple[str, str]:
    """The Meta app's id and secret, or a ConfigError naming what is missing."""
    app_id, secret = settings.meta_app_id, settings.meta_app_secret
    if not app_id or not secret:
        missing = [
            name
            for name, value in (("META_APP_ID", app_id), ("META_APP_SECRET", secret))
            if not value
        ]
        raise ConfigError(
            [f"{name} is required to connect a Meta account" for name in missing]
        )
    return app_id, secret


def redirect_uri(settings: Settings) -> str:
    """Where Meta sends the browser back; it must match the app's Valid OAuth Redirect URIs."""
    return f"{settings.app_url.rstrip('/')}/meta/callback"


def dialog_url(settings: Settings, state: str) -> str:
    """Facebook's login dialog for this app, asking for exactly :data:`SCOPES`."""
    app_id, _ = require_app(settings)
    query = urlencode(
        {
            "client_id": app_id,
            "redirect_uri": redirect_uri(settings),
            "state": state,
            "response_type": "code",
            "scope": ",".join(SCOPES),
        }
    )
    base = settings.meta_dialog_url.rstrip("/")
    return f"{base}/{settings.meta_api_version}/dialog/oauth?{query}"


# -- what Graph answers ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Token:
    """A user access token and when it stops working (None: Meta gave no expiry)."""

    access_token: str = field(repr=False)
    expires_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class TokenInfo:
    """What ``debug_token`` says about a token."""

    is_valid: bool
    #: the earlier of ``expires_at`` and ``data_access_expires_at``; None when neither is set
    expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()
    error_code: int | None = None
    error_subcode: int | None = None
    error_message: str | None = None

    def missing_scopes(self) -> tuple[str, ...]:
        return tuple(s for s in SCOPES if s not in self.scopes)


@dataclass(frozen=True, kw_only=True)
class Pixel:
    """A pixel (dataset) the person can send events to, and where it was found."""

    id: str
    name: str
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class Grant:
    """The outcome of a completed login dialog: a long-lived token, its facts, its pixels."""

    token: Token
    info: TokenInfo
    pixels: tuple[Pixel, ...]


def _timestamp(value: Any) -> datetime | None:
    # Meta writes 0 for "never expires"; anything that is not a positive number means unknown.
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


def parse_token_answer(body: Mapping[str, Any], now: datetime) -> Token:
    """Read ``{"access_token", "token_type", "expires_in"}`` from ``oauth/access_token``."""
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise GraphError("Meta's token answer carries no access_token")
    expires_at = None
    try:
        expires_in = int(body.get("expires_in") or 0)
    except (TypeError, ValueError):
        expires_in = 0
    if expires_in > 0:
        expires_at = now + timedelta(seconds=expires_in)
    return Token(access_token=token, expires_at=expires_at)


def parse_debug_token(body: Mapping[str, Any]) -> TokenInfo:
    """Read ``debug_token``'s ``data`` object."""
    data = body.get("data")
    if not isinstance(data, Mapping):
        raise GraphError("Meta's debug_token answer carries no data object")
    ends = [
        t
        for t in (
            _timestamp(data.get("expires_at")),
            _timestamp(data.get("data_access_expires_at")),
        )
        if t is not None
    ]
    raw_error = data.get("error")
    error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
    scopes = data.get("scopes") or ()
    return TokenInfo(
        is_valid=data.get("is_valid") is True,
        expires_at=min(ends) if ends else None,
        scopes=tuple(str(s) for s in scopes if isinstance(s, str)),
        error_code=_int_or_none(error.get("code")),
        error_subcode=_int_or_none(error.get("subcode")),
        error_message=str(error["message"]) if error.get("message") else None,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def graph_error(response: requests.Response) -> GraphError:
    """Meta's ``{"error": {...}}`` answer as a GraphError; an answer that is not JSON is transient."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return GraphError(
            f"Meta answered HTTP {status} without a JSON body",
            is_transient=True,
            http_status=status,
        )
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return GraphError(
            f"Meta answered HTTP {status} without an error object",
            is_transient=status >= 500,
            http_status=status,
        )
    return GraphError(
        str(err.get("message") or f"Meta answered HTTP {status}"),
        code=_int_or_none(err.get("code")),
        subcode=_int_or_none(err.get("error_subcode")),
        type=str(err["type"]) if err.get("type") else None,
        is_transient=err.get("is_transient") is True or status >= 500,
        fbtrace_id=str(err["fbtrace_id"]) if err.get("fbtrace_id") else None,
        http_status=status,
    )


def _is_permission_error(exc: GraphError) -> bool:
    # 10 and 200-299: the token may not read this object; 100/33: the object is out of reach.
    # Any other 100 (a bad appsecret_proof, say) is our fault and must not read as "no pixels".
    if exc.code is None:
        return False
    return (
        exc.code == 10 or 200 <= exc.code < 300 or (exc.code, exc.subcode) == (100, 33)
    )


class MetaClient:
    """The Graph calls of the connect flow and the token check, with timeouts and appsecret_proof."""

    def __init__(
        self, settings: Settings, http: requests.Session | None = None
    ) -> None:
        self.settings = settings
        self.http = http or requests.Session()

    # -- tokens --

    def exchange_code(self, code: str, now: datetime) -> Token:
        """Trade the dialog's code for a short-lived user token."""
        app_id, secret = require_app(self.settings)
        body = self._token_request(
            {
                "client_id": app_id,
                "client_secret": secret,
                "redirect_uri": redirect_uri(self.settings),
                "code": code,
            }
        )
        return parse_token_answer(body, now)

    def exchange_for_long_lived(self, token: Token, now: datetime) -> Token:
        """Trade a short-lived user token for a long-lived one (about 60 days)."""
        app_id, secret = require_app(self.settings)
        body = self._token_request(
            {
                "grant_type": "fb_exchange_token",
                "client_id": app_id,
                "client_secret": secret,
                "fb_exchange_token": token.access_token,
            }
        )
        return parse_token_answer(body, now)

    def debug_token(self, token: str) -> TokenInfo:
        """Ask Meta whether ``token`` is valid, until when, and with which permissions."""
        app_id, secret = require_app(self.settings)
        # The app token "{id}|{secret}" may inspect any token issued to the app.
        body = self._get("debug_token", f"{app_id}|{secret}", {"input_token": token})
        return parse_debug_token(body)

    # -- pixels --

    def list_pixels(self, token: str) -> list[Pixel]:
        """Every pixel the person reaches through their businesses and ad accounts, each once."""
        found: dict[str, Pixel] = {}
        sources: list[tuple[str, str]] = []
        for kind, edge in (
            ("business", "me/businesses"),
            ("ad account", "me/adaccounts"),
        ):
            try:
                for node in self._edge(edge, token, "id,name"):
                    label = f"{kind} {node.get('name') or node['id']}"
                    pixel_edge = "owned_pixels" if kind == "business" else "adspixels"
                    sources.append((f"{node['id']}/{pixel_edge}", label))
            except GraphError as exc:
                if not _is_permission_error(exc):
                    raise
                log.info("meta: %s not readable (code %s)", edge, exc.code)
        for edge, label in sources:
            try:
                for node in self._edge(edge, token, "id,name"):
                    pid = str(node["id"])
                    found.setdefault(
                        pid,
                        Pixel(id=pid, name=str(node.get("name") or pid), source=label),
                    )
            except GraphError as exc:
                if not _is_permission_error(exc):
                    raise
                log.info("meta: %s not readable (code %s)", edge, exc.code)
        return list(found.values())

    def authorize(self, code: str, now: datetime) -> Grant:
        """The whole callback's Graph work: code -> long-lived token -> facts -> pixels."""
        short = self.exchange_code(code, now)
        long = self.exchange_for_long_lived(short, now)
        info = self.debug_token(long.access_token)
        if not info.is_valid:
            raise GraphError(
                info.error_message or "Meta says the new token is not valid",
                code=info.error_code,
                subcode=info.error_subcode,
            )
        expires_at = info.expires_at or long.expires_at
        token = Token(access_token=long.access_token, expires_at=expires_at)
        pixels = (
            self.list_pixels(token.access_token)
            if REQUIRED_SCOPE in info.scopes
            else []
        )
        return Grant(token=token, info=info, pixels=tuple(pixels))

    # -- HTTP --

    def _url(self, path: str) -> str:
        return f"{self.settings.graph_base}/{path.lstrip('/')}"

    def _token_request(self, params: Mapping[str, str]) -> dict[str, Any]:
        # Facebook Login's manual flow documents both exchanges as GET oauth/access_token
        # with query parameters; the URL goes to Graph over TLS and is never logged here.
        return self._send("GET", self._url("oauth/access_token"), params=dict(params))

    def _get(
        self, path: str, token: str, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        # Graph reads take the token as the documented access_token parameter.
        query = {**(params or {}), "access_token": token}
        secret = self.settings.meta_app_secret
        if secret:
            query["appsecret_proof"] = appsecret_proof(secret, token)
        return self._send("GET", self._url(path), params=query)

    def _edge(self, path: str, token: str, fields: str) -> Iterator[dict[str, Any]]:
        """Every node of an edge, following the ``after`` cursor (never a URL from the answer)."""
        params = {"fields": fields, "limit": str(PAGE_LIMIT)}
        for _ in range(MAX_PAGES):
            body = self._get(path, token, params)
            for node in body.get("data") or ():
                if isinstance(node, dict) and node.get("id"):
                    yield node
            paging = body.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after:
                return
            params = {**params, "after": str(after)}

    def _send(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(
                method, url, timeout=self.settings.http_timeout, **kwargs
            )
        except requests.RequestException as exc:
            # from None: the cause's text repeats the request URL, which may carry a token.
            raise GraphError(
                f"could not reach Meta ({type(exc).__name__})", is_transient=True
            ) from None
        if response.status_code >= 400:
            raise graph_error(response)
        try:
            body = response.json()
        except ValueError:
            raise GraphError(
                f"Meta answered HTTP {response.status_code} without a JSON body",
                is_transient=True,
                http_status=response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise GraphError("Meta answered with JSON that is not an object")
        if isinstance(body.get("error"), Mapping):
            raise graph_error(response)
        return body


# -- storing the outcome -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Connected:
    """What storing a new token did to the connection's outbox."""

    released: int
    too_old: int


def dead_letter_too_old(session: Session, connection_id: str, now: datetime) -> int:
    """Held events past Meta's 7-day window can never be accepted: dead-letter them, visibly."""
    result = session.execute(
        update(Event)
        .where(
            Event.connection_id == connection_id,
            Event.status == EventStatus.HELD,
            Event.event_time < now - EVENT_MAX_AGE,
        )
        .values(
            status=EventStatus.DEAD,
            lease_owner=None,
            lease_expires_at=None,
            last_error=(
                f"{TOO_OLD}: held while the Meta account was not connected; its event_time is "
                "more than 7 days old and Meta no longer accepts it"
            ),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def save_connection(
    session: Session,
    conn: Connection,
    token: Token,
    info: TokenInfo,
    pixel_id: str,
    now: datetime,
) -> Connected:
    """Store the new token (encrypted by its column) and pixel, then release the held events."""
    conn.meta_token = token.access_token
    conn.meta_token_expires_at = token.expires_at
    conn.meta_scopes = ",".join(info.scopes)
    conn.meta_checked_at = now
    conn.pixel_id = pixel_id
    if conn.status == ConnectionStatus.ACTIVE:
        conn.status_reason = None
    too_old = dead_letter_too_old(session, conn.id, now)
    released = queries.reactivate(session, conn)
    session.flush()
    log.info(
        "meta connected: connection %s pixel %s (%d held events released, %d too old)",
        conn.id,
        pixel_id,
        released,
        too_old,
    )
    return Connected(released=released, too_old=too_old)


def disconnect(session: Session, conn: Connection, now: datetime) -> int:
    """Forget the Meta token and stop sending; the outbox is kept (pending rows are held)."""
    conn.meta_token = None
    conn.meta_token_expires_at = None
    conn.meta_scopes = None
    conn.meta_checked_at = now
    if conn.status != ConnectionStatus.UNINSTALLED:
        conn.status = ConnectionStatus.DISCONNECTED
        conn.status_reason = (
            f"{REASON_DISCONNECTED} by the store owner; connect Meta to send again"
        )
    result = session.execute(
        update(Event)
        # Rows a worker is sending now are left to it, as an uninstall leaves them: it records
        # Meta's answer, and holds the connection's rows from its next claim on.
        .where(Event.connection_id == conn.id, Event.status == EventStatus.PENDING)
        .values(
            status=EventStatus.HELD,
            last_error="held: the Meta account was disconnected",
        )
    )
    log.info("meta disconnected: connection %s", conn.id)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- the test event -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TestEventResult:
    """Meta's answer to the one test event, for the page that ends the flow."""

    ok: bool
    events_received: int | None = None
    fbtrace_id: str | None = None
    messages: tuple[str, ...] = ()
    error: str | None = None


def build_test_event(
    conn_id: str, store: str, user_agent: str | None, now: datetime
) -> dict[str, Any]:
    """A PageView from the store's front page, identified only by a hashed connector id."""
    url = store if store.startswith(("http://", "https://")) else f"https://{store}"
    user_data: dict[str, Any] = {
        "external_id": [
            hashlib.sha256(f"connector-test-{conn_id}".encode()).hexdigest()
        ],
        "client_user_agent": user_agent or "capi-connector test event",
    }
    return {
        "event_name": "PageView",
        "event_time": int(now.timestamp()),
        "event_id": f"connector-test-{conn_id}-{int(now.timestamp())}",
        "action_source": "website",
        "event_source_url": url,
        "user_data": user_data,
    }


def send_test_event(
    settings: Settings,
    *,
    pixel_id: str,
    access_token: str,
    test_event_code: str,
    event: Mapping[str, Any],
) -> TestEventResult:
    """Send one event with ``test_event_code`` and report Meta's answer (never raises GraphError)."""
    from connector.capi import GraphClient

    client = GraphClient(settings)
    try:
        result = client.send_events(
            pixel_id, access_token, [event], test_event_code=test_event_code
        )
    except GraphError as exc:
        return TestEventResult(ok=False, error=str(exc), fbtrace_id=exc.fbtrace_id)
    finally:
        client.close()
    return TestEventResult(
        ok=True,
        events_received=result.events_received,
        fbtrace_id=result.fbtrace_id,
        messages=result.messages,
    )


# -- token health -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Health:
    """What a token's facts mean for its connection."""

    verdict: Literal["ok", "expiring", "invalid"]
    reason: str | None = None


def assess(info: TokenInfo, now: datetime) -> Health:
    """Invalid or already expired -> reconnect now; expiring within 7 days -> warn; else ok."""
    if not info.is_valid or (info.expires_at is not None and info.expires_at <= now):
        detail = info.error_message or "the token has expired"
        code = f" (code {info.error_code})" if info.error_code else ""
        return Health(
            verdict="invalid",
            reason=f"{REASON_INVALID}{code}: {detail}; reconnect Meta to send the held events",
        )
    if info.expires_at is not None and info.expires_at - now <= EXPIRY_WARNING:
        days = max(0, (info.expires_at - now).days)
        return Health(
            verdict="expiring",
            reason=(
                f"{REASON_EXPIRING} on {info.expires_at:%Y-%m-%d} (in {days} days); "
                "reconnect Meta before then to keep sending"
            ),
        )
    return Health(verdict="ok")


def apply_health(conn: Connection, info: TokenInfo, now: datetime) -> Health:
    """Record a check on the connection: flag invalid or expiring tokens, clear stale warnings."""
    health = assess(info, now)
    conn.meta_checked_at = now
    if info.expires_at is not None:
        conn.meta_token_expires_at = info.expires_at
    if info.scopes:
        conn.meta_scopes = ",".join(info.scopes)
    if health.verdict == "invalid":
        if conn.status == ConnectionStatus.ACTIVE:
            conn.status = ConnectionStatus.NEEDS_RECONNECT
        if conn.status == ConnectionStatus.NEEDS_RECONNECT:
            conn.status_reason = health.reason
    elif conn.status == ConnectionStatus.ACTIVE:
        # An expiring token still works: keep sending, say so; a healthy one clears our note.
        if health.verdict == "expiring":
            conn.status_reason = health.reason
        elif (conn.status_reason or "").startswith(REASON_EXPIRING):
            conn.status_reason = None
    return health


@dataclass(frozen=True, kw_only=True)
class TokenCheck:
    """One connection's daily check."""

    connection_id: str
    verdict: Literal["ok", "expiring", "invalid", "error", "skipped"]
    reason: str | None = None


def check_tokens(
    runtime: Runtime, *, now: datetime, client: MetaClient | None = None
) -> list[TokenCheck]:
    """Ask ``debug_token`` about every stored token not checked in the last 20 hours."""
    client = client or MetaClient(runtime.settings)
    with runtime.sessions() as session:
        todo: list[tuple[str, str]] = [
            (c.id, c.meta_token or "")
            for c in session.scalars(
                select(Connection)
                .where(
                    Connection.meta_token.is_not(None),
                    Connection.status.in_(
                        [ConnectionStatus.ACTIVE, ConnectionStatus.NEEDS_RECONNECT]
                    ),
                    or_(
                        Connection.meta_checked_at.is_(None),
                        Connection.meta_checked_at < now - RECHECK_AFTER,
                    ),
                )
                .order_by(Connection.id)
            )
        ]
    rv: list[TokenCheck] = []
    for conn_id, token in todo:
        try:
            info = client.debug_token(token)
        except GraphError as exc:
            # Tomorrow's run tries again; one unreachable answer must not flag a working token.
            log.warning(
                "meta token check for connection %s failed: code %s", conn_id, exc.code
            )
            rv.append(
                TokenCheck(connection_id=conn_id, verdict="error", reason=str(exc))
            )
            continue
        with runtime.sessions.begin() as session:
            conn = session.get(Connection, conn_id, with_for_update=True)
            # A reconnect between the question and the answer replaced the token: keep its facts.
            if conn is None or conn.meta_token != token:
                rv.append(TokenCheck(connection_id=conn_id, verdict="skipped"))
                continue
            was_held = conn.status == ConnectionStatus.NEEDS_RECONNECT
            health = apply_health(conn, info, now)
            if was_held and health.verdict != "invalid":
                # Meta says the token works again (a refusal that was Meta's own passing
                # fault, or a permission given back): send again, with the held events.
                conn.status = ConnectionStatus.ACTIVE
                # An expiring token says so; a healthy one has nothing to say.
                conn.status_reason = health.reason
                released = queries.reactivate(session, conn)
                log.info(
                    "meta token of connection %s is valid again; %d held events released",
                    conn_id,
                    released,
                )
        if health.verdict != "ok":
            log.warning("meta token of connection %s: %s", conn_id, health.verdict)
        rv.append(
            TokenCheck(
                connection_id=conn_id, verdict=health.verdict, reason=health.reason
            )
        )
    return rv


def purge_states(session: Session, now: datetime) -> int:
    """Delete this flow's states a day past expiry: an abandoned pixel choice holds a token."""
    result = session.execute(
        delete(OAuthState).where(
            OAuthState.purpose.in_([CONNECT_PURPOSE, PICK_PURPOSE]),
            OAuthState.expires_at < now - timedelta(days=1),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _run_token_check(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    settings = runtime.settings
    if settings.meta_app_id and settings.meta_app_secret:
        check_tokens(runtime, now=now)
    else:
        # debug_token needs the app's own token; tokens pasted by hand still work without it.
        log.info(
            "meta token check skipped: META_APP_ID and META_APP_SECRET are not set"
        )
    with runtime.sessions.begin() as session:
        purge_states(session, now)


def periodic_jobs() -> list[PeriodicJob]:
    """The worker's daily ``debug_token`` check of every stored Meta token."""
    return [
        PeriodicJob(
            name="meta-token-check",
            interval_seconds=CHECK_INTERVAL_SECONDS,
            run=_run_token_check,
        )
    ]


def stored_pixels(data: Mapping[str, Any]) -> list[Pixel]:
    """The pixels kept in a picker state's data."""
    return [
        Pixel(
            id=str(p["id"]),
            name=str(p.get("name") or p["id"]),
            source=str(p.get("source") or ""),
        )
        for p in data.get("pixels") or ()
        if isinstance(p, Mapping) and p.get("id")
    ]


def pixels_data(pixels: Sequence[Pixel]) -> list[dict[str, str]]:
    """Pixels as JSON for a picker state."""
    return [{"id": p.id, "name": p.name, "source": p.source} for p in pixels]
