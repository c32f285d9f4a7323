"""Shopify's OAuth rules: query HMACs, the authorize URL, token answers, refresh timing (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
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
    """The string Shopify signs: every parameter but ``hmac``/``signature``, sorted, ``k=v&...``.

    Values go in as they are, with only the separators escaped; repeated parameters
    (``ids[]=1&ids[]=2``, an admin bulk-action link) are signed as ``ids=["1", "2"]``.
    This is Shopify's documented rule and ``shopify_python_api``'s implementation.
    """
    grouped = _grouped(pairs)
    parts = []
    for key in sorted(grouped):
        values = grouped[key]
        if key.endswith("[]") or len(values) > 1:
            name = _escape(key.removesuffix("[]"), key=True)
            joined = json.dumps(values)  # '["1", "2"]': JSON, comma and space
            parts.append(f"{name}={_escape(joined)}")
        else:
            parts.append(f"{_escape(key, key=True)}={_escape(values[0])}")
    return "&".join(parts)


def query_messages(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Every form of the signed string Shopify's own libraries accept, the documented one first.

    Besides :func:`query_message`, ``shopify_python_api`` sorts the escaped ``k=v`` strings
    rather than the keys (they differ only when one key is a prefix of another), and
    ``shopify-api-js`` and ``shopify-api-ruby`` sign the form-encoded query
    (``URLSearchParams`` / ``URI.encode_www_form``: ``%XX`` escapes, ``+`` for a space,
    ``ids%5B%5D=1&ids%5B%5D=2``). For the plain values of an OAuth redirect all three agree.
    """
    documented = query_message(pairs)
    by_pair = "&".join(sorted(documented.split("&"))) if documented else ""
    grouped = _grouped(pairs)
    encoded: list[str] = []
    # The JavaScript library sorts the parsed keys (``ids``), then writes arrays as ``ids[]``.
    for key in sorted(grouped, key=lambda k: k.removesuffix("[]")):
        values = grouped[key]
        array = key.endswith("[]") or len(values) > 1
        name = _form_encode(f"{key.removesuffix('[]')}[]" if array else key)
        encoded.extend(f"{name}={_form_encode(value)}" for value in values)
    rv: list[str] = []
    for message in (documented, by_pair, "&".join(encoded)):
        if message not in rv:
            rv.append(message)
    return rv


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key in {"hmac", "signature"}:
            continue
        grouped.setdefault(key, []).append(value)
    return grouped


def _escape(text: str, *, key: bool = False) -> str:
    # Shopify escapes the separators so a value cannot forge another parameter.
    text = text.replace("%", "%25").replace("&", "%26")
    return text.replace("=", "%3D") if key else text


#: what application/x-www-form-urlencoded leaves as it is (the WHATWG URL standard)
_FORM_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._"
)


def _form_encode(text: str) -> str:
    out = []
    for char in text:
        if char in _FORM_SAFE:
            out.append(char)
        elif char == " ":
            out.append("+")
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


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
    if not expected.isascii():
        raise SignatureError("the request's Shopify hmac does not match")
    messages = [m.encode("utf-8", "surrogatepass") for m in query_messages(pairs)]
    matched = False
    for secret in secrets:
        if not secret:
            continue
        for message in messages:
            digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
            # compare_digest: == leaks how many leading characters matched
            matched |= hmac.compare_digest(digest, expected)
    if not matched:
        raise SignatureError("the request's Shopify hmac does not match")
    stamps = [v for k, v in pairs if k == "timestamp"]
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit():
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
