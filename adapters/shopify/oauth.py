"""Shopify's OAuth rules: query HMACs, the authorize URL, token answers, refresh timing (pure)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from connector.errors import PlatformError, SignatureError

#: how far a signed query's timestamp may be from our clock (Shopify's own libraries allow 90 s)
TIMESTAMP_TOLERANCE = timedelta(seconds=90)
#: refresh an expiring offline token this long before it expires
REFRESH_MARGIN = timedelta(minutes=5)

# S105: OAuth grant and token type names, not secrets
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
TOKEN_TYPE_OFFLINE = "urn:shopify:params:oauth:token-type:offline-access-token"  # noqa: S105


def admin_base(template: str, shop: str) -> str:
    """Where the shop's admin lives (``SHOPIFY_ADMIN_URL_TEMPLATE``), without a trailing slash."""
    return template.format(shop=shop).rstrip("/")


def query_message(pairs: Iterable[tuple[str, str]]) -> str:
    """The string Shopify signs: every parameter but ``hmac``/``signature``, sorted, ``k=v&...``."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key in {"hmac", "signature"}:
            continue
        grouped.setdefault(key, []).append(value)
    parts = []
    for key in sorted(grouped):
        values = grouped[key]
        name = _escape(key, key=True)
        if key.endswith("[]") or len(values) > 1:
            # Repeated parameters (ids[]=1&ids[]=2) are signed as ids=["1", "2"].
            name = _escape(key.removesuffix("[]"), key=True)
            joined = ", ".join(f'"{_escape(v)}"' for v in values)
            parts.append(f"{name}=[{joined}]")
        else:
            parts.append(f"{name}={_escape(values[0])}")
    return "&".join(parts)


def _escape(text: str, *, key: bool = False) -> str:
    # Shopify escapes the separators so a value cannot forge another parameter.
    text = text.replace("%", "%25").replace("&", "%26")
    return text.replace("=", "%3D") if key else text


def sign_query(pairs: Iterable[tuple[str, str]], secret: str) -> str:
    """The hex HMAC-SHA256 Shopify puts in ``hmac``."""
    message = query_message(pairs).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_query(
    pairs: Sequence[tuple[str, str]],
    secrets: Sequence[str],
    now: datetime,
    *,
    tolerance: timedelta = TIMESTAMP_TOLERANCE,
) -> None:
    """Check a request Shopify signed in its query string (install link, OAuth callback).

    Raises:
        SignatureError: no ``hmac``, no secret produces it, or the timestamp is missing or stale.
    """
    given = [v for k, v in pairs if k == "hmac"]
    if len(given) != 1 or not given[0]:
        raise SignatureError("the request carries no Shopify hmac")
    expected = given[0].strip().lower()
    # compare_digest: == leaks how many leading characters matched
    if not any(
        hmac.compare_digest(sign_query(pairs, secret), expected)
        for secret in secrets
        if secret
    ):
        raise SignatureError("the request's Shopify hmac does not match")
    stamps = [v for k, v in pairs if k == "timestamp"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise SignatureError("the signed request carries no timestamp")
    age = now.timestamp() - int(stamps[0])
    if abs(age) > tolerance.total_seconds():
        raise SignatureError("the signed request is too old; start again")


def authorize_url(
    base: str, *, client_id: str, scopes: str, redirect_uri: str, state: str
) -> str:
    """Shopify's consent page for an offline token (no ``grant_options[]``: offline is the default)."""
    query = urlencode(
        {
            "client_id": client_id,
            "scope": scopes,
            "redirect_uri": redirect_uri,
            "state": state,
        }
    )
    return f"{base}/admin/oauth/authorize?{query}"


@dataclass(frozen=True, kw_only=True)
class TokenGrant:
    """An offline access token as Shopify granted it, with absolute expiry times."""

    access_token: str
    scopes: str
    expires_at: datetime | None = None
    refresh_token: str | None = None
    refresh_token_expires_at: datetime | None = None


def parse_token_answer(body: Mapping[str, Any], now: datetime) -> TokenGrant:
    """Read ``/admin/oauth/access_token``'s answer; expiring tokens come with a refresh token.

    Raises:
        PlatformError: the answer has no access token or malformed lifetimes.
    """
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise PlatformError("Shopify's token answer has no access_token")
    scope = body.get("scope", "")
    if not isinstance(scope, str):
        raise PlatformError("Shopify's token answer has a malformed scope")
    expires_at = _deadline(body, "expires_in", now)
    refresh = body.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh):
        raise PlatformError("Shopify's token answer has a malformed refresh_token")
    if expires_at is not None and refresh is None:
        raise PlatformError("Shopify sent an expiring token without a refresh_token")
    return TokenGrant(
        access_token=token,
        scopes=scope,
        expires_at=expires_at,
        refresh_token=refresh,
        refresh_token_expires_at=_deadline(body, "refresh_token_expires_in", now),
    )


def _deadline(body: Mapping[str, Any], name: str, now: datetime) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlatformError(f"Shopify's token answer has a malformed {name}")
    return now + timedelta(seconds=value)


def needs_refresh(
    expires_at: datetime | None, now: datetime, *, margin: timedelta = REFRESH_MARGIN
) -> bool:
    """True when an expiring token is within ``margin`` of its expiry (or past it)."""
    return expires_at is not None and expires_at - margin <= now


def granted_all(granted: str, requested: str) -> bool:
    """True when every requested scope was granted (``write_x`` implies ``read_x``)."""
    have = {s.strip() for s in granted.split(",") if s.strip()}
    implied = {
        "read_" + s.removeprefix("write_") for s in have if s.startswith("write_")
    }
    want = {s.strip() for s in requested.split(",") if s.strip()}
    return want <= have | implied
