"""Shopify session tokens: the HS256 JWT App Bridge hands an embedded app (pure).

Shopify signs it with the app's client secret. ``aud`` is the client id, ``dest`` is
``https://{shop}`` and ``iss`` is ``https://{shop}/admin``. The clock is passed in: PyJWT
checks the signature, the algorithm and the audience; expiry is checked here against ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt

from connector.domains import SHOP_DOMAIN
from connector.errors import SignatureError

#: Shopify's own libraries allow 10 seconds of clock skew on exp/nbf
LEEWAY = timedelta(seconds=10)
#: claims every genuine session token carries
REQUIRED_CLAIMS = ("iss", "dest", "aud", "exp", "nbf")


@dataclass(frozen=True, kw_only=True)
class SessionToken:
    """The verified claims of a session token that matter to the connector."""

    shop: str
    user_id: str | None
    session_id: str | None
    expires_at: datetime


def verify_session_token(
    token: str,
    *,
    api_key: str,
    secrets: Sequence[str],
    now: datetime,
    leeway: timedelta = LEEWAY,
) -> SessionToken:
    """Verify ``token`` against any of ``secrets`` and return its shop.

    Raises:
        SignatureError: wrong signature or algorithm, foreign audience, expired, not yet valid,
            or ``iss``/``dest`` not naming the same ``*.myshopify.com`` shop.
    """
    if not token or not secrets:
        raise SignatureError("no session token")
    claims = _decode(token, api_key, secrets)
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise SignatureError(f"the session token has no {name} claim")
    exp = _timestamp(claims["exp"], "exp")
    nbf = _timestamp(claims["nbf"], "nbf")
    if now >= exp + leeway:
        raise SignatureError("the session token has expired")
    if now < nbf - leeway:
        raise SignatureError("the session token is not valid yet")
    dest_host = _host(claims["dest"])
    iss_host = _host(claims["iss"])
    if dest_host is None or not SHOP_DOMAIN.fullmatch(dest_host):
        raise SignatureError("the session token's dest is not a myshopify.com shop")
    if iss_host != dest_host:
        raise SignatureError("the session token's iss and dest name different shops")
    sub = claims.get("sub")
    sid = claims.get("sid")
    return SessionToken(
        shop=dest_host,
        user_id=str(sub) if sub is not None else None,
        session_id=str(sid) if sid is not None else None,
        expires_at=exp,
    )


def _decode(token: str, api_key: str, secrets: Sequence[str]) -> dict[str, Any]:
    last: jwt.PyJWTError | None = None
    for secret in secrets:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                # Only HS256: "none" and asymmetric algorithms are refused before any check.
                algorithms=["HS256"],
                audience=api_key,
                # exp/nbf/iat are checked against the caller's clock, not PyJWT's.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["aud"],
                },
            )
        except jwt.InvalidSignatureError as exc:
            last = exc  # maybe signed with the other secret (a rotation): try it
            continue
        except jwt.InvalidAudienceError as exc:
            raise SignatureError(
                "the session token was issued for another app"
            ) from exc
        except jwt.PyJWTError as exc:
            raise SignatureError(f"the session token is not valid: {exc}") from exc
        return claims
    raise SignatureError("the session token's signature does not match") from last


def _timestamp(value: Any, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignatureError(f"the session token's {name} is not a timestamp")
    return datetime.fromtimestamp(value, UTC)


def _host(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or parts.port is not None or parts.username is not None:
        return None
    return (parts.hostname or "").lower() or None
