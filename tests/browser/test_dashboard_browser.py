"""The dashboard in real headless Chromium: every page, replay, go live, copying the pixel code.

Shopify's CDN scripts (App Bridge, Polaris) are stubbed; any other request that leaves
127.0.0.1 fails the test, so the pages need no runtime CDN of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from connector import dispatcher, quality
from connector.config import Settings
from connector.links import sign_dashboard_link
from connector.runtime import Runtime
from connector.store import quality as quality_store
from connector.store import queries
from connector.store.models import Connection, EventStatus, SweepState, WebhookRepair
from connector.web import create_app
from connector.web.dashboard_views import shopify_custom_pixel, woocommerce_plugin
from tests.fakes.dataset_quality import event_answer
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.test_dashboard import FORBIDDEN, add_event

PIXEL = "1234567890"
SHOP = "browser-shop.myshopify.com"
WOO = "https://woo-browser.example"
MOBILE = {"width": 375, "height": 812}
CDN_STUB = "window.shopify = window.shopify || {config: {}}; /* stubbed in tests */"


@dataclass
class World:
    runtime: Runtime
    graph: FakeGraph
    url: str
    settings: Settings


@pytest.fixture
def world(make_settings: Callable[..., Settings], runtime: Runtime) -> Iterator[World]:
    """The connector's web app and a fake Graph API, each on a loopback port."""
    graph = FakeGraph()
    graph_server = LiveServer(make_app(graph)).start()
    settings = make_settings(
        meta_graph_url=graph_server.url,
        shopify_api_key="browser-api-key",
        meta_app_id="4242",
        meta_app_secret="meta-app-secret",
    )
    rt = Runtime.from_settings(settings)
    web = LiveServer(create_app(runtime=rt)).start()
    try:
        yield World(runtime=rt, graph=graph, url=web.url, settings=settings)
    finally:
        web.stop()
        graph_server.stop()
        rt.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A 375 px wide page whose only outside requests are Shopify's stubbed scripts."""
    context = browser.new_context(viewport=MOBILE)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    strays: list[str] = []

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname
        if host == "cdn.shopify.com":
            r.fulfill(status=200, content_type="application/javascript", body=CDN_STUB)
        elif host == "127.0.0.1":
            r.continue_()
        else:
            strays.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield p
    finally:
        context.close()
    assert [] == strays
    assert [] == errors


def connect(world: World, platform: str, **fields: Any) -> str:
    store = SHOP if platform == "shopify" else WOO
    with world.runtime.sessions.begin() as s:
        conn = queries.upsert_connection(s, platform, store)
        for name, value in {
            "pixel_id": PIXEL,
            "meta_token": "meta-token",
            **fields,
        }.items():
            setattr(conn, name, value)
        return conn.id


def entry(world: World, conn_id: str, *, embedded: bool = False) -> str:
    mode = "embedded" if embedded else "standalone"
    token = sign_dashboard_link(
        world.settings.secret_key, conn_id, datetime.now(UTC), mode=mode
    )
    return f"{world.url}/admin/connections/{conn_id}?t={token}"


def shoot(page: Any, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.wait_for_load_state("load")
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def assert_fits(page: Any) -> None:
    """Nothing is wider than the 375 px screen, and no page shows internals.

    A click starts the navigation but does not wait for the stylesheet, so the
    measure waits for the page's ``load`` event first: before its CSS, any page
    with a code block is as wide as its longest line.
    """
    page.wait_for_load_state("load")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= MOBILE["width"], f"{page.url} is {width}px wide"
    assert not FORBIDDEN.search(page.content())


def drain(world: World) -> None:
    worker = dispatcher.Dispatcher(world.runtime)
    while worker.run_once():
        pass


#: what the overview and the match-quality page must say, given :func:`seed_health`
SHOWN: Final = {
    "Overview": (
        "Checked 40 recent orders. 2 had no notification from the store",
        "Managed by the app",
        "Set up again: the notification of orders (",
        "1 order event could not be sent because it was more than 7 days old",
        "are kept for 30 days after Meta receives an event",
    ),
    "Match quality": (
        "From Meta, read on",
        "7.4 / 10",
        "ours, not Meta's",
        "Deduplication warnings",
        "deduplicated with it",
    ),
}


def seed_health(runtime: Runtime, conn_id: str, now: datetime) -> None:
    """The worker's part: coverage aggregates, Meta's answer and warnings, a sweep, a repair."""
    today = now.date()
    answers = quality.parse_dataset_quality(
        {
            "web": [
                event_answer(
                    "Purchase", score=7.4, coverage=81.5, overall_event_id=3.0
                ),
                event_answer("InitiateCheckout", score=5.2),
            ]
        }
    )
    with runtime.sessions.begin() as s:
        # connected through the app, so the app keeps (and repairs) the store's webhooks
        conn = s.get(Connection, conn_id)
        assert conn is not None
        if conn.platform == "shopify":
            hooks = {"orders/paid": "1", "orders/create": "2", "checkouts/create": "3"}
            conn.settings = {
                **(conn.settings or {}),
                "shopify_app": True,
                "shopify_webhooks": hooks,
                "shopify_webhooks_at": now.isoformat(),
            }
        else:
            conn.settings = {
                **(conn.settings or {}),
                "webhooks": {"status": "ready", "checked_at": now.isoformat()},
            }
        quality_store.refresh_coverage(
            s, since=today - timedelta(days=29), until=today, now=now
        )
        quality_store.save_meta_scores(
            s, conn_id, pixel_id=PIXEL, events=answers, now=now
        )
        quality_store.set_warnings(s, conn_id, quality.dedup_warnings(answers), now)
        quality_store.record_meta_check(
            s,
            conn_id,
            pixel_id=PIXEL,
            token="meta-token",
            outcome="ok",
            detail="2 event names",
            now=now,
        )
        s.add(
            SweepState(
                connection_id=conn_id,
                last_run_at=now - timedelta(minutes=12),
                last_counts={
                    "scanned": 40,
                    "enqueued": 2,
                    "present": 38,
                    "skipped": {},
                },
            )
        )
        s.add(
            WebhookRepair(
                connection_id=conn_id,
                topic="orders/paid" if conn.platform == "shopify" else "order.updated",
                action="recreated",
                detail="re-created",
                repaired_at=now - timedelta(hours=3),
            )
        )


@pytest.mark.parametrize("platform", ["shopify", "woocommerce"])
def test_every_page_opens_for_a_store(
    world: World, page: Any, screenshot_dir: Path, platform: str
) -> None:
    """Overview, events, an event, match quality, settings and pixel setup, at 375 px."""
    conn_id = connect(world, platform)
    now = datetime.now(UTC)
    for i in range(12):
        add_event(
            world.runtime,
            conn_id,
            f"{5000 + i}",
            created_at=now - timedelta(days=i % 9, hours=1),
            sent_at=now - timedelta(days=i % 9),
            fbtrace_id=f"AbCdTrace{i}",
            events_received=1,
        )
    add_event(
        world.runtime, conn_id, "5100", status="dead", last_error="invalid: bad phone"
    )
    add_event(
        world.runtime, conn_id, "5101", status="held", last_error="held: reconnect"
    )
    add_event(
        world.runtime,
        conn_id,
        "5102",
        status="dead",
        event_time=now - timedelta(days=9),
        last_error="too_old: held while the Meta account was not connected",
    )
    seed_health(world.runtime, conn_id, now)
    page.goto(entry(world, conn_id, embedded=platform == "shopify"))
    expected = {
        "Overview": "Overview",
        "Events": "Events",
        "Match quality": "Match quality",
        "Settings": "Settings",
        "Pixel setup": "Pixel setup",
    }
    for link, heading in expected.items():
        page.get_by_role("navigation", name="Dashboard").get_by_role(
            "link", name=link, exact=True
        ).click()
        assert heading == page.locator("h1").inner_text()
        assert_fits(page)
        for words in SHOWN.get(link, ()):
            assert words in page.locator("main").inner_text()
        shoot(page, screenshot_dir, f"{platform}-{link.lower().replace(' ', '-')}")
        if link == "Events":
            page.get_by_role("link", name="5100").click()
            assert "Purchase for order 5100" == page.locator("h1").inner_text()
            assert_fits(page)
            shoot(page, screenshot_dir, f"{platform}-event")
    if platform == "shopify":
        # inside the Shopify admin: App Bridge's tag with the app's key, from Shopify's CDN
        assert "browser-api-key" == page.locator(
            'meta[name="shopify-api-key"]'
        ).get_attribute("content")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("link", name="Overview", exact=True).click()
    shoot(page, screenshot_dir, f"{platform}-overview-wide")


def test_replaying_a_dead_event_reaches_meta(
    world: World, page: Any, screenshot_dir: Path
) -> None:
    """Send again on a dead event: the worker delivers it to the Graph API."""
    conn_id = connect(world, "woocommerce")
    pk = add_event(
        world.runtime, conn_id, "777", status=EventStatus.DEAD, last_error="invalid: x"
    )
    page.goto(entry(world, conn_id))
    page.get_by_role("link", name="Events", exact=True).click()
    page.get_by_role("link", name="777").click()
    page.get_by_role("button", name="Send again").click()
    assert "1 event will be sent again" in page.get_by_role("status").first.inner_text()
    shoot(page, screenshot_dir, "replayed")
    drain(world)
    assert [("Purchase", "777")] == [
        (r.event_name, r.event_id) for r in world.graph.received if r.pixel_id == PIXEL
    ]
    page.goto(
        f"{world.url}/admin/connections/{conn_id}/events/{pk}?t={entry(world, conn_id).split('t=')[1]}"
    )
    assert "Delivered" == page.locator("#st-h").inner_text()


def test_going_live_sends_the_next_event_without_the_test_code(
    world: World, page: Any, screenshot_dir: Path
) -> None:
    """Go live clears test mode: the next event reaches Meta with no test_event_code."""
    conn_id = connect(world, "shopify", test_event_code="TEST123")
    add_event(
        world.runtime,
        conn_id,
        "900",
        status=EventStatus.PENDING,
        created_at=datetime.now(UTC),
    )
    drain(world)
    page.goto(entry(world, conn_id, embedded=True))
    assert "Test mode" == page.locator("#state-h").inner_text()
    page.get_by_role("link", name="Go live").click()
    shoot(page, screenshot_dir, "settings-test-mode")
    page.get_by_role("button", name="Go live").click()
    assert "You are live" in page.get_by_role("status").first.inner_text()
    add_event(
        world.runtime,
        conn_id,
        "901",
        status=EventStatus.PENDING,
        created_at=datetime.now(UTC),
    )
    drain(world)
    assert [("900", "TEST123"), ("901", None)] == [
        (r.event_id, r.test_event_code) for r in world.graph.received
    ]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        pytest.param("shopify", shopify_custom_pixel(PIXEL), id="shopify"),
        pytest.param("woocommerce", woocommerce_plugin(PIXEL), id="woocommerce"),
    ],
)
def test_copying_the_pixel_code(
    world: World, page: Any, screenshot_dir: Path, platform: str, expected: str
) -> None:
    """Copy code puts the filled-in snippet, exactly, on the clipboard."""
    conn_id = connect(world, platform)
    page.goto(entry(world, conn_id))
    page.get_by_role("link", name="Pixel setup", exact=True).click()
    page.get_by_role("button", name="Copy code").click()
    page.wait_for_function("document.querySelector('.copied').textContent.length > 0")
    assert "Copied" == page.locator(".copied").inner_text()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert expected.strip() == copied.strip()
    assert re.search(rf"'{PIXEL}'", copied)
