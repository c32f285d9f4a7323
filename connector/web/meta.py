"""Meta account routes: connect (and reconnect) through Facebook Login, pick the pixel, disconnect.

The state is single-use and bound twice: to the connection in the database, and to the
browser that started the flow (a signed session cookie), so a callback link handed to
someone else cannot attach their Meta account to a store, or theirs to ours.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, session

from connector import meta_oauth
from connector.crypto import keyring
from connector.errors import OAuthStateError, PayloadError, SignatureError
from connector.links import link_expiry, link_key, sign_admin_link, verify_admin_link
from connector.meta_oauth import (
    Connected,
    Grant,
    Pixel,
    TestEventResult,
    Token,
    TokenInfo,
)
from connector.store import queries
from connector.store.models import ConnectionStatus, utcnow
from connector.web import get_runtime

log = logging.getLogger(__name__)
bp = Blueprint("meta", __name__)

#: the session key naming the connection whose Meta flow this browser started
SESSION_KEY = "meta_connection"
#: the OAuthState purpose recording spent admin links
LINK_PURPOSE = "admin_link"


def _message(
    status: int, heading: str, message: str, hint: str | None = None
) -> tuple[str, int]:
    return (
        render_template(
            "meta/message.html", heading=heading, message=message, hint=hint
        ),
        status,
    )


def _admin_connection(now: datetime) -> str:
    """The connection id of a request signed by the store's admin page, spending the link.

    A link works once: a copy (a second tab, a logged or shared URL, the back button to a
    cached page) is refused with a page saying to open the connector again, which hands
    a fresh link to whoever can still open the store's admin.

    Raises:
        SignatureError: forged, expired, or used already.
    """
    values = request.values
    connection_id = values.get("connection", "")
    token = values.get("token", "")
    runtime = get_runtime()
    secret = runtime.settings.secret_key
    expires = link_expiry(token)
    if (
        not connection_id
        or expires is None
        or not verify_admin_link(secret, connection_id, token, now)
    ):
        raise SignatureError(
            "this link is not valid or has expired; open the connector from your store's admin again"
        )
    with runtime.sessions.begin() as db:
        fresh = queries.spend_once(
            db, link_key(token), LINK_PURPOSE, expires_at=expires
        )
    if not fresh:
        raise SignatureError(
            "this link was used already (each link works once); open the connector from "
            "your store's admin again"
        )
    return connection_id


def _started_here() -> str:
    connection_id = session.get(SESSION_KEY)
    if not isinstance(connection_id, str) or not connection_id:
        raise OAuthStateError(
            "this sign-in was not started in this browser; open Connect Meta from your store's admin"
        )
    return connection_id


@bp.get("/meta/connect")
def connect() -> Any:
    """Send the store's admin to Facebook's login dialog with a state bound to the connection."""
    runtime = get_runtime()
    now = utcnow()
    connection_id = _admin_connection(now)
    meta_oauth.require_app(runtime.settings)
    with runtime.sessions.begin() as db:
        conn = queries.get_connection(db, connection_id)
        if conn.status == ConnectionStatus.UNINSTALLED:
            return _message(
                409,
                "The app is not installed",
                "The connector was removed from this store, so it cannot send events.",
                "Install the app on your store again, then connect Meta.",
            )
        state = queries.issue_state(
            db, meta_oauth.CONNECT_PURPOSE, connection_id=conn.id, now=now
        )
    session[SESSION_KEY] = connection_id
    log.info("meta connect started for connection %s", connection_id)
    return redirect(meta_oauth.dialog_url(runtime.settings, state))


@bp.get("/meta/callback")
def callback() -> Any:
    """Facebook's redirect back: refuse bad states, exchange the code, store or offer pixels."""
    runtime = get_runtime()
    now = utcnow()
    args = request.args
    if args.get("error") or args.get("error_reason"):
        return _denied(now)
    code = args.get("code", "")
    if not code:
        raise PayloadError(
            "Meta sent back no authorization code; open Connect Meta from your store's admin again"
        )
    started_for = _started_here()
    with runtime.sessions.begin() as db:
        # Spent before any network call: a replayed callback finds it used, whatever happens next.
        state = queries.consume_state(
            db,
            args.get("state", ""),
            meta_oauth.CONNECT_PURPOSE,
            connection_id=started_for,
            now=now,
        )
        connection_id = state.connection_id or started_for
    grant = meta_oauth.MetaClient(runtime.settings).authorize(code, now)
    missing = grant.info.missing_scopes()
    if meta_oauth.REQUIRED_SCOPE in missing:
        return _message(
            400,
            "Permission needed",
            "Meta did not grant the connector permission to manage your ads "
            f"({', '.join(missing)}), which sending conversions needs.",
            "Connect Meta again from your store's admin and leave every permission switched on.",
        )
    if not grant.pixels:
        return _message(
            404,
            "No pixel found",
            "Your Meta account reaches no pixel (dataset) through its businesses or ad accounts.",
            "Create a dataset in Meta Events Manager, then connect Meta again from your store's admin.",
        )
    if len(grant.pixels) == 1:
        return _finish(connection_id, grant.token, grant.info, grant.pixels[0].id, now)
    return _offer_pixels(connection_id, grant, now)


def _denied(now: datetime) -> tuple[str, int]:
    """The person cancelled the dialog or Meta refused it: spend our state, say so plainly."""
    started_for = session.get(SESSION_KEY)
    nonce = request.args.get("state", "")
    if isinstance(started_for, str) and nonce:
        try:
            with get_runtime().sessions.begin() as db:
                queries.consume_state(
                    db,
                    nonce,
                    meta_oauth.CONNECT_PURPOSE,
                    connection_id=started_for,
                    now=now,
                )
        except OAuthStateError:
            pass  # nothing of ours to spend; the page below is the same
    session.pop(SESSION_KEY, None)
    if request.args.get("error_reason") == "user_denied":
        return _message(
            200,
            "Meta was not connected",
            "You cancelled the Facebook login, so nothing was changed.",
            "To send your store's conversions to Meta, open Connect Meta from your store's admin "
            "and allow the requested permissions.",
        )
    description = request.args.get("error_description") or request.args.get(
        "error", "unknown error"
    )
    return _message(
        400,
        "Meta was not connected",
        f"Facebook ended the login with an error: {description}. Nothing was changed.",
        "Try again from your store's admin.",
    )


def _offer_pixels(connection_id: str, grant: Grant, now: datetime) -> str:
    """Keep the token server-side (encrypted, in a single-use state) and show the choice."""
    runtime = get_runtime()
    with runtime.sessions.begin() as db:
        conn = queries.get_connection(db, connection_id)
        state = queries.issue_state(
            db,
            meta_oauth.PICK_PURPOSE,
            connection_id=connection_id,
            now=now,
            data={
                "token": keyring.encrypt(grant.token.access_token),
                "expires_at": grant.token.expires_at.isoformat()
                if grant.token.expires_at
                else None,
                "scopes": list(grant.info.scopes),
                "pixels": meta_oauth.pixels_data(grant.pixels),
            },
        )
        store, current = conn.store, conn.pixel_id
    return render_template(
        "meta/pick.html",
        state=state,
        pixels=grant.pixels,
        store=store,
        current=current,
    )


@bp.post("/meta/pixel")
def pick() -> Any:
    """The pixel picker's answer: spend its state, store the token and the chosen pixel."""
    runtime = get_runtime()
    now = utcnow()
    started_for = _started_here()
    pixel_id = request.form.get("pixel_id", "")
    with runtime.sessions.begin() as db:
        state = queries.consume_state(
            db,
            request.form.get("state", ""),
            meta_oauth.PICK_PURPOSE,
            connection_id=started_for,
            now=now,
        )
        offered: list[Pixel] = meta_oauth.stored_pixels(state.data)
        if pixel_id not in {p.id for p in offered}:
            # Raising rolls the transaction back: the state stays usable for a proper choice.
            raise PayloadError("choose one of the pixels listed on the previous page")
        expires = state.data.get("expires_at")
        token = Token(
            access_token=keyring.decrypt(str(state.data["token"])),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )
        info = TokenInfo(
            is_valid=True,
            expires_at=token.expires_at,
            scopes=tuple(state.data.get("scopes") or ()),
        )
        # The token now lives on the connection only; the spent state keeps no copy.
        state.data = {}
        # Same transaction as spending the state: the choice is stored whole or not at all.
        conn = queries.get_connection(db, started_for)
        outcome = meta_oauth.save_connection(db, conn, token, info, pixel_id, now)
        store, test_event_code = conn.store, conn.test_event_code
    return _done(started_for, store, test_event_code, token, pixel_id, outcome, now)


def _finish(
    connection_id: str, token: Token, info: TokenInfo, pixel_id: str, now: datetime
) -> str:
    with get_runtime().sessions.begin() as db:
        conn = queries.get_connection(db, connection_id)
        outcome = meta_oauth.save_connection(db, conn, token, info, pixel_id, now)
        store, test_event_code = conn.store, conn.test_event_code
    return _done(connection_id, store, test_event_code, token, pixel_id, outcome, now)


def _done(
    connection_id: str,
    store: str,
    test_event_code: str | None,
    token: Token,
    pixel_id: str,
    outcome: Connected,
    now: datetime,
) -> str:
    """The last page: what was stored, and Meta's answer to the test event when there is one."""
    runtime = get_runtime()
    session.pop(SESSION_KEY, None)
    test: TestEventResult | None = None
    if test_event_code:
        test = meta_oauth.send_test_event(
            runtime.settings,
            pixel_id=pixel_id,
            access_token=token.access_token,
            test_event_code=test_event_code,
            event=meta_oauth.build_test_event(
                connection_id, store, request.user_agent.string or None, now
            ),
        )
    return render_template(
        "meta/done.html",
        store=store,
        pixel_id=pixel_id,
        expires_at=token.expires_at,
        released=outcome.released,
        too_old=outcome.too_old,
        test=test,
        connection_id=connection_id,
        admin_token=sign_admin_link(runtime.settings.secret_key, connection_id, now),
    )


@bp.post("/meta/disconnect")
def disconnect() -> Response | tuple[str, int]:
    """Forget the Meta token and stop sending; the outbox is kept."""
    runtime = get_runtime()
    now = utcnow()
    connection_id = _admin_connection(now)
    with runtime.sessions.begin() as db:
        conn = queries.get_connection(db, connection_id)
        held = meta_oauth.disconnect(db, conn, now)
    return _message(
        200,
        "Meta is disconnected",
        "The connector no longer holds a Meta token for this store and sends nothing.",
        f"{held} waiting event{'s' if held != 1 else ''} are kept; connect Meta again to send them.",
    )
