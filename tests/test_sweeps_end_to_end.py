"""End to end, black box: stores that got orders while webhooks were lost, two `connector worker`s.

Real processes, real HTTP: the stores are the Shopify and WooCommerce fakes, Meta is the Graph
fake, the database is PostgreSQL when TEST_DATABASE_URL is set. No web process runs, so no
webhook arrives: every Purchase Meta receives was found by a sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from tests.conftest import migrate_url
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.fakes.shopify import FakeShopify, graphql_order
from tests.fakes.woocommerce import FakeWooCommerce
from tests.test_sweeps import woo_order

SHOP = "e2e-sweep.myshopify.com"
#: SIGTERM to exit: the worker promises 20 s
SHUTDOWN_PROMISE = 20


def _wipe(database_url: str) -> None:
    from connector.store.models import Base

    engine = create_engine(migrate_url(database_url))
    try:
        with engine.begin() as conn:
            for tbl in reversed(Base.metadata.sorted_tables):
                conn.execute(tbl.delete())
    finally:
        engine.dispose()


@pytest.fixture
def servers() -> Iterator[
    tuple[FakeGraph, str, FakeShopify, str, FakeWooCommerce, str]
]:
    graph = FakeGraph()
    shopify = FakeShopify(api_key="e2e", api_secret="e2e-secret")
    woo = FakeWooCommerce()
    started = [
        LiveServer(make_app(graph)).start(),
        LiveServer(shopify.app()).start(),
        LiveServer(woo.app).start(),
    ]
    try:
        yield graph, started[0].url, shopify, started[1].url, woo, started[2].url
    finally:
        for server in started:
            server.stop()


@pytest.mark.slow
def test_two_workers_sweep_lost_orders_to_meta_once_each(
    database_url: str,
    tmp_path: Path,
    servers: tuple[FakeGraph, str, FakeShopify, str, FakeWooCommerce, str],
) -> None:
    """50 paid orders per store, no webhooks: 100 Purchases reach Meta once; one sweep per tick."""
    graph, graph_url, shopify, shopify_url, woo, woo_url = servers
    _wipe(database_url)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_", "WOOCOMMERCE_"))
    }
    env.update(
        DATABASE_URL=database_url,
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECRET_KEY="e2e",
        CONNECTOR_INSTANCE_PATH=str(tmp_path),
        META_GRAPH_URL=graph_url,
        SHOPIFY_ADMIN_URL_TEMPLATE=shopify_url + "/{shop}",
        WOOCOMMERCE_ALLOW_INSECURE_URLS="1",
        CONNECTOR_SWEEP_INTERVAL="3600",
        CONNECTOR_POLL_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )

    def connector(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "connector.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    shopify.access_tokens["shpat_e2e"] = (SHOP, None)
    key = woo.add_key()
    meta = "meta-token"
    connector(
        "connections", "add", "shopify", "--shop", SHOP, "--access-token", "shpat_e2e",
        "--pixel-id", "1000000001", "--meta-token", meta,
    )  # fmt: skip
    # A local store on a non-standard port, as the connect flow accepts in development.
    connector(
        "connections", "add", "woocommerce", "--store-url", woo_url,
        "--consumer-key", key.consumer_key, "--consumer-secret", key.consumer_secret,
        "--pixel-id", "1000000002", "--meta-token", meta,
    )  # fmt: skip
    now = datetime.now(UTC)
    for i in range(50):
        when = now + timedelta(
            seconds=1 + i / 100
        )  # placed after the connections were made
        shopify.add_order(SHOP, graphql_order(6400000000000 + i, updated_at=when))
        woo.add_order(woo_order(40000 + i, modified=when))
    time.sleep(
        max(0.0, (now + timedelta(seconds=2) - datetime.now(UTC)).total_seconds())
    )

    workers = []
    for n in range(2):
        with (tmp_path / f"worker{n}.log").open("wb") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "connector.cli", "worker"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with graph.lock:
                if len(graph.received) >= 100:
                    break
            assert all(w.poll() is None for w in workers)
            time.sleep(0.2)
        time.sleep(0.5)  # a duplicate would show by now
    finally:
        stopped = []
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            started = time.monotonic()
            try:
                w.wait(timeout=SHUTDOWN_PROMISE)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(timeout=10)
            stopped.append((w.returncode, time.monotonic() - started))

    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("worker*.log")))
    assert all(code == 0 for code, _ in stopped), logs
    assert all(seconds < SHUTDOWN_PROMISE for _, seconds in stopped)
    with graph.lock:
        counted = Counter((r.pixel_id, r.event_id) for r in graph.received)
    assert sorted(counted.values()) == [1] * 100
    assert {e for p, e in counted if p == "1000000001"} == {
        str(6400000000000 + i) for i in range(50)
    }
    assert {e for p, e in counted if p == "1000000002"} == {
        str(40000 + i) for i in range(50)
    }

    engine = create_engine(migrate_url(database_url))
    try:
        with engine.connect() as conn:
            runs = dict(
                conn.execute(
                    text("SELECT job, count(*) FROM job_runs GROUP BY job")
                ).all()
            )
            owners = {
                r[0] for r in conn.execute(text("SELECT DISTINCT owner FROM job_runs"))
            }
    finally:
        engine.dispose()
    # Counted at the stores: one sweep per tick, though two workers were running.
    assert shopify.order_sweeps == woo.order_sweeps == runs["order-sweep"]
    assert 1 <= runs["order-sweep"] <= 2  # the run may straddle one hourly tick
    assert runs["shopify-reconcile"] == runs["meta-token-check"] == 1
    assert len(owners) <= 2
    _wipe(database_url)


@pytest.mark.slow
def test_sigterm_is_honoured_while_a_periodic_job_waits_on_a_slow_store(
    database_url: str,
    tmp_path: Path,
    servers: tuple[FakeGraph, str, FakeShopify, str, FakeWooCommerce, str],
) -> None:
    """Shopify's Admin API hangs during the order sweep: the worker still exits in time."""
    _graph, graph_url, shopify, shopify_url, _woo, _woo_url = servers
    _wipe(database_url)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_", "WOOCOMMERCE_"))
    }
    env.update(
        DATABASE_URL=database_url,
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECRET_KEY="e2e",
        CONNECTOR_INSTANCE_PATH=str(tmp_path),
        META_GRAPH_URL=graph_url,
        SHOPIFY_ADMIN_URL_TEMPLATE=shopify_url + "/{shop}",
        SHOPIFY_API_KEY="e2e",
        SHOPIFY_API_SECRET="e2e-secret",
        PYTHONUNBUFFERED="1",
    )
    shopify.access_tokens["shpat_e2e"] = (SHOP, None)
    runtime = Runtime.from_settings(
        Settings(
            env="test",
            database_url=database_url,
            encryption_keys=(env["CONNECTOR_ENCRYPTION_KEYS"],),
            secret_key="e2e",
        )
    )
    with runtime.sessions.begin() as s:
        queries.upsert_connection(s, "shopify", SHOP, platform_token="shpat_e2e")
    runtime.close()
    shopify.orders_gate = threading.Event()
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not shopify.orders_waiting and time.monotonic() < deadline:
            assert worker.poll() is None
            time.sleep(0.1)
        assert shopify.orders_waiting  # the order sweep hangs in its query
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            worker.wait(timeout=SHUTDOWN_PROMISE)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        shopify.orders_gate.set()
    log = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, log
    assert took < SHUTDOWN_PROMISE, log
    assert "did not stop within" in log
    _wipe(database_url)
