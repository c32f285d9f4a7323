"""Shopify's install rules as pure functions: query HMACs, session tokens, token answers, the app TOML."""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.shopify import oauth
from adapters.shopify.admin_api import (
    API_VERSION,
    WEBHOOK_TOPICS,
    topic_enum,
    topic_name,
)
from adapters.shopify.session_token import verify_session_token
from connector.errors import PlatformError, SignatureError

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SECRET = "shpss_0123456789abcdef0123456789abcdef"
OLD_SECRET = "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"
API_KEY = "client-id"
SHOP = "demo.myshopify.com"
ROOT = Path(__file__).resolve().parent.parent

# -- query HMAC ---------------------------------------------------------------------------

param_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20
)
params = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
        lambda k: k not in {"hmac", "signature", "timestamp"}
    ),
    param_text,
    max_size=6,
)


def signed(pairs: dict[str, str], secret: str = SECRET) -> list[tuple[str, str]]:
    rv = [*pairs.items(), ("timestamp", str(int(NOW.timestamp())))]
    return [*rv, ("hmac", oauth.sign_query(rv, secret))]


def test_query_message_matches_shopifys_documented_example() -> None:
    """Shopify's example query signs as its sorted ``k=v`` pairs without ``hmac``."""
    pairs = [
        ("code", "0907a61c0c8d55e99db179b68161bc00"),
        ("hmac", "700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf"),
        ("shop", "some-shop.myshopify.com"),
        ("state", "0.6784241404160823"),
        ("timestamp", "1337178173"),
    ]
    assert (
        "code=0907a61c0c8d55e99db179b68161bc00&shop=some-shop.myshopify.com"
        "&state=0.6784241404160823&timestamp=1337178173"
    ) == oauth.query_message(pairs)
    assert pairs[1][1] == oauth.sign_query(pairs, "hush")


def test_repeated_parameters_are_signed_as_a_list() -> None:
    """``ids[]=1&ids[]=2`` is signed as ``ids=["1", "2"]``."""
    assert 'ids=["1", "2"]&shop=x' == oauth.query_message(
        [("shop", "x"), ("ids[]", "1"), ("ids[]", "2")]
    )


def test_list_values_are_json_encoded_as_shopify_python_api_does() -> None:
    """A quote or a non-ASCII letter inside ``ids[]`` is escaped the way ``json.dumps`` does."""
    assert 'ids=["a\\"b", "\\u00e9"]' == oauth.query_message(
        [("ids[]", 'a"b'), ("ids[]", "é")]
    )


def _hex(message: str, secret: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def test_query_signed_as_shopify_api_js_does_verifies() -> None:
    """shopify-api-js signs the form-encoded query (``+`` for a space); its own test case."""
    stamp = str(int(NOW.timestamp()) - 60)
    message = (
        "code=some+code+goes+here&shop=the+shop+URL"
        f"&state=some+nonce+passed+from+auth&timestamp={stamp}"
    )
    pairs = [
        ("code", "some code goes here"),
        ("shop", "the shop URL"),
        ("state", "some nonce passed from auth"),
        ("timestamp", stamp),
        ("hmac", _hex(message, "my super secret key")),
    ]
    oauth.verify_query(pairs, ["my super secret key"], NOW)


def test_list_query_signed_as_shopify_api_js_does_verifies() -> None:
    """shopify-api-js writes a parsed list back as ``ids%5B%5D=1&ids%5B%5D=2``."""
    stamp = str(int(NOW.timestamp()))
    message = f"host=YWJj%3D&ids%5B%5D=1&ids%5B%5D=2&shop={SHOP}&timestamp={stamp}"
    pairs = [
        ("ids[]", "1"),
        ("ids[]", "2"),
        ("shop", SHOP),
        ("host", "YWJj="),
        ("timestamp", stamp),
        ("hmac", _hex(message, SECRET)),
    ]
    oauth.verify_query(pairs, [SECRET], NOW)


def test_query_signed_as_shopify_python_api_does_verifies() -> None:
    """shopify_python_api sorts the escaped ``k=v`` strings: ``a-b=..`` before ``a=..``."""
    stamp = str(int(NOW.timestamp()))
    message = f"a-b=1&a=x%25y&shop={SHOP}&timestamp={stamp}"
    pairs = [
        ("a", "x%y"),
        ("a-b", "1"),
        ("shop", SHOP),
        ("timestamp", stamp),
        ("hmac", _hex(message, SECRET)),
    ]
    oauth.verify_query(pairs, [SECRET], NOW)


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param([("shop", SHOP), ("timestamp", "1"), ("hmac", "é")], id="hmac"),
        pytest.param([("shop", SHOP), ("timestamp", "²"), ("hmac", "ab")], id="stamp"),
    ],
)
def test_non_ascii_query_values_are_refused_not_an_error(
    pairs: list[tuple[str, str]],
) -> None:
    """A non-ASCII hmac or timestamp is a SignatureError, never a TypeError or ValueError."""
    with pytest.raises(SignatureError):
        oauth.verify_query(pairs, [SECRET], NOW)


@given(params)
def test_signed_query_verifies(pairs: dict[str, str]) -> None:
    """Whatever Shopify signs with the secret verifies."""
    oauth.verify_query(signed(pairs), [SECRET], NOW)


@given(params)
def test_query_signed_with_the_previous_secret_verifies(pairs: dict[str, str]) -> None:
    """During a secret rotation, queries signed with the previous secret still verify."""
    oauth.verify_query(signed(pairs, OLD_SECRET), [SECRET, OLD_SECRET], NOW)


@given(params, st.text(min_size=1, max_size=10))
def test_tampered_query_is_refused(pairs: dict[str, str], extra: str) -> None:
    """Adding or changing any parameter after signing breaks the signature."""
    tampered = [("zz_added", extra), *signed(pairs)]
    with pytest.raises(SignatureError):
        oauth.verify_query(tampered, [SECRET], NOW)


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        pytest.param(0, True, id="now"),
        pytest.param(89, True, id="89s-old"),
        pytest.param(-89, True, id="89s-ahead"),
        pytest.param(91, False, id="91s-old"),
        pytest.param(-91, False, id="91s-ahead"),
    ],
)
def test_query_timestamp_must_be_within_90_seconds(offset: int, ok: bool) -> None:
    """A signed query is fresh within Shopify's 90-second tolerance and stale beyond it."""
    pairs = signed({"shop": SHOP})
    now = NOW + timedelta(seconds=offset)
    if ok:
        oauth.verify_query(pairs, [SECRET], now)
    else:
        with pytest.raises(SignatureError, match="too old"):
            oauth.verify_query(pairs, [SECRET], now)


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param([("shop", SHOP), ("timestamp", "1")], id="no-hmac"),
        pytest.param([("shop", SHOP), ("hmac", "")], id="empty-hmac"),
        pytest.param([("hmac", "a"), ("hmac", "b")], id="two-hmacs"),
    ],
)
def test_query_without_a_single_hmac_is_refused(pairs: list[tuple[str, str]]) -> None:
    """A query must carry exactly one hmac."""
    with pytest.raises(SignatureError, match="no Shopify hmac"):
        oauth.verify_query(pairs, [SECRET], NOW)


def test_authorize_url_asks_for_an_offline_token() -> None:
    """The consent URL names client, scope, redirect and state, and no per-user grant option."""
    url = oauth.authorize_url(
        "https://demo.myshopify.com",
        client_id=API_KEY,
        scopes="read_orders",
        redirect_uri="https://app.example/shopify/callback",
        state="s t",
    )
    assert (
        "https://demo.myshopify.com/admin/oauth/authorize?client_id=client-id&scope=read_orders"
        "&redirect_uri=https%3A%2F%2Fapp.example%2Fshopify%2Fcallback&state=s+t"
    ) == url


# -- session tokens ------------------------------------------------------------------------


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(NOW.timestamp())
    rv: dict[str, Any] = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": API_KEY,
        "sub": "42",
        "exp": now + 60,
        "nbf": now,
        "iat": now,
        "jti": "abc",
        "sid": "xyz",
    }
    rv.update(overrides)
    return {k: v for k, v in rv.items() if v is not None}


def token(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def test_valid_session_token_names_its_shop() -> None:
    """A token signed with the client secret for this app names the shop in dest."""
    st_ = verify_session_token(token(), api_key=API_KEY, secrets=[SECRET], now=NOW)
    assert SHOP == st_.shop
    assert "42" == st_.user_id


def test_session_token_signed_with_the_previous_secret_verifies() -> None:
    """During a secret rotation, tokens signed with the previous secret still verify."""
    st_ = verify_session_token(
        token(OLD_SECRET), api_key=API_KEY, secrets=[SECRET, OLD_SECRET], now=NOW
    )
    assert SHOP == st_.shop


NOW_S = int(NOW.timestamp())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(token(exp=NOW_S - 11), "expired", id="expired-beyond-leeway"),
        pytest.param(token(nbf=NOW_S + 11), "not valid yet", id="nbf-beyond-leeway"),
        pytest.param(token(OLD_SECRET), "signature", id="wrong-secret"),
        pytest.param(token(aud="other-app"), "another app", id="foreign-aud"),
        pytest.param(token(aud=None), "aud", id="no-aud"),
        pytest.param(token(dest=None), "dest", id="no-dest"),
        pytest.param(token(exp=None), "exp", id="no-exp"),
        pytest.param(token(exp="soon"), "timestamp", id="exp-not-a-number"),
        pytest.param(
            token(dest="https://evil.example", iss="https://evil.example/admin"),
            "myshopify",
            id="dest-not-myshopify",
        ),
        pytest.param(
            token(dest=f"http://{SHOP}", iss=f"http://{SHOP}/admin"),
            "myshopify",
            id="dest-not-https",
        ),
        pytest.param(
            token(iss="https://other.myshopify.com/admin"),
            "different shops",
            id="iss-mismatch",
        ),
        pytest.param(
            jwt.encode(claims(), None, algorithm="none"), "not valid", id="alg-none"
        ),
        pytest.param(
            jwt.encode(claims(), SECRET + SECRET, algorithm="HS512"),
            "not valid",
            id="alg-hs512",
        ),
        pytest.param("not.a.jwt", "not valid", id="garbage"),
        pytest.param("", "no session token", id="empty"),
    ],
)
def test_bad_session_tokens_are_refused(raw: str, message: str) -> None:
    """Every way a session token can be wrong raises SignatureError saying which."""
    with pytest.raises(SignatureError, match=message):
        verify_session_token(raw, api_key=API_KEY, secrets=[SECRET], now=NOW)


def test_session_token_leeway_is_ten_seconds() -> None:
    """A token expired by less than ten seconds is still accepted (clock skew)."""
    raw = token(exp=NOW_S - 9)
    assert (
        SHOP
        == verify_session_token(raw, api_key=API_KEY, secrets=[SECRET], now=NOW).shop
    )


# -- token answers --------------------------------------------------------------------------


def test_expiring_token_answer_becomes_absolute_expiries() -> None:
    """expires_in and refresh_token_expires_in become times counted from ``now``."""
    grant = oauth.parse_token_answer(
        {
            "access_token": "shpat_x",
            "scope": "read_orders",
            "expires_in": 3600,
            "refresh_token": "shprt_y",
            "refresh_token_expires_in": 7776000,
        },
        NOW,
    )
    assert NOW + timedelta(hours=1) == grant.expires_at
    assert NOW + timedelta(days=90) == grant.refresh_token_expires_at
    assert "shprt_y" == grant.refresh_token


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"access_token": ""}, id="empty-token"),
        pytest.param(
            {"access_token": "a", "scope": "s", "expires_in": 3600},
            id="expiring-without-refresh",
        ),
        pytest.param(
            {"access_token": "a", "expires_in": "3600", "refresh_token": "r"},
            id="expires-in-string",
        ),
        pytest.param({"access_token": "a", "scope": ["read_orders"]}, id="scope-list"),
    ],
)
def test_malformed_token_answers_are_refused(body: dict[str, Any]) -> None:
    """A token answer missing what Shopify documents raises PlatformError."""
    with pytest.raises(PlatformError):
        oauth.parse_token_answer(body, NOW)


@pytest.mark.parametrize(
    ("expires_in", "refresh"),
    [
        pytest.param(None, False, id="non-expiring"),
        pytest.param(timedelta(minutes=10), False, id="10-min-left"),
        pytest.param(timedelta(minutes=5, seconds=1), False, id="just-outside-margin"),
        pytest.param(timedelta(minutes=5), True, id="at-margin"),
        pytest.param(timedelta(minutes=2), True, id="2-min-left"),
        pytest.param(timedelta(minutes=-1), True, id="expired"),
    ],
)
def test_refresh_happens_within_five_minutes_of_expiry(
    expires_in: timedelta | None, refresh: bool
) -> None:
    """Expiring tokens are refreshed from five minutes before expiry; others never."""
    expires_at = None if expires_in is None else NOW + expires_in
    assert refresh == oauth.needs_refresh(expires_at, NOW)


@pytest.mark.parametrize(
    ("granted", "ok"),
    [
        pytest.param("read_orders", True, id="exact"),
        pytest.param("write_orders", True, id="write-implies-read"),
        pytest.param("read_orders,read_products", True, id="more"),
        pytest.param("read_products", False, id="missing"),
    ],
)
def test_granted_scopes_cover_the_request(granted: str, ok: bool) -> None:
    """read_orders is covered by read_orders or write_orders."""
    assert ok == oauth.granted_all(granted, "read_orders")


# -- webhook topics and the app TOML ----------------------------------------------------------


@pytest.mark.parametrize("topic", WEBHOOK_TOPICS)
def test_topic_names_round_trip_through_the_graphql_enum(topic: str) -> None:
    """orders/create <-> ORDERS_CREATE for every registered topic."""
    assert topic == topic_name(topic_enum(topic))


def test_app_toml_declares_only_the_compliance_topics() -> None:
    """shopify.app.toml declares the three compliance topics and none registered by API."""
    config = tomllib.loads((ROOT / "shopify.app.toml").read_text())
    subscriptions = config["webhooks"]["subscriptions"]
    declared = {t for sub in subscriptions for t in sub.get("topics", [])}
    compliance = {t for sub in subscriptions for t in sub.get("compliance_topics", [])}
    assert set() == declared & set(WEBHOOK_TOPICS)
    assert set() == declared
    assert {"customers/data_request", "customers/redact", "shop/redact"} == compliance
    assert API_VERSION == config["webhooks"]["api_version"]
    assert "read_orders" == config["access_scopes"]["scopes"]
    assert all(sub["uri"].endswith("/webhooks/shopify") for sub in subscriptions)
