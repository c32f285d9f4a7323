"""Order sweeps, backfill, webhook health and periodic jobs, over real HTTP to local fakes.

The stores (Shopify's GraphQL Admin API, WooCommerce's REST API) and Meta's Graph API are
fakes on loopback ports; the database is PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from adapters.shopify import admin_api
from adapters.shopify.sweep import rest_shape
from connector import dispatcher, jobs, sweep
from connector.cli import cli
from connector.config import Settings
from connector.outbound import AddressPolicy
from connector.platform import PeriodicJob
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Event, EventStatus, JobRun, SweepState, WebhookRepair
from tests.conftest import FIXTURES
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.fakes.shopify import FakeShopify, graphql_order
from tests.fakes.woocommerce import FakeWooCommerce

SHOP = "sweep-shop.myshopify.com"
SHOPIFY_SECRET = "shpss_sweep_secret"
META_TOKEN = "meta-token"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, str]]:
    state = FakeGraph()
    state.keep_bodies = True
    server = LiveServer(make_app(state)).start()
    try:
        yield state, server.url
    finally:
        server.stop()


@pytest.fixture
def shopify() -> Iterator[tuple[FakeShopify, str]]:
    fake = FakeShopify(api_key="sweep-key", api_secret=SHOPIFY_SECRET)
    server = LiveServer(fake.app()).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
def woo() -> Iterator[tuple[FakeWooCommerce, str]]:
    fake = FakeWooCommerce()
    server = LiveServer(fake.app).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
def rt(
    runtime: Runtime,
    graph: tuple[FakeGraph, str],
    shopify: tuple[FakeShopify, str],
) -> Runtime:
    """The runtime, pointed at the fakes."""
    settings = replace(
        runtime.settings,
        meta_graph_url=graph[1],
        shopify_admin_url_template=shopify[1] + "/{shop}",
        shopify_api_key="sweep-key",
        shopify_api_secret=SHOPIFY_SECRET,
        http_timeout=10.0,
    )
    return replace(runtime, settings=settings)


def add_shopify(rt: Runtime, fake: FakeShopify, *, pixel: str = "1234567890") -> str:
    token = "shpat_" + hashlib.sha256(SHOP.encode()).hexdigest()[:24]
    fake.access_tokens[token] = (SHOP, None)
    with rt.sessions.begin() as s:
        conn = queries.upsert_connection(
            s,
            "shopify",
            SHOP,
            platform_token=token,
            pixel_id=pixel,
            meta_token=META_TOKEN,
        )
        conn.installed_at = datetime.now(UTC) - timedelta(days=1)
        return conn.id


def add_woo(
    rt: Runtime, fake: FakeWooCommerce, url: str, *, connect_flow: bool = False
) -> str:
    key = fake.add_key()
    with rt.sessions.begin() as s:
        conn = queries.upsert_connection(
            s,
            "woocommerce",
            url,
            platform_key=key.consumer_key,
            platform_token=key.consumer_secret,
            webhook_secret="woo-webhook-secret",
            pixel_id="2234567890",
            meta_token=META_TOKEN,
        )
        conn.installed_at = datetime.now(UTC) - timedelta(days=1)
        if connect_flow:
            conn.settings = {"webhooks": {"status": "ready"}}
        return conn.id


def woo_order(
    order_id: int, *, modified: datetime, paid: datetime | None = None
) -> dict[str, Any]:
    """A recorded wc/v3 order (processing, paid), renumbered and re-dated."""
    order: dict[str, Any] = json.loads(
        (FIXTURES / "woocommerce" / "order-processing.json").read_text()
    )
    paid = paid or modified
    order.update(
        id=order_id,
        number=str(order_id),
        order_key=f"wc_order_{order_id}",
        date_created=iso(paid),
        date_created_gmt=iso(paid),
        date_modified=iso(modified),
        date_modified_gmt=iso(modified),
        date_paid=iso(paid),
        date_paid_gmt=iso(paid),
    )
    return order


def shopify_orders(
    fake: FakeShopify, count: int, *, start: int = 6100000000000
) -> list[int]:
    now = datetime.now(UTC)
    ids = [start + i for i in range(count)]
    for n, order_id in enumerate(ids):
        fake.add_order(
            SHOP,
            graphql_order(
                order_id, updated_at=now - timedelta(minutes=5, seconds=n / 100)
            ),
        )
    return ids


def outbox(rt: Runtime, conn_id: str) -> list[Event]:
    with rt.sessions() as s:
        return list(
            s.scalars(
                select(Event).where(Event.connection_id == conn_id).order_by(Event.id)
            )
        )


def drain(rt: Runtime) -> dict[str, Any]:
    rv = dispatcher.run_worker(runtime=rt, drain=True)
    assert rv is not None
    return rv


def received(graph: FakeGraph, pixel: str) -> list[str | None]:
    with graph.lock:
        return [r.event_id for r in graph.received if r.pixel_id == pixel]


# -- the sweep ------------------------------------------------------------------------------


def test_shopify_sweep_sends_each_paid_order_once(
    rt: Runtime, shopify: tuple[FakeShopify, str], graph: tuple[FakeGraph, str]
) -> None:
    """50 paid orders placed while webhooks were lost: the next sweep sends 50 Purchases, once."""
    fake, _ = shopify
    conn_id = add_shopify(rt, fake)
    ids = shopify_orders(fake, 50)

    first = sweep.sweep_connection(rt, conn_id)
    second = sweep.sweep_connection(rt, conn_id)
    drain(rt)

    assert (first.scanned, first.enqueued, first.present) == (50, 50, 0)
    assert (second.enqueued, second.present) == (
        0,
        50,
    )  # the overlap re-reads, adds nothing
    assert sorted(received(graph[0], "1234567890")) == sorted(str(i) for i in ids)
    assert fake.throttled == 0
    with rt.sessions() as s:
        state = s.get(SweepState, conn_id)
        assert state is not None
        assert state.swept_until is not None
        assert state.last_counts["present"] == 50


def test_woocommerce_sweep_sends_each_paid_order_once(
    rt: Runtime, woo: tuple[FakeWooCommerce, str], graph: tuple[FakeGraph, str]
) -> None:
    """150 paid orders over two pages of 100: each reaches Meta once, a second sweep adds none."""
    fake, url = woo
    rt = replace(rt, settings=replace(rt.settings, woocommerce_allow_insecure=True))
    conn_id = add_woo(rt, fake, url)
    now = datetime.now(UTC)
    for i in range(150):
        fake.add_order(
            woo_order(9000 + i, modified=now - timedelta(minutes=5, seconds=i))
        )

    first = sweep.sweep_connection(rt, conn_id)
    second = sweep.sweep_connection(rt, conn_id)
    drain(rt)

    assert (first.scanned, first.enqueued) == (150, 150)
    assert second.enqueued == 0
    assert fake.order_pages == 4  # two pages per sweep, following X-WP-TotalPages
    assert sorted(received(graph[0], "2234567890")) == sorted(
        str(9000 + i) for i in range(150)
    )


def test_webhooks_and_sweeps_racing_send_each_order_once(
    rt: Runtime, shopify: tuple[FakeShopify, str], graph: tuple[FakeGraph, str]
) -> None:
    """orders/paid webhooks over HTTP while two sweeps read the same orders: once each."""
    from connector.web import create_app

    fake, _ = shopify
    conn_id = add_shopify(rt, fake, pixel="3234567890")
    ids = shopify_orders(fake, 40, start=6300000000000)
    web = LiveServer(create_app(runtime=rt)).start()

    def post_webhooks() -> None:
        for node in fake.orders[SHOP].values():
            body = json.dumps(rest_shape(node)).encode()
            digest = hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()
            rv = requests.post(
                f"{web.url}/webhooks/shopify",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
                    "X-Shopify-Topic": "orders/paid",
                    "X-Shopify-Shop-Domain": SHOP,
                    "X-Shopify-Webhook-Id": f"wh-{node['legacyResourceId']}",
                    "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
                },
                timeout=30,
            )
            assert rv.status_code == 200

    try:
        threads = [
            threading.Thread(target=post_webhooks),
            threading.Thread(target=sweep.sweep_connection, args=(rt, conn_id)),
            threading.Thread(
                target=sweep.sweep_connection,
                args=(rt, conn_id),
                kwargs={"since": datetime.now(UTC) - timedelta(days=1)},
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        web.stop()
    drain(rt)

    assert len(outbox(rt, conn_id)) == 40
    assert sorted(received(graph[0], "3234567890")) == sorted(str(i) for i in ids)


def test_sweep_applies_the_webhook_rules(
    rt: Runtime, shopify: tuple[FakeShopify, str]
) -> None:
    """Unpaid, test and too-old orders are skipped with their reason; paid ones are enqueued."""
    fake, _ = shopify
    conn_id = add_shopify(rt, fake)
    now = datetime.now(UTC)
    recent = now - timedelta(minutes=15)
    fake.add_order(SHOP, graphql_order(1, updated_at=recent))
    fake.add_order(
        SHOP, graphql_order(2, updated_at=recent, financial_status="PENDING")
    )
    fake.add_order(SHOP, graphql_order(3, updated_at=recent, test=True))
    fake.add_order(
        SHOP,
        graphql_order(
            4,
            updated_at=recent,
            created_at=now - timedelta(days=20),
            paid_at=now - timedelta(days=9),
        ),
    )

    counts = sweep.sweep_connection(rt, conn_id)

    assert (counts.scanned, counts.enqueued) == (4, 1)
    reasons = " | ".join(counts.skipped)
    assert "not paid yet" in reasons
    assert "test order" in reasons
    assert sweep.SKIP_TOO_OLD in counts.skipped
    assert [e.event_id for e in outbox(rt, conn_id)] == ["1"]


def test_the_high_water_mark_moves_only_after_a_complete_sweep(
    rt: Runtime, shopify: tuple[FakeShopify, str]
) -> None:
    """A sweep that fails midway leaves the mark; the next complete one moves it."""
    fake, _ = shopify
    conn_id = add_shopify(rt, fake)
    shopify_orders(fake, 3)
    token = next(iter(fake.access_tokens))
    saved = fake.access_tokens.pop(token)  # Shopify refuses the token: 401

    with pytest.raises(Exception, match="401"):
        sweep.sweep_connection(rt, conn_id)
    with rt.sessions() as s:
        assert s.get(SweepState, conn_id) is None

    fake.access_tokens[token] = saved
    before = datetime.now(UTC)
    sweep.sweep_connection(rt, conn_id)
    with rt.sessions() as s:
        state = s.get(SweepState, conn_id)
        assert state is not None
        assert state.swept_until is not None
        assert state.swept_until >= before


# -- Purchases dated when paid -----------------------------------------------------------


def late_paid_order(now: datetime) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (FIXTURES / "shopify" / "order.json").read_text()
    )
    placed = (now - timedelta(days=9)).isoformat()
    order.update(
        id=6200000000099,
        created_at=placed,
        processed_at=placed,
        updated_at=(now - timedelta(minutes=2)).isoformat(),
        gateway="Cash on Delivery (COD)",
        payment_gateway_names=["Cash on Delivery (COD)"],
        test=False,
    )
    return order


def test_a_late_paid_order_is_sent_dated_at_payment(
    rt: Runtime, graph: tuple[FakeGraph, str], shopify: tuple[FakeShopify, str]
) -> None:
    """Placed 9 days ago, paid now (cash on delivery): one Purchase, dated at payment, sent."""
    from connector.web import create_app

    client = create_app(runtime=rt).test_client()
    fake, _ = shopify
    conn_id = add_shopify(rt, fake, pixel="4234567890")
    now = datetime.now(UTC)
    order = late_paid_order(now)
    for topic, status in (("orders/create", "pending"), ("orders/paid", "paid")):
        body = json.dumps({**order, "financial_status": status}).encode()
        digest = hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()
        rv = client.post(
            "/webhooks/shopify",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
                "X-Shopify-Topic": topic,
                "X-Shopify-Shop-Domain": SHOP,
                "X-Shopify-Webhook-Id": f"late-{topic}",
            },
        )
        assert rv.status_code == 200, rv.get_data(as_text=True)
    drain(rt)

    [event] = outbox(rt, conn_id)
    assert event.status == EventStatus.SENT
    assert abs(event.event_time - (now - timedelta(minutes=2))) < timedelta(seconds=2)
    assert received(graph[0], "4234567890") == ["6200000000099"]


def test_a_swept_late_paid_order_is_dated_at_its_sale_transaction(
    rt: Runtime, shopify: tuple[FakeShopify, str]
) -> None:
    """The sweep reads the capture's processedAt: the Purchase is dated there, not at creation."""
    fake, _ = shopify
    conn_id = add_shopify(rt, fake)
    now = datetime.now(UTC)
    paid = now - timedelta(hours=3)
    fake.add_order(
        SHOP,
        graphql_order(
            6200000000099,
            updated_at=now - timedelta(minutes=2),
            created_at=now - timedelta(days=9),
            paid_at=paid,
        ),
    )

    counts = sweep.sweep_connection(rt, conn_id)

    assert counts.enqueued == 1
    [event] = outbox(rt, conn_id)
    assert abs(event.event_time - paid) < timedelta(seconds=1)


# -- Shopify's throttle ----------------------------------------------------------------------


class SimulatedClock:
    """Time for the fake's bucket; sleeping advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        self.slept += seconds
        return False


@pytest.mark.parametrize(
    "start_level", [2000.0, 100.0], ids=["full-bucket", "nearly-empty"]
)
def test_the_orders_query_keeps_within_the_cost_throttle(start_level: float) -> None:
    """Every order is read; waits follow extensions.cost, a THROTTLED answer is waited out."""
    clock = SimulatedClock()
    fake = FakeShopify(api_key="k", api_secret="s", clock=clock, restore_rate=50.0)
    fake.buckets[SHOP] = (start_level, clock.now)
    token = "shpat_throttle"
    fake.access_tokens[token] = (SHOP, None)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(95):
        fake.add_order(
            SHOP, graphql_order(7000 + i, updated_at=base + timedelta(seconds=i))
        )
    server = LiveServer(fake.app()).start()
    try:
        admin = admin_api.ShopifyAdmin(
            api_key="k",
            api_secret="s",
            url_template=server.url + "/{shop}",
            timeout=10,
            policy=AddressPolicy(allow_loopback=True),
        )
        nodes = list(
            admin_api.iter_orders(
                admin, SHOP, token, base, base + timedelta(hours=1), sleep=clock.sleep
            )
        )
    finally:
        server.stop()
    assert [n["legacyResourceId"] for n in nodes] == [str(7000 + i) for i in range(95)]
    assert fake.throttled == (1 if start_level < 1000 else 0)
    assert fake.lowest_available >= 0


def test_a_throttled_answer_is_read_as_such() -> None:
    """Shopify's THROTTLED answer (HTTP 200, errors[].extensions.code) and its cost block."""
    answer = {
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
        "extensions": {
            "cost": {
                "requestedQueryCost": 902,
                "actualQueryCost": None,
                "throttleStatus": {
                    "maximumAvailable": 2000.0,
                    "currentlyAvailable": 402,
                    "restoreRate": 100.0,
                },
            }
        },
    }
    cost = admin_api.read_cost(answer)
    assert admin_api.is_throttled(answer)
    assert cost is not None
    assert cost.wait_for(cost.requested) == pytest.approx(5.01)
    assert not admin_api.is_throttled({"data": {}})


# -- webhook health ---------------------------------------------------------------------------


def test_a_disabled_woocommerce_webhook_is_active_after_the_next_sweep(
    rt: Runtime, woo: tuple[FakeWooCommerce, str]
) -> None:
    """Disabled after failed deliveries: re-activated; a deleted one is re-created; both recorded."""
    from adapters.woocommerce import connect

    fake, url = woo
    rt = replace(rt, settings=replace(rt.settings, woocommerce_allow_insecure=True))
    conn_id = add_woo(rt, fake, url, connect_flow=True)
    with rt.sessions.begin() as s:
        conn = queries.get_connection(s, conn_id)
        conn.settings = {"webhooks": {"status": "pending"}}
    assert connect.setup_webhooks(rt, conn_id) == "ready"
    hooks = {w["topic"]: w["id"] for w in fake.webhooks.values()}
    fake.fail_deliveries(hooks["order.updated"])
    fake.webhooks[hooks["order.deleted"]]["status"] = "paused"  # the owner's choice

    sweep.sweep_all(rt)

    status = {w["topic"]: w["status"] for w in fake.webhooks.values()}
    assert status == {
        "order.created": "active",
        "order.updated": "active",
        "order.deleted": "paused",
    }

    del fake.webhooks[hooks["order.created"]]
    sweep.sweep_all(rt)

    assert sorted(w["topic"] for w in fake.webhooks.values()) == [
        "order.created",
        "order.deleted",
        "order.updated",
    ]
    with rt.sessions() as s:
        repairs = [
            (r.topic, r.action)
            for r in s.scalars(
                select(WebhookRepair)
                .where(WebhookRepair.connection_id == conn_id)
                .order_by(WebhookRepair.id)
            )
        ]
    assert repairs == [("order.updated", "reactivated"), ("order.created", "recreated")]


def test_a_vanished_shopify_subscription_is_recreated_by_the_sweep(
    rt: Runtime, shopify: tuple[FakeShopify, str]
) -> None:
    """Shopify removed a failing subscription: the sweep's check re-creates it and records it."""
    fake, _ = shopify
    conn_id = add_shopify(rt, fake)
    with rt.sessions.begin() as s:
        conn = queries.get_connection(s, conn_id)
        conn.settings = {"shopify_app": True}
    uri = f"{rt.settings.app_url}/webhooks/shopify"
    for topic in admin_api.WEBHOOK_TOPICS:
        fake.subscriptions.setdefault(SHOP, {})[
            f"gid://shopify/WebhookSubscription/{900 + len(fake.subscriptions[SHOP])}"
        ] = (admin_api.topic_enum(topic), uri)
    fake.delete_topic(SHOP, "ORDERS_PAID")

    sweep.sweep_all(rt)

    assert "ORDERS_PAID" in fake.topics(SHOP)
    with rt.sessions() as s:
        [repair] = s.scalars(select(WebhookRepair)).all()
    assert (repair.topic, repair.action) == ("orders/paid", "recreated")


# -- backfill ---------------------------------------------------------------------------------


def test_backfill_prints_progress_and_a_summary_and_a_second_run_enqueues_nothing(
    rt: Runtime, shopify: tuple[FakeShopify, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`connector backfill`: progress on stderr, the summary last; dry run and rerun add nothing."""
    fake, url = shopify
    fake.bucket_max, fake.restore_rate = (
        20000.0,
        1000.0,
    )  # a Shopify Plus store: no waits
    conn_id = add_shopify(rt, fake)
    shopify_orders(fake, 120)
    fake.add_order(
        SHOP,
        graphql_order(
            5,
            updated_at=datetime.now(UTC) - timedelta(hours=1),
            financial_status="PENDING",
        ),
    )
    env = {
        "DATABASE_URL": rt.settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": ",".join(rt.settings.encryption_keys),
        "SECRET_KEY": "x",
        "SHOPIFY_ADMIN_URL_TEMPLATE": url + "/{shop}",
        "CONNECTOR_INSTANCE_PATH": str(rt.settings.instance_path),
    }
    runner = CliRunner()

    def backfill(*extra: str) -> Any:
        rv = runner.invoke(
            cli, ["backfill", "--connection", conn_id, "--since", "3d", *extra], env=env
        )
        assert rv.exit_code == 0, rv.output
        return rv

    dry = backfill("--dry-run")
    assert (
        dry.stdout.strip()
        .splitlines()[-1]
        .startswith(
            "dry run, nothing enqueued: scanned 121, would enqueue 120, already present 0, skipped 1"
        )
    )
    assert outbox(rt, conn_id) == []

    first = backfill()
    assert (
        "scanned 100:" in first.stderr
    )  # progress, every 100 orders when not on a terminal
    assert (
        first.stdout.strip()
        .splitlines()[-1]
        .startswith("scanned 121, enqueued 120, already present 0, skipped 1")
    )
    second = backfill()
    assert (
        second.stdout.strip()
        .splitlines()[-1]
        .startswith("scanned 121, enqueued 0, already present 120, skipped 1")
    )
    assert len(outbox(rt, conn_id)) == 120


@pytest.mark.parametrize("period", ["3", "d", "0d", "-3d", "3w", ""])
def test_backfill_refuses_a_period_it_cannot_read(period: str) -> None:
    with pytest.raises(ValueError, match="period"):
        sweep.parse_since(period)


# -- periodic jobs: once per cluster, never in delivery's way ----------------------------------


def test_two_workers_run_each_periodic_job_once_per_interval(
    rt: Runtime,
    settings: Settings,
    shopify: tuple[FakeShopify, str],
    woo: tuple[FakeWooCommerce, str],
) -> None:
    """Two runners (two engines, as two processes) over three ticks: each job runs 3 times."""
    fake, _ = shopify
    wfake, wurl = woo
    rt = replace(rt, settings=replace(rt.settings, woocommerce_allow_insecure=True))
    add_shopify(rt, fake)
    add_woo(rt, wfake, wurl)
    shopify_orders(fake, 5)
    other = Runtime.from_settings(rt.settings)
    clock = SimulatedClock()
    ran: list[str] = []
    lock = threading.Lock()

    def counting(job: PeriodicJob) -> PeriodicJob:
        def run(runtime: Any) -> None:
            with lock:
                ran.append(job.name)
            job.run(runtime)

        return replace(job, run=run)

    all_jobs = [counting(j) for j in jobs.collect_periodic_jobs(900.0)]
    try:
        runners = [
            jobs.JobRunner(rt, all_jobs, owner="worker-a", clock=clock),
            jobs.JobRunner(other, all_jobs, owner="worker-b", clock=clock),
        ]
        for _ in range(3):
            threads = [threading.Thread(target=r.run_due) for r in runners]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            clock.now += 86400  # a day: every job's next tick
    finally:
        other.close()

    names = [j.name for j in all_jobs]
    assert sorted(ran) == sorted(names * 3)
    assert fake.order_pages == 3  # one sweep per tick, counted at the store
    assert wfake.order_pages == 3
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(JobRun)) == len(names) * 3


def test_a_periodic_job_stops_within_the_shutdown_promise(runtime: Runtime) -> None:
    """stop() interrupts a job that polls stop_requested, and abandons one that never returns."""
    started = threading.Event()
    release = threading.Event()

    def polite(_: Any) -> None:
        started.set()
        while not jobs.wait_or_stop(0.05):
            pass

    runner = jobs.JobRunner(
        runtime, [PeriodicJob(name="polite", interval_seconds=60, run=polite)]
    )
    runner.start()
    assert started.wait(10)
    assert runner.stop(timeout=5)
    with runtime.sessions() as s:
        assert (
            s.scalar(select(JobRun.outcome).where(JobRun.job == "polite"))
            == "interrupted"
        )

    started.clear()

    def stubborn(_: Any) -> None:
        started.set()
        release.wait(30)

    runner = jobs.JobRunner(
        runtime, [PeriodicJob(name="stubborn", interval_seconds=60, run=stubborn)]
    )
    runner.start()
    assert started.wait(10)
    try:
        assert not runner.stop(
            timeout=0.2
        )  # abandoned: a daemon thread cannot hold the exit
    finally:
        release.set()


def test_the_worker_no_longer_runs_jobs_inline() -> None:
    """The dispatcher module holds no job scheduler: jobs live in connector.jobs."""
    assert not hasattr(dispatcher, "JobScheduler")
    names = {job.name for job in jobs.collect_periodic_jobs()}
    assert {"order-sweep", "shopify-reconcile", "woocommerce_webhooks"} <= names


@pytest.mark.slow
def test_the_worker_sends_while_a_periodic_job_waits_on_a_slow_store(
    rt: Runtime, graph: tuple[FakeGraph, str], shopify: tuple[FakeShopify, str]
) -> None:
    """The order sweep hangs on Shopify's Admin API: events still go out meanwhile."""
    from connector.cli import _run_worker_with_jobs

    fake, _ = shopify
    conn_id = add_shopify(rt, fake, pixel="6234567890")
    shopify_orders(fake, 3)
    sweep.sweep_connection(rt, conn_id)  # three Purchases wait in the outbox
    fake.orders_gate = threading.Event()  # Shopify's Admin API stops answering
    stop = threading.Event()
    worker = threading.Thread(target=_run_worker_with_jobs, args=(rt, stop))
    worker.start()
    try:
        for _ in range(200):
            if fake.orders_waiting and len(received(graph[0], "6234567890")) == 3:
                break
            stop.wait(0.1)
        assert fake.orders_waiting >= 1  # the periodic sweep is stuck in its query...
        assert len(received(graph[0], "6234567890")) == 3  # ...and delivery went on
        stop.set()
        worker.join(
            jobs.JOB_STOP_SECONDS + 5
        )  # the stuck job is abandoned, not waited for
        assert not worker.is_alive()
    finally:
        stop.set()
        fake.orders_gate.set()
        worker.join(30)


def test_woocommerce_webhooks_and_sweeps_racing_send_each_order_once(
    rt: Runtime, woo: tuple[FakeWooCommerce, str], graph: tuple[FakeGraph, str]
) -> None:
    """order.updated webhooks over HTTP while a sweep reads the same orders: once each."""
    from connector.web import create_app
    from tests.fakes.woocommerce import woocommerce_signature

    fake, url = woo
    rt = replace(rt, settings=replace(rt.settings, woocommerce_allow_insecure=True))
    conn_id = add_woo(rt, fake, url)
    with rt.sessions.begin() as s:
        queries.get_connection(s, conn_id).pixel_id = "7234567890"
    now = datetime.now(UTC)
    orders = [
        woo_order(50000 + i, modified=now - timedelta(minutes=3)) for i in range(40)
    ]
    for order in orders:
        fake.add_order(order)
    web = LiveServer(create_app(runtime=rt)).start()

    def post_webhooks() -> None:
        for order in orders:
            body = json.dumps(order).encode()
            rv = requests.post(
                f"{web.url}/webhooks/woocommerce/{conn_id}",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-WC-Webhook-Topic": "order.updated",
                    "X-WC-Webhook-Resource": "order",
                    "X-WC-Webhook-Event": "updated",
                    "X-WC-Webhook-Signature": woocommerce_signature(
                        body, "woo-webhook-secret"
                    ),
                    "X-WC-Webhook-ID": "41",
                    "X-WC-Webhook-Delivery-ID": f"d{order['id']}",
                },
                timeout=30,
            )
            assert rv.status_code == 200, rv.text

    try:
        threads = [
            threading.Thread(target=post_webhooks),
            threading.Thread(target=sweep.sweep_connection, args=(rt, conn_id)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        web.stop()
    drain(rt)

    assert len(outbox(rt, conn_id)) == 40
    assert sorted(received(graph[0], "7234567890")) == sorted(
        str(o["id"]) for o in orders
    )


def test_a_job_still_running_elsewhere_holds_its_next_tick(runtime: Runtime) -> None:
    """A sweep longer than its interval is not started a second time beside itself."""
    clock = SimulatedClock()
    ran: list[int] = []
    job = PeriodicJob(name="long", interval_seconds=900, run=lambda _: ran.append(1))
    tick = jobs.tick_of(job, clock.now)
    with runtime.sessions.begin() as s:
        s.add(
            JobRun(
                job="long",
                tick=tick - 1,
                owner="other-worker",
                started_at=datetime.fromtimestamp(clock.now - 950, UTC),
            )
        )

    assert jobs.JobRunner(runtime, [job], clock=clock).run_due() == []
    with runtime.sessions.begin() as s:
        run = s.get(JobRun, ("long", tick - 1))
        assert run is not None
        run.finished_at = datetime.fromtimestamp(clock.now, UTC)
    clock.now += 900
    assert jobs.JobRunner(runtime, [job], clock=clock).run_due() == ["long"]
    assert ran == [1]
