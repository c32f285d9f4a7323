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
