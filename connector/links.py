"""Signed admin links: how a store's admin page hands the merchant to core routes (pure).

A link is ``<expiry>.<nonce>.<mac>``: HMAC-SHA256 over the connection id, the expiry and a
random nonce, so two links signed in the same second differ and each can be spent on its
own (the routes record a spent link through :func:`link_key`; see ``connector.web.meta``).
Links live for minutes: a page hands a fresh one every time it is shown to someone who has
proven control of the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

#: how long a "Connect Meta" link from a store's admin page stays valid
LINK_TTL = timedelta(minutes=10)
#: what the verifier accepts of a nonce (token_urlsafe(12) gives 16 characters)
_MAX_NONCE = 64


def _mac(secret_key: str, connection_id: str, expires: int, nonce: str) -> str:
    msg = f"admin-link\n{connection_id}\n{expires}\n{nonce}".encode()
    return hmac.new(secret_key.encode(), msg, hashlib.sha256).hexdigest()


def sign_admin_link(secret_key: str, connection_id: str, now: datetime) -> str:
    """A token proving the bearer is the admin of ``connection_id`` (``<expiry>.<nonce>.<mac>``)."""
    expires = int((now + LINK_TTL).timestamp())
    nonce = secrets.token_urlsafe(12)
    return f"{expires}.{nonce}.{_mac(secret_key, connection_id, expires, nonce)}"


def link_expiry(token: str) -> datetime | None:
    """When a well-formed token expires (UTC), else None; says nothing of its signature."""
    expires_s = token.split(".", 1)[0]
    if not (expires_s.isascii() and expires_s.isdigit() and len(expires_s) <= 12):
        return None
    return datetime.fromtimestamp(int(expires_s), UTC)


def link_key(token: str) -> str:
    """What a spent link is remembered by: a hash, so the record cannot be replayed."""
    return hashlib.sha256(f"admin-link\n{token}".encode()).hexdigest()


def verify_admin_link(
    secret_key: str, connection_id: str, token: str, now: datetime
) -> bool:
    """True when ``token`` was signed for ``connection_id`` and has not expired."""
    expires_s, _, rest = token.partition(".")
    nonce, _, mac = rest.rpartition(".")
    # ASCII digits only, and no more than a timestamp needs: "²".isdigit() is True too.
    if (
        not (expires_s.isascii() and expires_s.isdigit() and len(expires_s) <= 12)
        or not mac
        or not mac.isascii()  # compare_digest raises TypeError on non-ASCII text
        or not nonce
        or len(nonce) > _MAX_NONCE
        or not nonce.isascii()
    ):
        return False
    expires = int(expires_s)
    if expires < now.timestamp():
        return False
    # compare_digest: == leaks how many leading characters matched
    return hmac.compare_digest(mac, _mac(secret_key, connection_id, expires, nonce))


#: how long a store's dashboard stays open: an embedded page's link (handed on in the Shopify
#: admin's iframe, which cannot rely on cookies), or the browser session a standalone link
#: opens; neither is renewed
DASHBOARD_LINK_TTL = timedelta(hours=2)
#: how long a standalone link may wait before its first use, which spends it
STANDALONE_LINK_TTL = timedelta(minutes=10)
#: the two ways a store reaches its dashboard: inside the Shopify admin, or a page of its own
DASHBOARD_MODES = ("embedded", "standalone")


def _dashboard_mac(
    secret_key: str, connection_id: str, mode: str, expires: int, nonce: str
) -> str:
    # Its own kind in the message: an admin-link token never opens the dashboard, nor back.
    msg = f"dashboard-link\n{connection_id}\n{mode}\n{expires}\n{nonce}".encode()
    return hmac.new(secret_key.encode(), msg, hashlib.sha256).hexdigest()


def sign_dashboard_link(
    secret_key: str, connection_id: str, now: datetime, *, mode: str = "standalone"
) -> str:
    """A token letting its bearer see one store's dashboard (``<expiry>.<mode>.<nonce>.<mac>``).

    The nonce makes every link its own, so spending one (standalone links work once) never
    spends another signed in the same second.

    Raises:
        ValueError: ``mode`` is not one of :data:`DASHBOARD_MODES`.
    """
    if mode not in DASHBOARD_MODES:
        raise ValueError(f"mode must be one of {', '.join(DASHBOARD_MODES)}")
    ttl = STANDALONE_LINK_TTL if mode == "standalone" else DASHBOARD_LINK_TTL
    expires = int((now + ttl).timestamp())
    nonce = secrets.token_urlsafe(12)
    mac = _dashboard_mac(secret_key, connection_id, mode, expires, nonce)
    return f"{expires}.{mode}.{nonce}.{mac}"


def dashboard_link_key(token: str) -> str:
    """What a spent standalone dashboard link is remembered by (a hash, never the token)."""
    return hashlib.sha256(f"dashboard-link\n{token}".encode()).hexdigest()


def dashboard_link_expiry(token: str) -> datetime:
    """The expiry written in a token :func:`verify_dashboard_link` accepted."""
    return datetime.fromtimestamp(int(token.partition(".")[0]), UTC)


def verify_dashboard_link(
    secret_key: str, connection_id: str, token: str, now: datetime
) -> str | None:
    """The link's mode when ``token`` was signed for ``connection_id`` and is live, else None."""
    if not token.isascii():
        return None  # and compare_digest refuses non-ASCII text
    parts = token.split(".")
    if len(parts) != 4:
        return None
    expires_s, mode, nonce, mac = parts
    if (
        not (expires_s.isdigit() and len(expires_s) <= 12)
        or mode not in DASHBOARD_MODES
        or not nonce
        or len(nonce) > 64
        or not mac
    ):
        return None
    expires = int(expires_s)
    if expires < now.timestamp():
        return None
    expected = _dashboard_mac(secret_key, connection_id, mode, expires, nonce)
    # compare_digest: == leaks how many leading characters matched
    return mode if hmac.compare_digest(mac, expected) else None
