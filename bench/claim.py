"""Claim cost with a large sent history: 3,000,000 sent rows and 20,000 pending ones.

Creates a scratch PostgreSQL schema, fills the outbox with SQL (generate_series), then times
the dispatcher's claim: with the backlog due, with stale planner statistics (no ANALYZE since
the backlog arrived), and idle (every pending row waiting for a later retry). Each claimed
batch is given back before the next claim, so every claim sees the same table.

    .venv/bin/python bench/claim.py [--sent 3000000] [--pending 20000] [--database-url ...]

Target: the claim's cost follows the due rows, not the sent history (tens of milliseconds).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connector import migrate  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.dispatcher import Dispatcher  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import queries  # noqa: E402

FILL = """
INSERT INTO events (connection_id, event_name, event_id, event_time, payload, status,
    attempts, send_count, next_attempt_at, created_at, sent_at, reclaims)
SELECT :conn, 'Purchase', :prefix || g, now() - interval '1 hour',
    CAST('{"event_name": "Purchase", "event_time": 0, "action_source": "other"}' AS json),
    :status, 0, :send_count, now() - interval '1 minute', now(), NULL, 0
FROM generate_series(1, :n) AS g
"""


def timed_claims(dispatcher: Dispatcher, runtime: Runtime, rounds: int) -> list[float]:
    """Milliseconds per claim; each claim's rows are put back as they were."""
    rv = []
    for _ in range(rounds):
        t = time.perf_counter()
        claimed = dispatcher.claim()
        rv.append((time.perf_counter() - t) * 1000)
        if claimed:
            with runtime.engine.begin() as db:
                db.execute(
                    text(
                        "UPDATE events SET status = 'pending', lease_owner = NULL, "
                        "lease_expires_at = NULL WHERE id = ANY(:ids)"
                    ),
                    {"ids": [c.id for c in claimed]},
                )
    return rv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sent", type=int, default=3_000_000)
    parser.add_argument("--pending", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()
    base = normalize_database_url(args.database_url)
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as db:
        db.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        migrate.upgrade(url)
        runtime = Runtime.from_settings(
            Settings(
                env="test",
                database_url=url,
                encryption_keys=(Fernet.generate_key().decode(),),
                secret_key=secrets.token_hex(16),
                db_statement_timeout=0,
            )
        )
        with runtime.sessions.begin() as session:
            conn_id = queries.upsert_connection(
                session,
                "shopify",
                "claim.myshopify.com",
                pixel_id="1",
                meta_token=secrets.token_hex(8),
            ).id
        t = time.perf_counter()
        with runtime.engine.begin() as db:
            db.execute(
                text(FILL),
                {
                    "conn": conn_id,
                    "prefix": "sent-",
                    "status": "sent",
                    "send_count": 1,
                    "n": args.sent,
                },
            )
            db.execute(text("ANALYZE events"))
            # the backlog arrives after the statistics were taken: they say "nothing pending"
            db.execute(
                text(FILL),
                {
                    "conn": conn_id,
                    "prefix": "due-",
                    "status": "pending",
                    "send_count": 0,
                    "n": args.pending,
                },
            )
        print(
            f"outbox: {args.sent} sent + {args.pending} pending rows in "
            f"{time.perf_counter() - t:.0f} s"
        )
        dispatcher = Dispatcher(runtime, worker_id="bench-claim")
        stale = timed_claims(dispatcher, runtime, args.rounds)
        with runtime.engine.begin() as db:
            db.execute(text("ANALYZE events"))
        fresh = timed_claims(dispatcher, runtime, args.rounds)
        with runtime.engine.begin() as db:
            db.execute(
                text(
                    "UPDATE events SET next_attempt_at = now() + interval '1 hour' "
                    "WHERE status = 'pending'"
                )
            )
        idle = timed_claims(dispatcher, runtime, args.rounds)
        for name, figures in (
            ("stale statistics", stale),
            ("analyzed", fresh),
            ("idle", idle),
        ):
            print(
                f"claim of {dispatcher.claim_size} rows, {name}: median "
                f"{statistics.median(figures):.1f} ms, max {max(figures):.1f} ms "
                f"({len(figures)} claims)"
            )
        dispatcher.close()
        runtime.close()
    finally:
        with admin.begin() as db:
            db.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
