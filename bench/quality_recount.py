"""Coverage recount: how long the worker's (and `connector quality`'s) recount of a week takes.

Creates a scratch database (SQLite by default, or a scratch PostgreSQL schema with
``--database-url``), inserts ``--events`` sent outbox rows over 7 days and 3 connections with
match keys drawn from 64 combinations, then times ``refresh_coverage`` over the week and prints rows per second.

    .venv/bin/python bench/quality_recount.py [--events 100000] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connector import migrate, quality  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import quality as store  # noqa: E402
from connector.store import queries  # noqa: E402
from connector.store.models import Event, EventStatus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp()
    schema = None
    if args.database_url:
        base = normalize_database_url(args.database_url)
        schema = f"bench_{secrets.token_hex(4)}"
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    else:
        url = f"sqlite:///{scratch}/bench.db"
    try:
        migrate.upgrade(url)
        settings = Settings(
            env="test",
            instance_path=Path(scratch),
            database_url=url,
            encryption_keys=(Fernet.generate_key().decode(),),
            secret_key=secrets.token_hex(16),
            app_url="https://bench.example",
        )
        rt = Runtime.from_settings(settings)
        now = datetime.now(UTC).replace(microsecond=0)
        rng = random.Random(1)
        # Real stores send a few dozen combinations of keys, not every one of 2**15.
        combos = [rng.getrandbits(len(quality.MATCH_KEYS)) for _ in range(64)]
        with rt.sessions.begin() as session:
            conns = [
                queries.upsert_connection(
                    session, "shopify", f"bench{i}.myshopify.com", pixel_id=str(i + 1)
                ).id
                for i in range(3)
            ]
        rows = [
            {
                "connection_id": rng.choice(conns),
                "event_name": rng.choice(["Purchase", "InitiateCheckout"]),
                "event_id": f"e{i}",
                "event_time": now - timedelta(days=7),
                "payload": {},
                "status": EventStatus.SENT.value,
                "attempts": 1,
                "send_count": 1,
                "next_attempt_at": now,
                "created_at": now,
                "sent_at": now - timedelta(seconds=rng.randrange(7 * 86400)),
                "match_keys": rng.choice(combos),
            }
            for i in range(args.events)
        ]
        with rt.sessions.begin() as session:
            for start in range(0, len(rows), 5000):
                session.execute(insert(Event), rows[start : start + 5000])
        started = time.perf_counter()
        with rt.sessions.begin() as session:
            written = store.refresh_coverage(
                session,
                since=(now - timedelta(days=7)).date(),
                until=now.date(),
                now=now,
            )
        elapsed = time.perf_counter() - started
        print(
            f"{args.events} sent events over 7 days recounted into {written} daily rows "
            f"in {elapsed:.2f} s ({args.events / elapsed:,.0f} events/s) on "
            f"{make_url(url).get_backend_name()}"
        )
        rt.close()
    finally:
        if schema:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
