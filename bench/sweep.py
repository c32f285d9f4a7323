"""Order sweep of a large Shopify store: within the cost-based throttle, and how fast it enqueues.

1. Throttle: the fake Shopify GraphQL Admin API holds N orders (default 10,000) and meters
   every query with Shopify's bucket (standard plan: 2,000 points, 100 points/s restored).
   ``iter_orders`` reads them all; time is simulated (each wait the client decides on moves
   the fake's clock), so the figures say how long a real sweep would take and whether any
   query was throttled.
2. Enqueue: the full sweep (GraphQL -> translation -> outbox) of the same orders into a
   scratch database (SQLite, or ``--database-url``), in real time, with a bucket large enough
   not to wait, to measure the connector's own cost per order.

    .venv/bin/python bench/sweep.py [--orders 10000] [--database-url postgresql://...]

Target: 0 THROTTLED answers and 0 errors; the bucket never goes below 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connector.outbound import AddressPolicy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from adapters.shopify import admin_api  # noqa: E402
from connector import migrate, sweep  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import queries  # noqa: E402
from connector.store.models import Event  # noqa: E402
from tests.fakes.server import LiveServer  # noqa: E402
from tests.fakes.shopify import FakeShopify, graphql_order  # noqa: E402

# ruff: noqa: S106 - the fakes' credentials

SHOP = "bench-sweep.myshopify.com"
TOKEN = "shpat_bench"  # noqa: S105 - a fake store's token


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.waited = 0.0
        self.waits = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        self.waited += seconds
        self.waits += 1
        return False


def fill(fake: FakeShopify, count: int, base: datetime) -> None:
    for i in range(count):
        fake.add_order(
            SHOP,
            graphql_order(6500000000000 + i, updated_at=base + timedelta(seconds=i)),
        )


def throttle(count: int) -> None:
    clock = SimulatedClock()
    fake = FakeShopify(api_key="k", api_secret="s", clock=clock)
    fake.access_tokens[TOKEN] = (SHOP, None)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    fill(fake, count, base)
    server = LiveServer(fake.app()).start()
    errors = 0
    read = 0
    started = time.monotonic()
    try:
        admin = admin_api.ShopifyAdmin(
            api_key="k",
            api_secret="s",
            url_template=server.url + "/{shop}",
            timeout=30,
            policy=AddressPolicy(allow_loopback=True),
        )
        try:
            for _ in admin_api.iter_orders(
                admin, SHOP, TOKEN, base, base + timedelta(days=1), sleep=clock.sleep
            ):
                read += 1
        except Exception as exc:  # a bench reports, it does not crash
            errors += 1
            print(f"error: {exc}")
    finally:
        server.stop()
    real = time.monotonic() - started
    print(
        f"throttle: {read} of {count} orders in {fake.order_pages} pages; "
        f"THROTTLED answers {fake.throttled}; errors {errors}; "
        f"lowest bucket level {fake.lowest_available:.0f} of {fake.bucket_max:.0f} points; "
        f"{clock.waits} waits, {clock.waited:.0f} s simulated "
        f"(restore {fake.restore_rate:.0f} points/s); {real:.1f} s real"
    )


def enqueue(count: int, database_url: str | None) -> None:
    fake = FakeShopify(api_key="k", api_secret="s", bucket_max=1e9, restore_rate=1e9)
    fake.access_tokens[TOKEN] = (SHOP, None)
    now = datetime.now(UTC)
    fill(fake, count, now - timedelta(days=2))
    server = LiveServer(fake.app()).start()
    scratch = tempfile.TemporaryDirectory()
    schema = None
    if database_url:
        schema = f"bench_sweep_{int(time.time())}"
        admin = create_engine(normalize_database_url(database_url))
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = (
            make_url(normalize_database_url(database_url))
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    else:
        url = f"sqlite:///{scratch.name}/bench.db"
    try:
        migrate.upgrade(url)
        runtime = Runtime.from_settings(
            Settings(
                env="test",
                database_url=url,
                encryption_keys=(Fernet.generate_key().decode(),),
                secret_key="bench",
                shopify_admin_url_template=server.url + "/{shop}",
                http_timeout=30.0,
            )
        )
        with runtime.sessions.begin() as s:
            conn_id = queries.upsert_connection(
                s, "shopify", SHOP, platform_token=TOKEN, pixel_id="1", meta_token="m"
            ).id
        started = time.monotonic()
        counts = sweep.sweep_connection(
            runtime, conn_id, since=now - timedelta(days=3), until=now
        )
        seconds = time.monotonic() - started
        with runtime.sessions() as s:
            rows = s.scalar(select(func.count()).select_from(Event))
        print(
            f"enqueue ({make_url(url).get_backend_name()}): {counts.summary()}; "
            f"{rows} outbox rows; {seconds:.1f} s, {counts.scanned / seconds:.0f} orders/s"
        )
        runtime.close()
    finally:
        server.stop()
        if schema is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        scratch.cleanup()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--skip-enqueue", action="store_true")
    args = parser.parse_args()
    throttle(args.orders)
    if not args.skip_enqueue:
        enqueue(args.orders, args.database_url)


if __name__ == "__main__":
    main()
