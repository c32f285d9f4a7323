"""Shopify app install against a local fake Shopify: OAuth, embedded entry, refresh, webhooks."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from adapters.shopify import install
from adapters.shopify.admin_api import API_VERSION
from connector.config import Settings
from connector.errors import PlatformError
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, OAuthState
from tests.fakes.server import LiveServer, serve
from tests.fakes.shopify import FakeShopify, make_session_token, sign_query

API_KEY = "test-client-id"
API_SECRET = "shpss_0123456789abcdef0123456789abcdef"  # Shopify secrets are 38 bytes
APP_URL = "https://connector.example"
SHOP = "demo-store.myshopify.com"
OTHER_SHOP = "other-store.myshopify.com"
TOPICS = {
    "ORDERS_CREATE",
    "ORDERS_PAID",
    "CHECKOUTS_CREATE",
    "CHECKOUTS_UPDATE",
    "APP_UNINSTALLED",
    "APP_SCOPES_UPDATE",
}
WEBHOOK_URI = f"{APP_URL}/webhooks/shopify"


@pytest.fixture
def fake() -> FakeShopify:
    return FakeShopify(
        api_key=API_KEY,
        api_secret=API_SECRET,
        redirect_prefixes=(f"{APP_URL}/shopify/callback",),
    )


@pytest.fixture
def shopify_server(fake: FakeShopify) -> Iterator[LiveServer]:
    with serve(fake.app()) as server:
        yield server


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], shopify_server: LiveServer
) -> Settings:
    return make_settings(
        app_url=APP_URL,
        shopify_api_key=API_KEY,
        shopify_api_secret=API_SECRET,
        shopify_admin_url_template=f"{shopify_server.url}/{{shop}}",
        http_timeout=5.0,
    )


def consent(client: Any, shop: str) -> dict[str, str]:
    """Start the install link and let the fake merchant approve; returns the callback's query."""
    rv = client.get(f"/shopify/install?shop={shop}")
    assert 302 == rv.status_code
    answer = requests.get(rv.headers["Location"], allow_redirects=False, timeout=5)
    assert 302 == answer.status_code
    location = urlsplit(answer.headers["Location"])
    assert (
        f"{APP_URL}/shopify/callback"
        == f"{location.scheme}://{location.netloc}{location.path}"
    )
    return dict(parse_qsl(location.query))


def call_back(client: Any, params: dict[str, str]) -> Any:
    return client.get(f"/shopify/callback?{urlencode(params)}")


def resign(params: dict[str, str], **changes: str) -> dict[str, str]:
    """The callback query with ``changes``, signed as Shopify would sign it."""
    rv = {k: v for k, v in params.items() if k != "hmac"} | changes
    rv["hmac"] = sign_query(rv, API_SECRET)
    return rv


def connection(runtime: Runtime, shop: str = SHOP) -> Connection | None:
    with runtime.sessions() as s:
        return queries.find_connection(s, "shopify", shop)


def database_bytes(runtime: Runtime) -> bytes:
    # The main file and its write-ahead log: a secret in either would be on disk.
    path = Path(make_url(runtime.settings.database_url).database or "")
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


# -- authorization-code grant ----------------------------------------------------------


def test_install_link_redirects_to_shopify_with_a_single_use_state(
    client: Any, runtime: Runtime, shopify_server: LiveServer
) -> None:
    """The install link sends the merchant to the shop's consent page with client id, scope, redirect and state."""
    rv = client.get(f"/shopify/install?shop={SHOP}")
    location = urlsplit(rv.headers["Location"])
    query = dict(parse_qsl(location.query))
    assert f"{shopify_server.url}/{SHOP}/admin/oauth/authorize" == (
        f"{location.scheme}://{location.netloc}{location.path}"
    )
    assert API_KEY == query["client_id"]
    assert "read_orders" == query["scope"]
    assert f"{APP_URL}/shopify/callback" == query["redirect_uri"]
    with runtime.sessions() as s:
        states = list(s.scalars(select(OAuthState)))
    assert [SHOP] == [st.store for st in states]
    assert query["state"] != states[0].nonce_hash  # only the hash is stored


@pytest.mark.parametrize(
    "shop",
    [
        pytest.param("evil.example", id="not-myshopify"),
        pytest.param("127.0.0.1", id="ip-address"),
        pytest.param("demo.myshopify.com.evil.example", id="suffix-trick"),
        pytest.param("demo.myshopify.com/admin", id="path"),
        pytest.param("", id="empty"),
    ],
)
def test_install_link_refuses_anything_but_a_shop_domain(
    client: Any, runtime: Runtime, shop: str
) -> None:
    """An install link for anything but NAME.myshopify.com is refused before any state is stored."""
    rv = client.get(f"/shopify/install?{urlencode({'shop': shop})}")
    assert 400 == rv.status_code
    with runtime.sessions() as s:
        assert [] == list(s.scalars(select(OAuthState)))


def test_full_oauth_install_stores_an_encrypted_expiring_token_and_six_topics(
    client: Any, runtime: Runtime, fake: FakeShopify, is_postgres: bool
) -> None:
    """The whole install ends on the shop's page with an encrypted token pair and six subscriptions."""
    rv = call_back(client, consent(client, SHOP))
    assert 200 == rv.status_code
    page = rv.get_data(as_text=True)
    # No Meta app on this deployment: the page says so plainly, with no dead "Connect Meta" link.
    assert "Paused: Meta is not connected" in page
    assert "/meta/connect" not in page
    assert "META_APP" not in page
    conn = connection(runtime)
    assert conn is not None
    assert conn.platform_token in fake.access_tokens
    assert conn.platform_refresh_token in fake.refresh_tokens
    assert conn.platform_token_expires_at is not None
    assert conn.platform_refresh_token_expires_at is not None
    assert "read_orders" == conn.scopes
    assert dict.fromkeys(TOPICS, WEBHOOK_URI) == fake.topics(SHOP)
    assert {API_VERSION} == fake.api_versions
    assert 1 == fake.grants["authorization_code"]
    if not is_postgres:
        raw = database_bytes(runtime)
        assert conn.platform_token.encode() not in raw
        assert (conn.platform_refresh_token or "").encode() not in raw


def test_forged_callback_with_a_bad_hmac_is_refused_and_changes_nothing(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A callback whose hmac does not match is refused; the state stays usable and no token is fetched."""
    params = consent(client, SHOP)
    forged = params | {"hmac": "0" * 64}
    assert 401 == call_back(client, forged).status_code
    assert connection(runtime) is None
    assert 0 == fake.grants["authorization_code"]
    assert 200 == call_back(client, params).status_code  # the genuine one still works


def test_replayed_callback_is_refused_and_changes_nothing(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A callback replayed after a successful install is refused and leaves the stored token alone."""
    params = consent(client, SHOP)
    assert 200 == call_back(client, params).status_code
    before = connection(runtime)
    assert before is not None
    assert 400 == call_back(client, params).status_code
    after = connection(runtime)
    assert after is not None
    assert before.platform_token == after.platform_token
    assert 1 == fake.grants["authorization_code"]


def test_callback_for_a_foreign_shop_is_refused_and_changes_nothing(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A state issued for one shop cannot complete another shop's install."""
    params = consent(client, SHOP)
    foreign = resign(params, shop=OTHER_SHOP)
    assert 400 == call_back(client, foreign).status_code
    assert connection(runtime, OTHER_SHOP) is None
    assert connection(runtime, SHOP) is None
    assert 0 == fake.grants["authorization_code"]
    assert 200 == call_back(client, params).status_code  # the state was not spent


def test_callback_with_a_stale_timestamp_is_refused(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A correctly signed callback from long ago is refused."""
    params = consent(client, SHOP)
    stale = resign(params, timestamp=str(int(time.time()) - 3600))
    assert 401 == call_back(client, stale).status_code
    assert connection(runtime) is None


def test_reinstall_registers_no_duplicate_subscriptions(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Installing again (link or embedded) finds the subscriptions in place and creates none."""
    assert 200 == call_back(client, consent(client, SHOP)).status_code
    assert 200 == call_back(client, consent(client, SHOP)).status_code
    with runtime.sessions.begin() as s:
        conn = queries.find_connection(s, "shopify", SHOP)
        assert conn is not None
        conn.platform_token_expires_at = (
            None  # a legacy token: the embedded load cycles it
        )
    token = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    assert (
        200 == client.get(f"/shopify/app?{urlencode({'id_token': token})}").status_code
    )
    assert 1 == fake.grants["token_exchange"]
    assert 6 == fake.mutations["webhookSubscriptionCreate"]
    assert dict.fromkeys(TOPICS, WEBHOOK_URI) == fake.topics(SHOP)


def test_reinstall_after_uninstall_reactivates_the_connection(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """An uninstalled shop that installs again is active with a fresh token."""
    call_back(client, consent(client, SHOP))
    with runtime.sessions.begin() as s:
        conn = queries.find_connection(s, "shopify", SHOP)
        assert conn is not None
        queries.mark_uninstalled(s, conn)
    assert 200 == call_back(client, consent(client, SHOP)).status_code
    conn = connection(runtime)
    assert conn is not None
    assert ConnectionStatus.ACTIVE == conn.status
    assert conn.platform_token in fake.access_tokens


# -- embedded entry ----------------------------------------------------------------------


def test_embedded_first_load_exchanges_the_session_token(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A valid session token becomes an encrypted expiring offline token and the framed shop page."""
    token = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    rv = client.get(
        f"/shopify/app?{urlencode({'embedded': '1', 'shop': SHOP, 'id_token': token})}"
    )
    assert 200 == rv.status_code
    assert (
        f"frame-ancestors https://{SHOP} https://admin.shopify.com;"
        in rv.headers["Content-Security-Policy"]
    )
    conn = connection(runtime)
    assert conn is not None
    assert conn.platform_token in fake.access_tokens
    assert conn.platform_refresh_token in fake.refresh_tokens
    assert dict.fromkeys(TOPICS, WEBHOOK_URI) == fake.topics(SHOP)
    # The next load with a usable token exchanges nothing.
    again = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    assert (
        200 == client.get(f"/shopify/app?{urlencode({'id_token': again})}").status_code
    )
    assert 1 == fake.grants["token_exchange"]


def _alg_none(shop: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": API_KEY,
        "exp": now + 60,
        "nbf": now,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


BAD_TOKENS: list[Any] = [
    pytest.param(
        lambda: make_session_token(
            secret=API_SECRET, api_key=API_KEY, shop=SHOP, now=time.time() - 3600
        ),
        id="expired",
    ),
    pytest.param(
        lambda: make_session_token(
            secret="shpss_ffffffffffffffffffffffffffffffff", api_key=API_KEY, shop=SHOP
        ),
        id="wrong-signature",
    ),
    pytest.param(lambda: _alg_none(SHOP), id="alg-none"),
    pytest.param(
        lambda: make_session_token(secret=API_SECRET, api_key="another-app", shop=SHOP),
        id="foreign-aud",
    ),
    pytest.param(
        lambda: make_session_token(
            secret=API_SECRET,
            api_key=API_KEY,
            shop=SHOP,
            dest="https://evil.example",
            iss="https://evil.example/admin",
        ),
        id="dest-not-myshopify",
    ),
    pytest.param(
        lambda: make_session_token(
            secret=API_SECRET,
            api_key=API_KEY,
            shop=SHOP,
            iss=f"https://{OTHER_SHOP}/admin",
        ),
        id="iss-other-shop",
    ),
    pytest.param(
        lambda: make_session_token(
            secret=API_SECRET, api_key=API_KEY, shop=SHOP, now=time.time() + 3600
        ),
        id="not-yet-valid",
    ),
]


@pytest.mark.parametrize("make_token", BAD_TOKENS)
def test_embedded_load_with_a_bad_session_token_is_refused(
    client: Any, runtime: Runtime, fake: FakeShopify, make_token: Callable[[], str]
) -> None:
    """Expired, forged, unsigned or foreign session tokens get 401 and no token exchange."""
    rv = client.get(f"/shopify/app?{urlencode({'id_token': make_token()})}")
    assert 401 == rv.status_code
    assert connection(runtime) is None
    assert 0 == fake.grants["token_exchange"]


def test_status_answers_a_bearer_session_token(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Later requests from the embedded page authenticate with Authorization: Bearer."""
    token = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    client.get(f"/shopify/app?{urlencode({'id_token': token})}")
    rv = client.get("/shopify/status", headers={"Authorization": f"Bearer {token}"})
    assert 200 == rv.status_code
    body = rv.get_json()
    assert SHOP == body["shop"]
    assert 6 == body["webhooks"]
    assert None is body["pixel_id"]
    assert 401 == client.get("/shopify/status").status_code


def test_shop_page_escapes_what_it_renders(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Stored values reach the page escaped."""
    token = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    client.get(f"/shopify/app?{urlencode({'id_token': token})}")
    with runtime.sessions.begin() as s:
        conn = queries.find_connection(s, "shopify", SHOP)
        assert conn is not None
        conn.pixel_id = "<script>alert(1)</script>"
        conn.meta_token = "meta-token"  # sending: the page names the pixel
    page = client.get(f"/shopify/app?{urlencode({'id_token': token})}").get_data(
        as_text=True
    )
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_app_url_without_proof_sends_the_merchant_through_oauth(
    client: Any, runtime: Runtime
) -> None:
    """Opening the app page with only a shop name shows nothing and starts the install link."""
    rv = client.get(f"/shopify/app?shop={SHOP}")
    assert 302 == rv.status_code
    assert f"/shopify/install?shop={SHOP}" == rv.headers["Location"]


# -- expiring tokens -----------------------------------------------------------------------


def _installed(client: Any, runtime: Runtime) -> Connection:
    token = make_session_token(secret=API_SECRET, api_key=API_KEY, shop=SHOP)
    assert (
        200 == client.get(f"/shopify/app?{urlencode({'id_token': token})}").status_code
    )
    conn = connection(runtime)
    assert conn is not None
    assert conn.platform_token_expires_at is not None
    return conn


def test_refresh_two_minutes_before_expiry_replaces_both_tokens(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Two minutes before expiry the pair is refreshed and stored together, with new expiries."""
    old = _installed(client, runtime)
    assert old.platform_token_expires_at is not None
    now = old.platform_token_expires_at - timedelta(minutes=2)
    token = install.fresh_access_token(runtime, old.id, now=now)
    new = connection(runtime)
    assert new is not None
    assert token == new.platform_token
    assert old.platform_token != new.platform_token
    assert old.platform_refresh_token != new.platform_refresh_token
    assert new.platform_refresh_token in fake.refresh_tokens
    assert now + timedelta(hours=1) == new.platform_token_expires_at
    assert now + timedelta(days=90) == new.platform_refresh_token_expires_at
    assert 1 == fake.grants["refresh_token"]


def test_a_token_far_from_expiry_is_not_refreshed(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Ten minutes before expiry the stored token is used as it is."""
    conn = _installed(client, runtime)
    assert conn.platform_token_expires_at is not None
    now = conn.platform_token_expires_at - timedelta(minutes=10)
    assert conn.platform_token == install.fresh_access_token(runtime, conn.id, now=now)
    assert 0 == fake.grants["refresh_token"]


def test_two_concurrent_refreshers_spend_the_refresh_token_once(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Two workers refreshing at once: one spends the refresh token, the other reads its result."""
    fake.strict_refresh = True  # a second spend would be refused with invalid_grant
    conn = _installed(client, runtime)
    assert conn.platform_token_expires_at is not None
    now = conn.platform_token_expires_at - timedelta(minutes=2)
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def refresh() -> None:
        barrier.wait()
        try:
            results.append(install.fresh_access_token(runtime, conn.id, now=now))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [] == errors
    assert 1 == fake.grants["refresh_token"]
    stored = connection(runtime)
    assert stored is not None
    assert [stored.platform_token] * 2 == results


def test_a_refused_refresh_token_forgets_the_pair_and_says_why(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """When Shopify refuses the refresh token, the dead pair is cleared and the reason recorded."""
    conn = _installed(client, runtime)
    assert conn.platform_token_expires_at is not None
    fake.refresh_tokens.clear()  # revoked on Shopify's side
    with pytest.raises(PlatformError, match="expired or revoked"):
        install.fresh_access_token(
            runtime, conn.id, now=conn.platform_token_expires_at - timedelta(minutes=1)
        )
    after = connection(runtime)
    assert after is not None
    assert after.platform_token is None
    assert after.platform_refresh_token is None
    assert "open the app in the Shopify admin" in (after.status_reason or "")


# -- reconciliation ------------------------------------------------------------------------


def test_reconciliation_recreates_a_subscription_shopify_removed(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """The daily job re-creates the one missing subscription and leaves the others alone."""
    _installed(client, runtime)
    fake.delete_topic(SHOP, "ORDERS_PAID")
    (job,) = install.periodic_jobs()
    assert timedelta(days=1).total_seconds() == job.interval_seconds
    job.run(runtime)
    assert dict.fromkeys(TOPICS, WEBHOOK_URI) == fake.topics(SHOP)
    assert 7 == fake.mutations["webhookSubscriptionCreate"]


def test_reconciliation_refreshes_a_token_near_expiry_and_skips_other_shops(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """The job refreshes an app-installed shop's token and leaves uninstalled or hand-added shops alone."""
    conn = _installed(client, runtime)
    assert conn.platform_token_expires_at is not None
    with runtime.sessions.begin() as s:
        queries.upsert_connection(
            s, "shopify", OTHER_SHOP, platform_token="shpat_by_hand"
        )
    report = install.reconcile(
        runtime, now=conn.platform_token_expires_at - timedelta(minutes=1)
    )
    assert [conn.id] == report.checked
    assert {} == report.failed
    assert 1 == fake.grants["refresh_token"]
    assert {} == fake.topics(OTHER_SHOP)


def test_reconciliation_reports_a_shop_it_cannot_reach(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """A shop whose token Shopify no longer accepts is reported, not fatal."""
    conn = _installed(client, runtime)
    fake.access_tokens.clear()
    report = install.reconcile(runtime, now=datetime.now(UTC))
    assert [] == report.checked
    assert [conn.id] == list(report.failed)


def _signed_query(shop: str, **extra: str) -> dict[str, str]:
    params = {"shop": shop, "timestamp": str(int(time.time())), **extra}
    params["hmac"] = sign_query(params, API_SECRET)
    return params


def test_signed_app_url_opens_the_page_of_an_installed_shop(
    client: Any, runtime: Runtime, fake: FakeShopify
) -> None:
    """Shopify opening the app URL (signed query) shows an installed shop its page."""
    _installed(client, runtime)
    fresh = client.application.test_client()  # no session cookie from the install
    rv = fresh.get(f"/shopify/app?{urlencode(_signed_query(SHOP))}")
    assert 200 == rv.status_code
    page = rv.get_data(as_text=True)
    assert "<h1>Overview</h1>" in page
    assert SHOP in page


def test_signed_app_url_of_an_unknown_shop_starts_the_install(
    client: Any, runtime: Runtime
) -> None:
    """Shopify opening the app URL for a shop not yet installed starts the install link."""
    rv = client.get(f"/shopify/app?{urlencode(_signed_query(OTHER_SHOP))}")
    assert 302 == rv.status_code
    assert f"/shopify/install?shop={OTHER_SHOP}" == rv.headers["Location"]


def test_install_link_with_a_forged_shopify_signature_is_refused(
    client: Any, runtime: Runtime
) -> None:
    """An install link claiming Shopify's signature must carry a valid one."""
    forged = _signed_query(SHOP) | {"hmac": "f" * 64}
    assert 401 == client.get(f"/shopify/install?{urlencode(forged)}").status_code
    assert (
        302
        == client.get(f"/shopify/install?{urlencode(_signed_query(SHOP))}").status_code
    )
    with runtime.sessions() as s:
        assert 1 == len(list(s.scalars(select(OAuthState))))


def test_a_slow_refresh_holds_no_lock_on_the_connection(
    client: Any, runtime: Runtime, fake: FakeShopify, is_postgres: bool
) -> None:
    """Shopify's token endpoint taking seconds never blocks a webhook writing for the shop."""
    if not is_postgres:
        pytest.skip("row locks are PostgreSQL's; SQLite locks the whole file")
    conn = _installed(client, runtime)
    assert conn.platform_token_expires_at is not None
    now = conn.platform_token_expires_at - timedelta(minutes=2)
    in_call = threading.Event()
    original = fake._refresh

    def slow_refresh(shop: str, token: str) -> Any:
        in_call.set()
        time.sleep(1.5)
        return original(shop, token)

    fake._refresh = slow_refresh  # type: ignore[method-assign]
    results: list[str] = []
    thread = threading.Thread(
        target=lambda: results.append(
            install.fresh_access_token(runtime, conn.id, now=now)
        )
    )
    thread.start()
    try:
        assert in_call.wait(10)
        with runtime.engine.begin() as db:
            # What a webhook's INSERT of an event needs: the connection row, not locked.
            locked = db.execute(
                text("SELECT id FROM connections WHERE id = :c FOR KEY SHARE NOWAIT"),
                {"c": conn.id},
            ).all()
            assert len(locked) == 1
            db.execute(
                text("SELECT id FROM connections WHERE id = :c FOR UPDATE NOWAIT"),
                {"c": conn.id},
            )
    finally:
        thread.join(timeout=30)
    stored = connection(runtime)
    assert stored is not None
    assert [stored.platform_token] == results
    assert 1 == fake.grants["refresh_token"]
