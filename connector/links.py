"""Signed admin links: how a store's admin page hands the merchant to core routes (pure)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

#: how long a "Connect Meta" link from a store's admin page stays valid
LINK_TTL = timedelta(hours=1)


def _mac(secret_key: str, connection_id: str, expires: int) -> str:
    msg = f"admin-link\n{connection_id}\n{expires}".encode()
    return hmac.new(secret_key.encode(), msg, hashlib.sha256).hexdigest()


def sign_admin_link(secret_key: str, connection_id: str, now: datetime) -> str:
    """A token proving the bearer is the admin of ``connection_id`` (``<expiry>.<mac>``)."""
    expires = int((now + LINK_TTL).timestamp())
    return f"{expires}.{_mac(secret_key, connection_id, expires)}"


def verify_admin_link(
    secret_key: str, connection_id: str, token: str, now: datetime
) -> bool:
    """True when ``token`` was signed for ``connection_id`` and has not expired."""
    expires_s, _, mac = token.partition(".")
    # ASCII digits only, and no more than a timestamp needs: "²".isdigit() is True too.
    if (
        not (expires_s.isascii() and expires_s.isdigit() and len(expires_s) <= 12)
        or not mac
    ):
        return False
    expires = int(expires_s)
    if expires < now.timestamp():
        return False
    # compare_digest: == leaks how many leading characters matched
    return hmac.compare_digest(mac, _mac(secret_key, connection_id, expires))


#: how long a store's link into its dashboard stays valid; pages hand it on, it is not renewed
DASHBOARD_LINK_TTL = timedelta(hours=2)
#: the two ways a store reaches its dashboard: inside the Shopify admin, or a page of its own
DASHBOARD_MODES = ("embedded", "standalone")


def _dashboard_mac(secret_key: str, connection_id: str, mode: str, expires: int) -> str:
    # Its own kind in the message: an admin-link token never opens the dashboard, nor back.
    msg = f"dashboard-link\n{connection_id}\n{mode}\n{expires}".encode()
    return hmac.new(secret_key.encode(), msg, hashlib.sha256).hexdigest()


def sign_dashboard_link(
    secret_key: str, connection_id: str, now: datetime, *, mode: str = "standalone"
) -> str:
    """A token letting its bearer see one store's dashboard (``<expiry>.<mode>.<mac>``).

    Raises:
        ValueError: ``mode`` is not one of :data:`DASHBOARD_MODES`.
    """
    if mode not in DASHBOARD_MODES:
        raise ValueError(f"mode must be one of {', '.join(DASHBOARD_MODES)}")
    expires = int((now + DASHBOARD_LINK_TTL).timestamp())
    return (
        f"{expires}.{mode}.{_dashboard_mac(secret_key, connection_id, mode, expires)}"
    )


def verify_dashboard_link(
    secret_key: str, connection_id: str, token: str, now: datetime
) -> str | None:
    """The link's mode when ``token`` was signed for ``connection_id`` and is live, else None."""
    expires_s, _, rest = token.partition(".")
    mode, _, mac = rest.partition(".")
    if (
        not (expires_s.isascii() and expires_s.isdigit() and len(expires_s) <= 12)
        or mode not in DASHBOARD_MODES
        or not mac
    ):
        return None
    expires = int(expires_s)
    if expires < now.timestamp():
        return None
    expected = _dashboard_mac(secret_key, connection_id, mode, expires)
    # compare_digest: == leaks how many leading characters matched
    return mode if hmac.compare_digest(mac, expected) else None
