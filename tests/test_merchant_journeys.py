"""Merchant journeys over real HTTP: Shopify install or WooCommerce connect, then Meta, hop by hop."""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from connector.links import sign_admin_link
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, OAuthState
from connector.web import create_app
from tests.fakes.graph import FakeGraph
from tests.fakes.graph import make_app as make_graph_app
from tests.fakes.meta import FakeMeta, FakeUser
from tests.fakes.meta import blueprint as meta_blueprint
from tests.fakes.server import serve
from tests.fakes.shopify import FakeShopify
from tests.fakes.woocommerce import FakeWooCommerce
from tests.sockets import watch_connects

API_KEY = "journey-client-id"
API_SECRET = "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"
SHOP = "journey-store.myshopify.com"
OTHER_SHOP = "second-store.myshopify.com"
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) journey-test",
}
APPROVE = re.compile(r"id='approve' href='([^']+)'")
HREF = re.compile(r"""href=["']([^"']+)["']""")


@dataclass
class World:
    """The connector and the fakes of Shopify, WooCommerce and Meta, each on its own port."""

    runtime: Runtime
    app_url: str
    shopify: FakeShopify
    shopify_url: str
    woo: FakeWooCommerce
    woo_url: str
    meta: FakeMeta
    graph: FakeGraph
    meta_url: str
    seen_urls: list[str] = field(default_factory=list)
    seen_pages: list[str] = field(default_factory=list)


@dataclass
class Browser:
    """The merchant's browser: cookies kept, every redirect followed by hand and recorded."""

    world: World
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers.update(BROWSER_HEADERS)

    def get(self, url: str, **kw: Any) -> requests.Response:
        """One hop, without following redirects."""
        self.world.seen_urls.append(url)
        rv = self.session.get(url, allow_redirects=False, timeout=30, **kw)
        self.world.seen_pages.append(rv.text)
        if "Location" in rv.headers:
            self.world.seen_urls.append(urljoin(url, rv.headers["Location"]))
        return rv

    def post(self, url: str, data: dict[str, str]) -> requests.Response:
        """A form submission, without following redirects."""
        self.world.seen_urls.append(url)
        rv = self.session.post(url, data=data, allow_redirects=False, timeout=30)
        self.world.seen_pages.append(rv.text)
        return rv

    def follow(self, url: str, *, hops: int = 8) -> tuple[requests.Response, list[str]]:
        """Follow redirects by hand; returns the last answer and every URL visited."""
        visited = [url]
        rv = self.get(url)
        while rv.is_redirect and hops:
            url = urljoin(url, rv.headers["Location"])
            visited.append(url)
            rv = self.get(url)
            hops -= 1
        return rv, visited


@pytest.fixture
def world(runtime: Runtime) -> Iterator[World]:
    """Every party on loopback; the connector's APP_URL is its own server's address."""
    holder: dict[str, Any] = {}

    def connector_app(environ: Any, start_response: Any) -> Any:
        return holder["app"](environ, start_response)

    shopify = FakeShopify(api_key=API_KEY, api_secret=API_SECRET)
    woo = FakeWooCommerce(require_https_callback=False)
    meta = FakeMeta(user=one_pixel_user())
    graph = FakeGraph(tokens=set(), app_secret=meta.app_secret)
    meta.graph_tokens = graph.tokens
    meta_app = make_graph_app(graph)
    meta_app.register_blueprint(meta_blueprint(meta))
    with (
        serve(connector_app) as app_server,
        serve(shopify.app()) as shopify_server,
        serve(woo.app) as woo_server,
        serve(meta_app) as meta_server,
    ):
        shopify.redirect_prefixes = (f"{app_server.url}/shopify/callback",)
        settings = replace(
            runtime.settings,
            app_url=app_server.url,
            shopify_api_key=API_KEY,
            shopify_api_secret=API_SECRET,
            shopify_admin_url_template=f"{shopify_server.url}/{{shop}}",
            meta_app_id=meta.app_id,
            meta_app_secret=meta.app_secret,
            meta_graph_url=meta_server.url,
            meta_dialog_url=meta_server.url,
            woocommerce_allow_insecure=True,
            http_timeout=10.0,
        )
        rt = replace(runtime, settings=settings)
        holder["app"] = create_app(runtime=rt)
        yield World(
            runtime=rt,
            app_url=app_server.url,
            shopify=shopify,
            shopify_url=shopify_server.url,
            woo=woo,
            woo_url=woo_server.url,
            meta=meta,
            graph=graph,
            meta_url=meta_server.url,
        )


def one_pixel_user() -> FakeUser:
    """A Meta account reaching exactly one pixel."""
    return FakeUser(
        businesses=[
            {
                "id": "5550001",
                "name": "Acme",
                "pixels": [{"id": "111222333444", "name": "Acme web"}],
            }
        ]
    )


def several_pixels_user() -> FakeUser:
    """A Meta account reaching three pixels, one named with markup."""
    return FakeUser(
        businesses=[
            {
                "id": "5550001",
                "name": "Acme",
                "pixels": [
                    {"id": "111222333444", "name": "<b>Acme & Co</b>"},
                    {"id": "999888777666", "name": "Acme outlet"},
                ],
            }
        ],
        ad_accounts=[
            {
                "id": "act_4242",
                "name": "Acme ads",
                "pixels": [{"id": "123123123123", "name": "Agency pixel"}],
            }
        ],
    )


def load(world: World, connection_id: str) -> Connection:
    """The connection as stored now."""
    with world.runtime.sessions() as db:
        return queries.get_connection(db, connection_id)


def find(world: World, platform: str, store: str) -> Connection | None:
    """The store's connection, if any."""
    with world.runtime.sessions() as db:
        return queries.find_connection(db, platform, store)


def unused_states(world: World) -> int:
    """How many issued states are still unspent."""
    with world.runtime.sessions() as db:
        return int(
            db.scalar(
                select(func.count())
                .select_from(OAuthState)
                .where(OAuthState.used_at.is_(None))
            )
            or 0
        )


def snapshot(world: World, connection_id: str) -> tuple[Any, ...]:
    """What a refusal must leave unchanged on a connection."""
    conn = load(world, connection_id)
    return (
        conn.status,
        conn.platform_token,
        conn.platform_refresh_token,
        conn.meta_token,
        conn.pixel_id,
        conn.meta_scopes,
    )


def assert_refused(rv: requests.Response, status: int, says: str = "") -> None:
    """A refusal is a readable HTML page with a 4xx, never a 500."""
    assert status == rv.status_code, rv.text
    assert rv.headers["Content-Type"].startswith("text/html"), rv.headers
    assert html.unescape(rv.text).count(says) >= 1, rv.text


def install_shopify(
    browser: Browser, shop: str = SHOP
) -> tuple[requests.Response, str]:
    """The install link through Shopify's consent to the shop page; returns it and the callback URL."""
    world = browser.world
    page, visited = browser.follow(f"{world.app_url}/shopify/install?shop={shop}")
    callback = visited[-1]
    # install -> consent at the shop -> our callback, nothing else
    assert [
        f"{world.app_url}/shopify/install",
        f"{world.shopify_url}/{shop}/admin/oauth/authorize",
        f"{world.app_url}/shopify/callback",
    ] == [u.split("?", 1)[0] for u in visited]
    assert 200 == page.status_code, page.text
    return page, callback


def connect_link(page: requests.Response, base: str) -> str:
    """The page's "Connect Meta" (or "Reconnect Meta") link, as the browser resolves it."""
    for href in HREF.findall(page.text):
        url = urljoin(base, html.unescape(href))
        if urlsplit(url).path == "/meta/connect":
            return url
    raise AssertionError(f"no Connect Meta link in {page.text}")


def shop_link(browser: Browser, shop: str = SHOP) -> str:
    """A fresh Connect Meta link from the shop page reopened (each link works once)."""
    page = browser.get(f"{browser.world.app_url}/shopify/app?shop={shop}")
    assert 200 == page.status_code, page.text
    return connect_link(page, page.url)


def to_meta_callback(browser: Browser, connect_url: str) -> str:
    """Click Connect Meta and pass Facebook's dialog; returns our callback URL Meta sent back."""
    world = browser.world
    rv = browser.get(connect_url)
    assert 302 == rv.status_code, rv.text
    dialog = rv.headers["Location"]
    assert dialog.startswith(f"{world.meta_url}/"), dialog
    rv = browser.get(dialog)
    assert 302 == rv.status_code, rv.text
    back = rv.headers["Location"].split("#", 1)[0]
    assert back.startswith(f"{world.app_url}/meta/callback?"), back
    return back


def assert_no_secret_leaked(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """No platform or Meta token in a URL the browser saw, in a page, or in the connector's log."""
    secrets_ = [
        *world.shopify.access_tokens,
        *world.shopify.refresh_tokens,
        *world.meta.tokens,
        world.meta.app_secret,
        API_SECRET,
        *(k.consumer_secret for k in world.woo.keys.values()),
        # OAuth 1.0a over plain http puts the key in the query urllib3 logs: redacted there too
        *(k.consumer_key for k in world.woo.keys.values()),
    ]
    # werkzeug's lines are the servers' access logs (the fakes' own ones carry the secrets
    # Graph's documented GETs put in the query): the connector's logs are the rest.
    lines = [r.getMessage() for r in caplog.records if r.name != "werkzeug"]
    assert secrets_
    for secret in secrets_:
        for url in world.seen_urls:
            assert secret not in url, url
        for page in world.seen_pages:
            assert secret not in page
        for line in lines:
            assert secret not in line, line


# -- Shopify, then Meta --------------------------------------------------------------------


def test_shopify_install_then_meta_with_a_test_event_and_no_secret_in_sight(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Install link, consent, shop page, Connect Meta, dialog, done page with Meta's test-event answer."""
    caplog.set_level(logging.DEBUG)
    browser = Browser(world)
    page, shop_callback = install_shopify(browser)
    csp = page.headers["Content-Security-Policy"]
    assert f"frame-ancestors https://{SHOP} https://admin.shopify.com;" in csp
    assert "Connect Meta" in page.text
    conn = find(world, "shopify", SHOP)
    assert conn is not None
    assert ConnectionStatus.ACTIVE == conn.status
    # Shopify takes only https webhook addresses: on a loopback http APP_URL none registers,
    # and the page says so instead of failing the install.
    assert "subscriptions are being set up" in page.text
    with world.runtime.sessions.begin() as db:
        queries.get_connection(db, conn.id).test_event_code = "TEST777"

    done = browser.get(to_meta_callback(browser, connect_link(page, page.url)))
    assert 200 == done.status_code, done.text
    assert "Meta is connected" in done.text
    assert "Meta received 1 test event" in done.text
    [received] = world.graph.received
    assert ("111222333444", "TEST777") == (received.pixel_id, received.test_event_code)
    stored = load(world, conn.id)
    assert "111222333444" == stored.pixel_id
    assert world.meta.long_lived_tokens() == [stored.meta_token]

    # The merchant comes back later: the embedded page's unsigned reopen shows the pixel.
    again = browser.get(f"{world.app_url}/shopify/app?shop={SHOP}")
    assert 200 == again.status_code, again.text
    assert "111222333444" in again.text
    assert "Reconnect Meta" in again.text
    assert_no_secret_leaked(world, caplog)

    # Reloading the Shopify callback: refused, nothing fetched, the token pair stays.
    before, grants = snapshot(world, conn.id), dict(world.shopify.grants)
    assert_refused(browser.get(shop_callback), 400)
    assert before == snapshot(world, conn.id)
    assert grants == dict(world.shopify.grants)


def test_meta_callback_reload_back_button_and_second_tab_are_refused_without_change(
    world: World,
) -> None:
    """A reloaded callback, an earlier state from the back button and a raced tab each get a 400 page."""
    browser = Browser(world)
    page, _ = install_shopify(browser)
    conn_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    earlier = to_meta_callback(browser, connect_link(page, page.url))  # tab 1
    later = to_meta_callback(browser, shop_link(browser))  # tab 2, started after it
    assert 200 == browser.get(later).status_code
    after_connect = snapshot(world, conn_id)
    exchanges = world.meta.count("/oauth/access_token")
    pending = unused_states(world)
    for url in (later, earlier):
        assert_refused(browser.get(url), 400, "Connect Meta")
        assert after_connect == snapshot(world, conn_id)
        assert exchanges == world.meta.count("/oauth/access_token")
        assert pending == unused_states(world)


def test_admin_links_of_another_store_or_past_their_hour_are_refused(
    world: World,
) -> None:
    """A second store's admin link with the first store's id, or an expired link: 401 and no state."""
    first = Browser(world)
    install_shopify(first, SHOP)
    second = Browser(world)
    other_page, _ = install_shopify(second, OTHER_SHOP)
    first_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    other_link = urlsplit(connect_link(other_page, other_page.url))
    other_token = dict(parse_qsl(other_link.query))["token"]
    secret = world.runtime.settings.secret_key
    expired = sign_admin_link(secret, first_id, datetime.now(UTC) - timedelta(hours=2))
    states = unused_states(world)
    for token in (other_token, expired):
        rv = second.get(
            f"{world.app_url}/meta/connect",
            params={"connection": first_id, "token": token},
        )
        assert_refused(rv, 401, "open the connector from your store's admin again")
        assert states == unused_states(world)
    assert load(world, first_id).meta_token is None


def test_denied_dialog_then_no_pixel_then_several_pixels(world: World) -> None:
    """Cancel at Facebook, then an account without pixels, then a choice among three (escaped) pixels."""
    browser = Browser(world)
    page, _ = install_shopify(browser)
    conn_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    link = connect_link(page, page.url)
    untouched = snapshot(world, conn_id)

    world.meta.user.denies = True
    denied = browser.get(to_meta_callback(browser, link))
    assert 200 == denied.status_code
    assert "nothing was changed" in html.unescape(denied.text)
    assert 0 == world.meta.count("/oauth/access_token")
    assert untouched == snapshot(world, conn_id)

    world.meta.user = FakeUser(businesses=[{"id": "1", "name": "Empty", "pixels": []}])
    assert_refused(
        browser.get(to_meta_callback(browser, shop_link(browser))),
        404,
        "Events Manager",
    )
    assert untouched == snapshot(world, conn_id)

    world.meta.user = several_pixels_user()
    picker = browser.get(to_meta_callback(browser, shop_link(browser)))
    assert 200 == picker.status_code, picker.text
    assert "<b>Acme" not in picker.text
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt;" in picker.text
    for pixel in ("111222333444", "999888777666", "123123123123"):
        assert 1 == picker.text.count(f'value="{pixel}"')
    assert untouched == snapshot(world, conn_id)
    state = picker.text.split('name="state" value="', 1)[1].split('"', 1)[0]
    done = browser.post(
        f"{world.app_url}/meta/pixel", {"state": state, "pixel_id": "123123123123"}
    )
    assert 200 == done.status_code, done.text
    assert "123123123123" == load(world, conn_id).pixel_id
    # the same choice submitted again (a reload of the form post) changes nothing
    chosen = snapshot(world, conn_id)
    again = browser.post(
        f"{world.app_url}/meta/pixel", {"state": state, "pixel_id": "999888777666"}
    )
    assert 400 <= again.status_code < 500
    assert again.headers["Content-Type"].startswith("text/html")
    assert chosen == snapshot(world, conn_id)


def test_reconnect_after_needs_reconnect_through_the_shop_page(world: World) -> None:
    """A connection flagged needs_reconnect shows why, and the page's link makes it active again."""
    browser = Browser(world)
    page, _ = install_shopify(browser)
    conn_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    assert (
        200
        == browser.get(
            to_meta_callback(browser, connect_link(page, page.url))
        ).status_code
    )
    [first_token] = world.meta.long_lived_tokens()
    world.meta.revoke(first_token)
    with world.runtime.sessions.begin() as db:
        conn = queries.get_connection(db, conn_id)
        conn.status = ConnectionStatus.NEEDS_RECONNECT
        conn.status_reason = "meta token invalid (code 190)"
    page = browser.get(f"{world.app_url}/shopify/app?shop={SHOP}")
    assert 200 == page.status_code
    assert "Needs Meta reconnected" in page.text
    assert "Reconnect Meta" in page.text
    done = browser.get(to_meta_callback(browser, connect_link(page, page.url)))
    assert 200 == done.status_code, done.text
    conn = load(world, conn_id)
    assert (ConnectionStatus.ACTIVE, None) == (conn.status, conn.status_reason)
    assert conn.meta_token != first_token
    assert conn.meta_token in world.meta.long_lived_tokens()


def test_uninstall_refuses_meta_and_a_reinstall_restores_the_shop(world: World) -> None:
    """After an uninstall the old link gets 409; reinstalling makes it active with no duplicate topics."""
    browser = Browser(world)
    page, _ = install_shopify(browser)
    conn_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    link = connect_link(page, page.url)
    with world.runtime.sessions.begin() as db:
        queries.mark_uninstalled(db, queries.get_connection(db, conn_id))
    states = unused_states(world)
    assert_refused(browser.get(link), 409, "Install the app on your store again")
    assert states == unused_states(world)
    # the embedded page of a removed app does not show the old connection: back to consent
    rv = browser.get(f"{world.app_url}/shopify/app?shop={SHOP}")
    assert 302 == rv.status_code
    assert urlsplit(rv.headers["Location"]).path == "/shopify/install"

    page, _ = install_shopify(browser)
    assert conn_id == find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    assert ConnectionStatus.ACTIVE == load(world, conn_id).status
    done = browser.get(to_meta_callback(browser, connect_link(page, page.url)))
    assert 200 == done.status_code, done.text


def test_a_forged_shop_callback_and_a_foreign_shop_change_nothing(world: World) -> None:
    """A callback whose shop or hmac was changed is a 4xx page; the genuine one still installs."""
    browser = Browser(world)
    rv = browser.get(f"{world.app_url}/shopify/install?shop={SHOP}")
    consent = browser.get(rv.headers["Location"])
    callback = consent.headers["Location"]
    params = dict(parse_qsl(urlsplit(callback).query))
    base = callback.split("?", 1)[0]
    foreign = browser.get(base, params=params | {"shop": OTHER_SHOP})
    assert 400 <= foreign.status_code < 500
    assert foreign.headers["Content-Type"].startswith("text/html")
    bad_hmac = browser.get(base, params=params | {"hmac": "0" * 64})
    assert_refused(bad_hmac, 401)
    assert find(world, "shopify", SHOP) is None
    assert find(world, "shopify", OTHER_SHOP) is None
    assert 0 == world.shopify.grants["authorization_code"]
    assert 200 == browser.get(callback).status_code


# -- WooCommerce, then Meta ----------------------------------------------------------------


def wait_for_webhooks(
    world: World, connection_id: str, *, pending_ok: bool = False
) -> dict[str, Any]:
    """The store's webhooks are set up after the keys callback's answer: wait until settled."""
    settled = ("ready", "failed", "pending") if pending_ok else ("ready", "failed")
    deadline = time.monotonic() + 30
    while True:
        hooks = dict((load(world, connection_id).settings or {}).get("webhooks") or {})
        if hooks.get("status") in settled and "lease_until" not in hooks:
            return hooks
        assert time.monotonic() < deadline, hooks
        time.sleep(0.05)


def wait_for_proofs(world: World) -> None:
    """Every flow's key proof runs after its callback's answer: wait until none is pending."""
    deadline = time.monotonic() + 30
    while True:
        with world.runtime.sessions() as db:
            pending = [
                s
                for s in db.scalars(select(OAuthState))
                if (s.data or {}).get("proof") == "pending"
            ]
        if not pending:
            return
        assert time.monotonic() < deadline, "key proofs did not settle"
        time.sleep(0.05)


def start_woo(browser: Browser) -> str:
    """Open the connect link; returns the store's approve URL."""
    world = browser.world
    rv = browser.get(
        f"{world.app_url}/woocommerce/connect", params={"store_url": world.woo_url}
    )
    assert 302 == rv.status_code, rv.text
    auth = rv.headers["Location"]
    assert auth.startswith(f"{world.woo_url}/wc-auth/v1/authorize?"), auth
    grant = browser.get(auth)
    assert 200 == grant.status_code, grant.text
    match = APPROVE.search(grant.text)
    assert match is not None
    return urljoin(auth, str(match.group(1)))


def test_woocommerce_connect_then_meta_from_the_return_page(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect, approve, land on the return page, follow its Connect Meta link to the done page."""
    caplog.set_level(logging.DEBUG)
    browser = Browser(world)
    landing, visited = browser.follow(start_woo(browser))
    assert f"{world.app_url}/woocommerce/return" == visited[-1].split("?", 1)[0]
    assert 200 == landing.status_code, landing.text
    assert "Your WooCommerce store is connected" in landing.text
    conn = find(world, "woocommerce", world.woo_url)
    assert conn is not None
    assert "ready" == wait_for_webhooks(world, conn.id)["status"]
    assert 3 == len(world.woo.webhooks)
    done = browser.get(to_meta_callback(browser, connect_link(landing, landing.url)))
    assert 200 == done.status_code, done.text
    assert "111222333444" == load(world, conn.id).pixel_id
    # reloading the return page shows the same store, and the Meta link stays admin-only
    reloaded = browser.get(visited[-1])
    assert 200 == reloaded.status_code
    assert "111222333444" in reloaded.text
    # its dashboard link opens this store's overview, and only this store's
    [href] = [
        html.unescape(h)
        for h in HREF.findall(reloaded.text)
        if "/admin/connections/" in h
    ]
    overview = browser.get(urljoin(reloaded.url, href))
    assert 200 == overview.status_code, overview.text
    assert "<h1>Overview</h1>" in overview.text
    assert "Sending" in overview.text
    assert_no_secret_leaked(world, caplog)


def test_woocommerce_return_page_in_another_browser_is_refused(world: World) -> None:
    """The return URL opened by someone else shows no admin link and a 400 page."""
    browser = Browser(world)
    _, visited = browser.follow(start_woo(browser))
    stranger = Browser(world)
    rv = stranger.get(visited[-1])
    assert_refused(rv, 400, "another browser")
    assert "/meta/connect" not in rv.text


def test_woocommerce_two_connects_raced_leave_one_connection_and_three_webhooks(
    world: World,
) -> None:
    """Two tabs approving the same store end with one connection, the last keys and three webhooks."""
    browser = Browser(world)
    first = start_woo(browser)
    second = start_woo(browser)
    landing, _ = browser.follow(second)
    assert 200 == landing.status_code, landing.text
    earlier, _ = browser.follow(first)
    # the earlier tab's return page is a readable page, never a 500
    assert earlier.status_code < 500
    assert earlier.headers["Content-Type"].startswith("text/html")
    conn = find(world, "woocommerce", world.woo_url)
    assert conn is not None
    # the run that held the lease went again with the newer keys: no wait for the worker
    assert "ready" == wait_for_webhooks(world, conn.id)["status"]
    with world.runtime.sessions() as db:
        assert 1 == len(queries.list_connections(db))
    assert 3 == len(world.woo.webhooks)
    assert {"order.created", "order.updated", "order.deleted"} == {
        h["topic"] for h in world.woo.webhooks.values()
    }
    wait_for_proofs(world)
    conn = load(world, conn.id)
    assert conn.platform_key in world.woo.keys
    # a replayed keys callback (the same user_id again) is refused and keeps the keys
    before = (conn.platform_key, conn.platform_token)
    replay = requests.post(
        f"{world.app_url}/woocommerce/callback",
        json={
            "key_id": 1,
            "user_id": dict(parse_qsl(urlsplit(second).query))["user_id"],
            "consumer_key": "ck_" + "a" * 40,
            "consumer_secret": "cs_" + "b" * 40,
            "key_permissions": "read_write",
        },
        timeout=10,
    )
    assert 400 <= replay.status_code < 500
    conn = load(world, conn.id)
    assert before == (conn.platform_key, conn.platform_token)


# -- a stranger's takeover attempts --------------------------------------------------------


def connect_woo_with_meta(world: World) -> str:
    """The store's owner connects the store and Meta; returns the connection id."""
    owner = Browser(world)
    landing, _ = owner.follow(start_woo(owner))
    assert "Your WooCommerce store is connected" in landing.text, landing.text
    conn = find(world, "woocommerce", world.woo_url)
    assert conn is not None
    assert "ready" == wait_for_webhooks(world, conn.id)["status"]
    done = owner.get(to_meta_callback(owner, connect_link(landing, landing.url)))
    assert 200 == done.status_code, done.text
    return conn.id


def store_snapshot(world: World, connection_id: str) -> tuple[Any, ...]:
    """Everything a takeover would change: keys, secret, pixel, Meta token, the store's webhooks."""
    conn = load(world, connection_id)
    return (
        conn.status,
        conn.platform_key,
        conn.platform_token,
        conn.webhook_secret,
        conn.pixel_id,
        conn.meta_token,
        sorted(
            (w["id"], w["topic"], w["delivery_url"], w["secret"], w["status"])
            for w in world.woo.webhooks.values()
        ),
        sorted(world.woo.keys),
    )


@pytest.mark.parametrize(
    "offered",
    [
        pytest.param("made-up", id="made-up-keys"),
        pytest.param("another-store", id="keys-of-the-strangers-own-store"),
        pytest.param(None, id="no-keys-just-success-1"),
    ],
)
def test_a_stranger_cannot_take_over_a_connected_woocommerce_store(
    world: World, offered: str | None
) -> None:
    """Connect with the victim's URL, post keys, return with success=1, try Meta: nothing changes."""
    connection_id = connect_woo_with_meta(world)
    before = store_snapshot(world, connection_id)
    calls_before = len(world.woo.rest_calls)
    exchanges = world.meta.count("/oauth/access_token")

    stranger = Browser(world)
    start = stranger.get(
        f"{world.app_url}/woocommerce/connect", params={"store_url": world.woo_url}
    )
    assert 302 == start.status_code
    state = dict(parse_qsl(urlsplit(start.headers["Location"]).query))["user_id"]
    if offered is not None:
        if offered == "made-up":
            key, secret = "ck_" + "1" * 40, "cs_" + "2" * 40
        else:
            own = FakeWooCommerce().add_key()
            key, secret = own.consumer_key, own.consumer_secret
        answer = requests.post(
            f"{world.app_url}/woocommerce/callback",
            json={
                "key_id": 7,
                "user_id": state,
                "consumer_key": key,
                "consumer_secret": secret,
                "key_permissions": "read_write",
            },
            timeout=10,
        )
        # WooCommerce's protocol: 200 keeps the keys on the store's side; nothing is adopted yet
        assert 200 == answer.status_code
    page = stranger.get(
        f"{world.app_url}/woocommerce/return",
        params={"user_id": state, "success": "1"},
    )
    assert page.status_code < 500
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/meta/connect" not in page.text
    assert "token=" not in page.text
    assert connection_id not in page.text
    assert "111222333444" not in page.text
    if offered is not None:
        assert_refused(page, 400, "did not accept the keys")
    # the Meta steps of the takeover, without a link: forged or no token
    for params in (
        {"connection": connection_id},
        {"connection": connection_id, "token": "9999999999.nonce.00"},
    ):
        assert_refused(
            stranger.get(f"{world.app_url}/meta/connect", params=params), 401
        )
        assert_refused(stranger.post(f"{world.app_url}/meta/disconnect", params), 401)
    wait_for_proofs(world)
    assert before == store_snapshot(world, connection_id)
    assert exchanges == world.meta.count("/oauth/access_token")
    # the store was asked only to read its webhook list with the offered keys (the proof)
    asked = world.woo.rest_calls[calls_before:]
    assert {("GET", "/wp-json/wc/v3/webhooks")} >= {(m, p) for m, p, _ in asked}
    assert (0 if offered is None else 1) == sum(a != "none" for _, _, a in asked)


def test_the_return_page_waits_for_the_proof_and_shows_only_its_own_connection(
    world: World,
) -> None:
    """Two stores: each owner's return page names only the connection their keys proved."""
    connection_id = connect_woo_with_meta(world)
    other = FakeWooCommerce(require_https_callback=False)
    with serve(other.app) as other_server:
        owner = Browser(world)
        rv = owner.get(
            f"{world.app_url}/woocommerce/connect",
            params={"store_url": other_server.url},
        )
        grant = owner.get(rv.headers["Location"])
        approve = APPROVE.search(grant.text)
        assert approve is not None
        landing, _ = owner.follow(urljoin(rv.headers["Location"], approve.group(1)))
        assert "Your WooCommerce store is connected" in landing.text, landing.text
        mine = find(world, "woocommerce", other_server.url)
        assert mine is not None
        assert mine.id in landing.text
        assert connection_id not in landing.text
        assert (
            mine.id
            == dict(parse_qsl(urlsplit(connect_link(landing, landing.url)).query))[
                "connection"
            ]
        )
        wait_for_webhooks(world, mine.id)


def test_the_return_pages_meta_link_works_once_and_a_reload_gives_a_new_one(
    world: World,
) -> None:
    """The Connect Meta link is spent by its first use; a second tab gets a clear 401; reload helps."""
    owner = Browser(world)
    landing, visited = owner.follow(start_woo(owner))
    link = connect_link(landing, landing.url)
    assert 302 == owner.get(link).status_code
    second_tab = owner.get(link)
    assert_refused(second_tab, 401, "used already")
    conn = find(world, "woocommerce", world.woo_url)
    assert conn is not None
    wait_for_webhooks(world, conn.id)
    reloaded = owner.get(visited[-1])
    assert "no-store" == reloaded.headers["Cache-Control"]
    fresh = connect_link(reloaded, reloaded.url)
    assert fresh != link
    done = owner.get(to_meta_callback(owner, fresh))
    assert 200 == done.status_code, done.text
    # the done page's Disconnect button carries its own single-use link
    token = done.text.split('name="token" value="', 1)[1].split('"', 1)[0]
    form = {"connection": conn.id, "token": token}
    assert 200 == owner.post(f"{world.app_url}/meta/disconnect", form).status_code
    assert_refused(
        owner.post(f"{world.app_url}/meta/disconnect", form), 401, "used already"
    )


def test_admin_links_expire_in_minutes(world: World) -> None:
    """A link signed eleven minutes ago no longer opens Meta's dialog."""
    owner = Browser(world)
    install_shopify(owner)
    conn_id = find(world, "shopify", SHOP).id  # type: ignore[union-attr]
    secret = world.runtime.settings.secret_key
    old = sign_admin_link(secret, conn_id, datetime.now(UTC) - timedelta(minutes=11))
    rv = owner.get(
        f"{world.app_url}/meta/connect", params={"connection": conn_id, "token": old}
    )
    assert_refused(rv, 401, "expired")


# -- store names leading inside --------------------------------------------------------------


@contextmanager
def strict_connector(
    world: World, resolver: Callable[[str, int], list[str]]
) -> Iterator[str]:
    """The connector as deployed (no development switch), resolving store names with ``resolver``."""
    settings = replace(
        world.runtime.settings,
        woocommerce_allow_insecure=False,
        store_resolver=resolver,
    )
    app = create_app(runtime=replace(world.runtime, settings=settings))
    with serve(app) as server:
        yield server.url


VICTIM = "https://victim-store.example"
INTERNAL = ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1")


@pytest.mark.parametrize("address", INTERNAL)
def test_a_store_name_leading_inside_is_refused_readably(
    world: World, address: str
) -> None:
    """A store URL whose name resolves to an internal address: a 400 page saying so, no state, no socket."""
    with (
        strict_connector(world, lambda host, port: [address]) as app_url,
        watch_connects() as connects,
    ):
        stranger = Browser(world)
        rv = stranger.get(
            f"{app_url}/woocommerce/connect", params={"store_url": VICTIM}
        )
    assert_refused(
        rv, 400, "victim-store.example does not lead to a public internet address"
    )
    assert address not in rv.text
    assert "Location" not in rv.headers
    assert 0 == unused_states(world)
    # the store's port: the browser's own connections to the connector are on loopback too
    assert not [c for c in connects if c[1] == 443]


def test_dns_rebinding_between_connect_and_the_key_proof_is_refused(
    world: World,
) -> None:
    """Public at /woocommerce/connect, the metadata service at the proof: refused, nothing connected."""
    answers = [["93.184.215.14"]]

    def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0) if answers else ["169.254.169.254"]

    with strict_connector(world, rebinding) as app_url, watch_connects() as connects:
        stranger = Browser(world)
        start = stranger.get(
            f"{app_url}/woocommerce/connect", params={"store_url": VICTIM}
        )
        assert 302 == start.status_code, start.text
        state = dict(parse_qsl(urlsplit(start.headers["Location"]).query))["user_id"]
        answer = requests.post(
            f"{app_url}/woocommerce/callback",
            json={
                "key_id": 1,
                "user_id": state,
                "consumer_key": "ck_" + "3" * 40,
                "consumer_secret": "cs_" + "4" * 40,
                "key_permissions": "read_write",
            },
            timeout=10,
        )
        assert 200 == answer.status_code
        page = stranger.get(
            f"{app_url}/woocommerce/return", params={"user_id": state, "success": "1"}
        )
        wait_for_proofs(world)
    assert_refused(page, 400, "does not lead to a public internet address")
    for word in ("169.254", "93.184", "Errno", "refused", "HTTPConnectionPool"):
        assert word not in page.text
    assert "/meta/connect" not in page.text
    assert find(world, "woocommerce", VICTIM) is None
    assert not [c for c in connects if c[1] == 443]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"shop": SHOP}, id="no-proof"),
        pytest.param(
            {"shop": SHOP, "timestamp": "1700000000", "hmac": "0" * 64},
            id="forged-hmac",
        ),
        pytest.param({"id_token": "e30.e30.c2ln"}, id="forged-session-token"),
    ],
)
def test_a_stranger_opening_an_installed_shops_page_gets_no_admin_link(
    world: World, query: dict[str, str]
) -> None:
    """Without the install's session, a Shopify-signed link or a session token, no Connect Meta link."""
    owner = Browser(world)
    install_shopify(owner)
    stranger = Browser(world)
    rv = stranger.get(f"{world.app_url}/shopify/app", params=query)
    assert "/meta/connect" not in rv.text
    assert "token=" not in rv.text
    if rv.status_code == 302:
        # unproven: sent to Shopify's consent page, which proves who the merchant is
        assert urlsplit(rv.headers["Location"]).path == "/shopify/install"
    else:
        assert_refused(rv, 401)
