"""Time the daily prune on PostgreSQL: N old sent events, in batches, and print figures.

Usage: TEST_DATABASE_URL=postgresql://... PYTHONPATH=. python bench/retention.py [N]
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from connector import migrate
from connector.config import normalize_database_url
from connector.retention import RetentionPolicy, prune
from connector.store.db import make_engine
from tests.test_retention import _BULK


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    base = normalize_database_url(os.environ["TEST_DATABASE_URL"])
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as db:
        db.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base}?options=-csearch_path%3D{schema}"
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        now = datetime.now(UTC)
        with engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO connections (id, platform, store, status, settings, "
                    "installed_at, created_at, updated_at) VALUES ('c1', 'shopify', "
                    "'bench.myshopify.com', 'active', '{}', :t, :t, :t)"
                ),
                {"t": now},
            )
            t0 = time.perf_counter()
            db.execute(
                _BULK,
                {"conn": "c1", "old": now - timedelta(days=40), "later": now, "n": n},
            )
        print(f"insert {n} events: {time.perf_counter() - t0:.2f} s")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            db.execute(text("ANALYZE events"))
        batches = 0

        def count() -> None:
            nonlocal batches
            batches += 1

        t0 = time.perf_counter()
        report = prune(engine, RetentionPolicy(), now=now, between=count)
        elapsed = time.perf_counter() - t0
        print(
            f"prune: {report.events_pruned} events in {report.batches} batches, "
            f"{elapsed:.2f} s ({report.events_pruned / elapsed:.0f} events/s, "
            f"{elapsed / max(1, report.batches) * 1000:.0f} ms per batch)"
        )
        engine.dispose()
    finally:
        with admin.begin() as db:
            db.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
