"""Connecting a WooCommerce store: WooCommerce's key-generation flow, then its webhooks.

1. ``GET /woocommerce/connect?store_url=...`` checks the address and sends the merchant to
   the store's ``/wc-auth/v1/authorize`` with an unguessable single-use ``user_id`` (the state).
2. On approval WooCommerce posts the new REST keys to ``POST /woocommerce/callback`` and
   deletes them again unless the answer is exactly 200, so the callback only spends the
   state, keeps the offered keys encrypted in the state's data, and answers.
3. After the answer the keys are proven: the store at the URL the flow was started for must
   accept them for an authenticated read (and refuse the same read without them). Only
   then is the store's connection created or given the keys, and its webhooks made. A
   state and made-up keys (anyone can start a flow for any store) change nothing.
4. WooCommerce then sends the merchant to ``GET /woocommerce/return``, which waits for the
   proof (running it when nothing else is), and shows this flow's connection with a
   single-use "Connect Meta" link only when the proof succeeded. ``success=1`` alone
   proves nothing.

Webhooks (``order.created``, ``order.updated``, ``order.deleted``) are created through the
REST API and point at ``APP_URL/webhooks/woocommerce/<connection id>``, signed with a secret
the connector generates. Connecting again updates the store's existing webhooks for the
connection (found by their delivery URL) instead of adding more. If that work fails or the
process dies, the worker's ``woocommerce_webhooks`` job finishes it; the same job re-checks
every store daily (WooCommerce disables a webhook after repeated failed deliveries).
Connections added by hand (``connector connections add woocommerce``) are left alone.

Bookkeeping lives in ``Connection.settings["webhooks"]``: ``status`` (``pending``, ``ready``,
``failed``), ``ids`` by topic, ``error``, ``failures``, ``retry_at``, ``checked_at``.

``WOOCOMMERCE_ALLOW_INSECURE_URLS=1`` (development only) lets a store on ``http://`` or a
local host connect. Note that WooCommerce itself refuses a ``callback_url`` that is not
https, so a local connector needs an https ``APP_URL`` (a tunnel) for the key exchange.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, abort, jsonify, redirect, request, session
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from adapters.woocommerce.rest import WooCommerceClient
from connector.crypto import keyring
from connector.domains import (
    normalize_local_store_url,
    normalize_store_url,
)
from connector.errors import PlatformError
from connector.links import sign_admin_link
from connector.outbound import (
    UnresolvableHostError,
    UnsafeAddressError,
    check_url,
    woocommerce_policy,
)
from connector.platform import PeriodicJob
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, OAuthState, utcnow
from connector.web import get_runtime
from connector.web.dashboard import store_dashboard_url

log = logging.getLogger(__name__)
bp = Blueprint("woocommerce", __name__)

PLATFORM = "woocommerce"
APP_NAME = "Meta Conversions API connector"
STATE_PURPOSE = "woocommerce_connect"
SESSION_KEY = "woocommerce_connect"
#: the merchant may have to log in to WordPress before approving
STATE_TTL = timedelta(hours=1)
TOPICS = ("order.created", "order.updated", "order.deleted")
SECRET_LENGTH = 48
#: how long one setup attempt may hold a connection before another may try
SETUP_LEASE = timedelta(minutes=5)
RECHECK_AFTER = timedelta(days=1)
MAX_RETRY_DELAY = timedelta(hours=6)
JOB_INTERVAL_SECONDS = 300.0
#: the outcomes of a flow's key proof, kept in its state's data
PROOF_PENDING, PROOF_PROVEN, PROOF_REFUSED = "pending", "proven", "refused"
#: how long the return page waits for a proof another request is running before it reloads
PROOF_WAIT = timedelta(seconds=10)
PROOF_POLL_SECONDS = 0.1


# -- pure helpers ---------------------------------------------------------------------


def validate_store_url(url: str, *, allow_insecure: bool) -> str:
    """The store's base URL; ``allow_insecure`` also admits http and local hosts (development).

    Raises:
        ValueError: with a sentence a merchant can act on.
    """
    if not allow_insecure:
        return normalize_store_url(url)
    return normalize_local_store_url(url)


def generate_secret() -> str:
    """A webhook secret: alphanumeric, so no WordPress entity encoding can touch it."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(SECRET_LENGTH))


def delivery_url(app_url: str, connection_id: str) -> str:
    return f"{app_url.rstrip('/')}/webhooks/woocommerce/{connection_id}"


def is_setup_due(webhooks: Any, now: datetime) -> bool:
    """True when a connect-flow connection's webhooks need (re)making now."""
    if not isinstance(webhooks, Mapping):
        return False  # added by hand: the merchant manages the webhooks
    lease = _when(webhooks.get("lease_until"))
    if lease is not None and lease > now:
        return False
    status = webhooks.get("status")
    if status == "ready":
        checked = _when(webhooks.get("checked_at"))
        return checked is None or checked + RECHECK_AFTER <= now
    if status == "failed":
        retry = _when(webhooks.get("retry_at"))
        return retry is None or retry <= now
    return True


def retry_delay(failures: int) -> timedelta:
    """5 minutes, doubling per failure, at most 6 hours."""
    return min(
        timedelta(minutes=5) * (1 << min(max(failures - 1, 0), 10)), MAX_RETRY_DELAY
    )


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- the webhooks ---------------------------------------------------------------------


def ensure_webhooks(
    client: WooCommerceClient, connection_id: str, url: str, secret: str
) -> dict[str, int]:
    """Exactly one active webhook per topic for this connection; returns their ids.

    Raises:
        PlatformError: the store refused or failed a request.
    """
    suffix = f"/webhooks/woocommerce/{connection_id}"
    mine = [
        w
        for w in client.list_webhooks()
        if isinstance(w.get("delivery_url"), str)
        and urlsplit(w["delivery_url"]).path.rstrip("/").endswith(suffix)
        and isinstance(w.get("id"), int)
    ]
    ids: dict[str, int] = {}
    for topic in TOPICS:
        body = {
            "name": f"{APP_NAME}: {topic}",
            "topic": topic,
            "delivery_url": url,
            "secret": secret,
            "status": "active",
        }
        same = sorted(
            (w for w in mine if w.get("topic") == topic), key=lambda w: w["id"]
        )
        if same:
            keep, *extra = same
            client.json("PUT", f"/webhooks/{keep['id']}", json=body)
            for dup in extra:
                client.request(
                    "DELETE", f"/webhooks/{dup['id']}", params={"force": "true"}
                )
            ids[topic] = keep["id"]
        else:
            created = client.json("POST", "/webhooks", json=body)
            if not isinstance(created, dict) or not isinstance(created.get("id"), int):
                raise PlatformError(
                    "the store created a webhook but did not say its id"
                )
            ids[topic] = created["id"]
    return ids


def setup_webhooks(runtime: Runtime, connection_id: str) -> str:
    """Make the connection's webhooks; returns ``ready``, ``failed``, ``busy`` or ``skipped``.

    When new keys arrive while a run holds the lease, their own run finds it busy; the run
    holding it then goes again with them, so nothing waits for the periodic job.
    """
    for _ in range(MAX_SETUP_RUNS):
        status = _setup_once(runtime, connection_id)
        if status != "superseded":
            return status
    return "pending"


#: a run that finds newer keys goes again, at most this many times in a row
MAX_SETUP_RUNS = 3


def _setup_once(runtime: Runtime, connection_id: str) -> str:
    now = utcnow()
    with runtime.sessions.begin() as db:
        conn = db.get(Connection, connection_id, with_for_update=True)
        if (
            conn is None
            or conn.platform != PLATFORM
            or not conn.platform_key
            or not conn.platform_token
        ):
            return "skipped"
        current = dict((conn.settings or {}).get("webhooks") or {})
        lease = _when(current.get("lease_until"))
        if lease is not None and lease > now:
            return "busy"
        generation = current.get("generation", 0)
        current["lease_until"] = (now + SETUP_LEASE).isoformat()
        if not conn.webhook_secret:
            conn.webhook_secret = generate_secret()
        conn.settings = {**(conn.settings or {}), "webhooks": current}
        store, key, token, secret = (
            conn.store,
            conn.platform_key,
            conn.platform_token,
            conn.webhook_secret,
        )
    client = WooCommerceClient.for_settings(runtime.settings, store, key, token)
    result: dict[str, Any]
    try:
        ids = ensure_webhooks(
            client,
            connection_id,
            delivery_url(runtime.settings.app_url, connection_id),
            secret,
        )
    except PlatformError as exc:
        client.close()
        failures = int(current.get("failures") or 0) + 1
        result = {
            "status": "failed",
            "error": str(exc),
            "failures": failures,
            "retry_at": (utcnow() + retry_delay(failures)).isoformat(),
        }
        log.warning("woocommerce webhooks for %s failed: %s", connection_id, exc)
    else:
        client.close()
        result = {
            "status": "ready",
            "ids": ids,
            "error": None,
            "failures": 0,
            "retry_at": None,
            "checked_at": utcnow().isoformat(),
        }
        log.info(
            "woocommerce webhooks for %s ready: %s", connection_id, sorted(ids.values())
        )
    with runtime.sessions.begin() as db:
        conn = db.get(Connection, connection_id, with_for_update=True)
        if conn is None:
            return "skipped"
        latest = dict((conn.settings or {}).get("webhooks") or {})
        latest.pop("lease_until", None)
        superseded = latest.get("generation", 0) != generation
        if superseded:
            # New keys arrived meanwhile: pending until a run with them finishes.
            latest["status"] = "pending"
        else:
            latest.update(result)
        conn.settings = {**(conn.settings or {}), "webhooks": latest}
    return "superseded" if superseded else str(result["status"])


def reconcile(runtime: Runtime) -> None:
    """The worker job: finish or re-check every connect-flow store that is due."""
    now = utcnow()
    with runtime.sessions.begin() as db:
        forget_stale_offers(db, now)
    with runtime.sessions() as db:
        rows = db.execute(
            select(Connection.id, Connection.settings, Connection.status).where(
                Connection.platform == PLATFORM
            )
        ).all()
    for connection_id, settings, status in rows:
        if status == ConnectionStatus.UNINSTALLED:
            continue
        if is_setup_due((settings or {}).get("webhooks"), now):
            setup_webhooks(runtime, connection_id)


def forget_stale_offers(db: Any, now: datetime) -> int:
    """Drop the keys of flows that expired unproven, and flows a day past their expiry.

    Returns how many offers were dropped. An offer is proven by the callback's follow-up or
    the return page; one nobody proved before its state expired never will be.
    """
    dropped = 0
    expired = db.scalars(
        select(OAuthState)
        .where(OAuthState.purpose == STATE_PURPOSE, OAuthState.expires_at <= now)
        .with_for_update()
    ).all()
    for state in expired:
        if state.expires_at <= now - timedelta(days=1):
            db.delete(state)
        elif (state.data or {}).get("offer"):
            state.data = {
                "proof": PROOF_REFUSED,
                "reason": "The connection took too long; start again.",
            }
            dropped += 1
    return dropped


def periodic_jobs() -> list[PeriodicJob]:
    return [
        PeriodicJob(
            name="woocommerce_webhooks",
            interval_seconds=JOB_INTERVAL_SECONDS,
            run=reconcile,
        )
    ]


def _start_setup(runtime: Runtime, connection_id: str) -> None:
    def run() -> None:
        try:
            setup_webhooks(runtime, connection_id)
        except Exception:  # the worker's job retries; a thread has nobody to report to
            log.exception("woocommerce webhook setup for %s crashed", connection_id)

    threading.Thread(
        target=run, name=f"woocommerce-setup-{connection_id}", daemon=True
    ).start()


# -- proving the keys -----------------------------------------------------------------
#
# Anyone can start a flow for any store URL and post made-up keys with its state. So the
# keys decide, not the state: a connection is created or changed only once the store at
# the URL the flow was started for accepts them for a read that needs valid keys.


@dataclass(frozen=True, kw_only=True)
class ProofOutcome:
    """Where a flow's key proof stands: ``pending``, ``proven``, ``refused`` or ``none`` (no keys yet)."""

    status: str
    connection_id: str | None = None
    reason: str | None = None
    #: True when this call ran the proof (its caller starts the webhook setup)
    ran: bool = False


def check_keys(client: WooCommerceClient) -> str | None:
    """None when the store proves the client's keys; otherwise why not, for the merchant.

    Two reads of the webhook list (``GET /wp-json/wc/v3/webhooks``), which WooCommerce serves
    only to a valid key with read access (``WC_REST_Webhooks_V1_Controller::get_items_permissions_check``,
    https://woocommerce.github.io/woocommerce-rest-api-docs/#list-all-webhooks): with the keys it
    must answer 200 and a JSON list; without them it must refuse (401/403), or a 200 proves
    nothing (a site that answers anything).
    """
    try:
        listed = client.request("GET", "/webhooks", params={"per_page": "1"})
    except PlatformError as exc:
        if exc.status in (401, 403):
            return (
                f"{client.store_url} did not accept the keys sent to the connector, so they "
                "were not issued by that store."
            )
        if exc.status == 404:
            return (
                f"{client.store_url} has no WooCommerce REST API at /wp-json/wc/v3; check "
                "that WooCommerce is active and that WordPress permalinks are not 'Plain'."
            )
        if exc.status is not None and 300 <= exc.status < 400:
            return (
                f"{client.store_url} redirects its REST API elsewhere; connect the store "
                "with the address it redirects to."
            )
        if exc.status is not None:
            return f"{client.store_url} answered {exc.status} when its keys were checked; try again later."
        # ours (an address refused, a name that does not resolve, unreachable): merchant-readable
        return f"{exc}."
    try:
        body = listed.json()
    except ValueError:
        body = None
    if not isinstance(body, list):
        return f"{client.store_url} did not answer like a WooCommerce store when its keys were checked."
    try:
        anonymous = client.probe("/webhooks")
    except PlatformError as exc:
        return f"{exc}."
    if anonymous not in (400, 401, 403):
        return (
            f"{client.store_url} answers its REST API without keys, so the keys it sent "
            "cannot be confirmed."
        )
    return None


def run_proof(runtime: Runtime, nonce: str) -> ProofOutcome:
    """Prove the keys offered with the flow ``nonce`` unless another run holds the proof.

    The offered keys wait, encrypted, in the state's data; the proof is claimed under a
    row lock with a lease, so the callback's follow-up and the return page never both
    call the store, and a proof whose process died is taken over once its lease ends.
    """
    now = utcnow()
    lease = timedelta(seconds=2 * runtime.settings.http_timeout + 10)
    with runtime.sessions.begin() as db:
        state = queries.find_state(db, nonce, STATE_PURPOSE, for_update=True)
        if state is None:
            return ProofOutcome(status="none")
        data = dict(state.data or {})
        current = _outcome(data)
        if current.status != PROOF_PENDING:
            return current
        holder = _when(data.get("proving_until"))
        if holder is not None and holder > now:
            return current
        if state.expires_at <= now:
            state.data = {
                "proof": PROOF_REFUSED,
                "reason": "The connection took too long; start again.",
            }
            return _outcome(state.data)
        state.data = {**data, "proving_until": (now + lease).isoformat()}
        store = str(state.store or "")
        offer = json.loads(keyring.decrypt(str(data["offer"])))
    client = WooCommerceClient.for_settings(
        runtime.settings, store, offer["consumer_key"], offer["consumer_secret"]
    )
    try:
        reason = check_keys(client)
    finally:
        client.close()
    with runtime.sessions.begin() as db:
        state = queries.find_state(db, nonce, STATE_PURPOSE, for_update=True)
        if state is None:
            return ProofOutcome(status="none")
        if reason is not None:
            # The keys are forgotten with the refusal: an unproven offer keeps nothing.
            state.data = {"proof": PROOF_REFUSED, "reason": reason}
            log.warning("woocommerce keys refused by the store (flow ends)")
            return ProofOutcome(status=PROOF_REFUSED, reason=reason, ran=True)
        connection_id = _adopt_keys(db, store, offer)
        state.connection_id = connection_id
        state.data = {"proof": PROOF_PROVEN, "connection_id": connection_id}
    log.info("woocommerce store connected with proven keys: %s", connection_id)
    return ProofOutcome(status=PROOF_PROVEN, connection_id=connection_id, ran=True)


def await_proof(
    runtime: Runtime,
    nonce: str,
    *,
    wait: timedelta = PROOF_WAIT,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ProofOutcome:
    """The proof's outcome, running it here when nobody is, waiting up to ``wait`` when somebody is."""
    deadline = clock() + wait.total_seconds()
    while True:
        outcome = run_proof(runtime, nonce)
        if outcome.ran and outcome.status == PROOF_PROVEN and outcome.connection_id:
            _start_setup(runtime, outcome.connection_id)
        if outcome.status != PROOF_PENDING or clock() >= deadline:
            return outcome
        sleep(PROOF_POLL_SECONDS)


def _outcome(data: Mapping[str, Any]) -> ProofOutcome:
    status = data.get("proof")
    if status == PROOF_PENDING and data.get("offer"):
        return ProofOutcome(status=PROOF_PENDING)
    if status == PROOF_PROVEN and isinstance(data.get("connection_id"), str):
        return ProofOutcome(status=PROOF_PROVEN, connection_id=data["connection_id"])
    if status == PROOF_REFUSED:
        return ProofOutcome(status=PROOF_REFUSED, reason=str(data.get("reason") or ""))
    return ProofOutcome(status="none")


def _adopt_keys(db: Any, store: str, offer: Mapping[str, Any]) -> str:
    """Create or update the store's connection with proven keys; returns its id."""
    existing = queries.find_connection(db, PLATFORM, store)
    settings = dict(existing.settings or {}) if existing is not None else {}
    previous = dict(settings.get("webhooks") or {})
    settings["webhooks"] = {
        **previous,
        "status": "pending",
        "generation": int(previous.get("generation") or 0) + 1,
        "key_id": offer.get("key_id"),
        "retry_at": None,
    }
    fields: dict[str, Any] = {
        "platform_key": offer["consumer_key"],
        "platform_token": offer["consumer_secret"],
        "scopes": "read_write",
        "settings": settings,
    }
    # Keep a secret the store's webhooks already sign with: a new one would fail them until updated.
    if existing is None or not existing.webhook_secret:
        fields["webhook_secret"] = generate_secret()
    conn = queries.upsert_connection(db, PLATFORM, store, **fields)
    return conn.id


def _start_proof(runtime: Runtime, nonce: str) -> None:
    def run() -> None:
        try:
            outcome = run_proof(runtime, nonce)
            if outcome.ran and outcome.status == PROOF_PROVEN and outcome.connection_id:
                setup_webhooks(runtime, outcome.connection_id)
        except Exception:
            # A thread has nobody to report to; the return page (or, once the flow has
            # expired, the worker) takes the proof over when its lease ends.
            log.exception("woocommerce key proof failed")

    threading.Thread(target=run, name="woocommerce-proof", daemon=True).start()


# -- routes ---------------------------------------------------------------------------


@bp.get("/woocommerce/connect")
def connect() -> BaseResponse:
    runtime = get_runtime()
    raw = request.args.get("store_url", "")
    if not raw.strip():
        return _page(
            "Connect your WooCommerce store",
            "<form method='get'><label>Store address "
            "<input name='store_url' type='url' placeholder='https://shop.example' required>"
            "</label> <button>Connect</button></form>",
        )
    try:
        store = validate_store_url(
            raw, allow_insecure=runtime.settings.woocommerce_allow_insecure
        )
    except ValueError as exc:
        abort(400, description=str(exc))
    try:
        # Early feedback only: every connection to the store is checked again when made.
        check_url(
            store,
            woocommerce_policy(runtime.settings),
            runtime.settings.store_resolver,
        )
    except UnresolvableHostError:
        pass  # perhaps a passing DNS failure; the key proof refuses it if it lasts
    except UnsafeAddressError as exc:
        return _page(
            "This store cannot be connected",
            f"<p>{escape(str(exc))}.</p>"
            "<p><a href='/woocommerce/connect'>Enter another address</a>.</p>",
            status=400,
        )
    now = utcnow()
    with runtime.sessions.begin() as db:
        nonce = queries.issue_state(
            db, STATE_PURPOSE, store=store, ttl=STATE_TTL, now=now
        )
    # The return page shows an admin link: only the browser that started may see it.
    session[SESSION_KEY] = {"state": nonce, "store": store, "at": now.isoformat()}
    app_url = runtime.settings.app_url.rstrip("/")
    query = urlencode(
        {
            "app_name": APP_NAME,
            "scope": "read_write",
            "user_id": nonce,
            "return_url": f"{app_url}/woocommerce/return",
            "callback_url": f"{app_url}/woocommerce/callback",
        }
    )
    return redirect(f"{store}/wc-auth/v1/authorize?{query}", code=302)


@bp.post("/woocommerce/callback")
def callback() -> Response:
    """Keep the offered keys, encrypted, with the flow's state; prove them after answering.

    WooCommerce deletes the keys unless this answer is exactly 200, and only then sends the
    browser back, so the proof cannot hold the answer up (a store serving one request at a
    time would wait on itself). Nothing about a connection changes here.
    """
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nested past the parser's limit: not what WooCommerce sends
        data = None
    if not isinstance(data, dict):
        abort(400, description="the body is not the JSON object WooCommerce sends")
    state = data.get("user_id")
    state = (
        str(state)
        if isinstance(state, str | int) and not isinstance(state, bool)
        else ""
    )
    key, token = data.get("consumer_key"), data.get("consumer_secret")
    permissions = data.get("key_permissions")
    if not (
        isinstance(key, str)
        and key.startswith("ck_")
        and isinstance(token, str)
        and token.startswith("cs_")
        and len(key) <= 200
        and len(token) <= 200
    ):
        abort(
            400, description="consumer_key and consumer_secret are missing or malformed"
        )
    if permissions != "read_write":
        abort(400, description="the connector needs read_write keys to manage webhooks")
    runtime = get_runtime()
    now = utcnow()
    key_id = data.get("key_id")
    with runtime.sessions.begin() as db:
        issued = queries.consume_state(db, state, STATE_PURPOSE, now=now)
        if issued.store is None:
            abort(400, description="this sign-in link names no store; start again")
        offer = {
            "consumer_key": key,
            "consumer_secret": token,
            "key_id": key_id
            if isinstance(key_id, int) and not isinstance(key_id, bool)
            else None,
        }
        issued.data = {
            "proof": PROOF_PENDING,
            "offer": keyring.encrypt(json.dumps(offer)),
        }
    log.info("woocommerce keys offered; proving them against the store")
    rv = jsonify(status="ok")
    rv.status_code = 200
    rv.call_on_close(lambda: _start_proof(runtime, state))
    return rv


@bp.get("/woocommerce/return")
def return_page() -> Response:
    """Where WooCommerce sends the browser back: the outcome of this browser's flow only."""
    runtime = get_runtime()
    started = session.get(SESSION_KEY)
    given = request.args.get("user_id", "")
    now = utcnow()
    if (
        not isinstance(started, dict)
        or not isinstance(started.get("state"), str)
        or not hmac.compare_digest(started["state"].encode(), given.encode())
    ):
        return _page(
            "Open this page from the browser you connected with",
            "<p>This page belongs to a connection started in another browser, or its "
            "session has ended. <a href='/woocommerce/connect'>Connect the store again</a>.</p>",
            status=400,
        )
    at = _when(started.get("at"))
    if at is None or at + STATE_TTL <= now:
        session.pop(SESSION_KEY, None)
        return _page(
            "This link has expired",
            "<p><a href='/woocommerce/connect'>Connect the store again</a>.</p>",
            status=400,
        )
    store = str(started.get("store") or "")
    retry = f"/woocommerce/connect?{urlencode({'store_url': store})}"
    if request.args.get("success") != "1":
        return _page(
            "The store did not grant access",
            f"<p>{escape(store)} did not give the connector its keys. "
            f"<a href='{escape(retry)}'>Try again</a>.</p>",
        )
    # success=1 is only what the address bar says: the outcome of the proof decides.
    outcome = await_proof(runtime, given)
    if outcome.status == PROOF_PENDING:
        return _page(
            "Checking the keys with your store",
            f"<p>The connector is checking the keys {escape(store)} sent. This page "
            "reloads by itself.</p>",
            refresh=2,
        )
    if outcome.status == PROOF_REFUSED:
        return _page(
            "The store's keys could not be confirmed",
            f"<p>{escape(outcome.reason or 'The keys were not accepted.')} Nothing was "
            f"changed. <a href='{escape(retry)}'>Try again</a>.</p>",
            status=400,
        )
    if outcome.status != PROOF_PROVEN or outcome.connection_id is None:
        return _page(
            "Waiting for the store",
            f"<p>{escape(store)} has not sent the connector its keys for this connection. "
            f"<a href='{escape(retry)}'>Try again</a>.</p>",
        )
    with runtime.sessions() as db:
        conn = db.get(Connection, outcome.connection_id)
        if conn is None or conn.store != store:
            return _page(
                "Waiting for the store",
                f"<p>The connection for {escape(store)} is gone. "
                f"<a href='{escape(retry)}'>Connect it again</a>.</p>",
            )
        connection_id = conn.id
        pixel = conn.pixel_id
        webhooks = dict((conn.settings or {}).get("webhooks") or {})
    token = sign_admin_link(runtime.settings.secret_key, connection_id, now)
    meta_link = (
        f"/meta/connect?{urlencode({'connection': connection_id, 'token': token})}"
    )
    status = webhooks.get("status")
    if status == "ready":
        orders = "Orders are reaching the connector."
    elif status == "failed":
        orders = (
            "Setting up the store's webhooks failed: "
            f"{webhooks.get('error') or 'unknown error'}. The connector keeps retrying."
        )
    else:
        orders = "The store's webhooks are being set up; reload in a moment."
    meta = (
        f"Sending to Meta pixel {escape(pixel)}."
        if pixel
        else "Not sending to Meta yet."
    )
    body = (
        f"<p>Store: {escape(store)} (connection {escape(connection_id)})</p>"
        f"<p>{escape(orders)}</p><p>{meta}</p>"
        f"<p><a href='{escape(meta_link)}'>Connect Meta</a> (the link works once, "
        "for a few minutes; reload this page for a new one)</p>"
        f"<p><a href='{escape(store_dashboard_url(connection_id, now, mode='standalone'))}'>"
        "Open your dashboard</a> (this link works for two hours; connecting the store again gives a new one)</p>"
    )
    return _page("Your WooCommerce store is connected", body)


def _page(
    title: str, body: str, *, status: int = 200, refresh: int | None = None
) -> Response:
    reload = (
        f"<meta http-equiv='refresh' content='{refresh}'>"
        if refresh is not None
        else ""
    )
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'>{reload}"
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    rv = Response(html, status=status, mimetype="text/html")
    # It may carry a single-use admin link: a back button must ask again, not show a spent one.
    rv.headers["Cache-Control"] = "no-store"
    return rv
