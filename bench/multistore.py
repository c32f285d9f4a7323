"""Multi-store delivery: concurrent sends across pixels, and fair claims across stores.

Two runs of one ``connector worker --drain`` against the fake Graph API on loopback, each
on a scratch PostgreSQL schema:

* ``latency``: 100 stores x 100 paid orders, Meta answering every request after 300 ms. One
  request at a time needs at least 100 requests x 0.3 s = 30 s; target: all 10,000 sent once
  each in under 10 s.
* ``fairness``: one store with 20,000 queued events and 50 stores with 5 each; target: every
  small store's events are sent before the big store's backlog is half done (by ``sent_at``).

    .venv/bin/python bench/multistore.py [--mode latency|fairness|both] [--database-url ...]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cryptography.fernet import Fernet  # noqa: E402
from soak import faulty_graph, payload  # noqa: E402
from sqlalchemy import create_engine, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connector import migrate  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import queries  # noqa: E402
from connector.store.models import Event, EventStatus  # noqa: E402
from tests.fakes.graph import FakeGraph  # noqa: E402
from tests.fakes.server import LiveServer  # noqa: E402


def run(base_url: str, stores: dict[int, int], latency: float) -> dict[str, Any]:
    """Seed ``stores`` (store number -> events), drain once; figures."""
    base = normalize_database_url(base_url)
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as db:
        db.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    key = Fernet.generate_key().decode()
    state = FakeGraph(tokens=set())
    server = LiveServer(faulty_graph(state, (latency, latency), 0.0, 0.0)).start()
    try:
        migrate.upgrade(url)
        runtime = Runtime.from_settings(
            Settings(
                env="test",
                database_url=url,
                encryption_keys=(key,),
                secret_key=secrets.token_hex(16),
            )
        )
        now = datetime.now(UTC)
        when = now - timedelta(minutes=10)
        ids: dict[int, str] = {}
        with runtime.sessions.begin() as session:
            for n in stores:
                token = secrets.token_hex(8)
                state.tokens.add(token)
                ids[n] = queries.upsert_connection(
                    session,
                    "shopify",
                    f"store-{n}.myshopify.com",
                    pixel_id=f"{8_000_000_000 + n}",
                    meta_token=token,
                ).id
        rows = [
            {
                "connection_id": ids[n],
                "event_name": "Purchase",
                "event_id": f"s{n}-{i}",
                "event_time": when,
                "payload": payload(f"s{n}-{i}", when),
                "status": EventStatus.PENDING,
                "attempts": 0,
                "send_count": 0,
                "next_attempt_at": now - timedelta(seconds=1),
                "created_at": now,
            }
            for n, count in stores.items()
            for i in range(count)
        ]
        with runtime.sessions.begin() as session:
            for start in range(0, len(rows), 5000):
                session.execute(insert(Event), rows[start : start + 5000])
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("META_", "CONNECTOR_"))
        }
        env.update(
            DATABASE_URL=url,
            CONNECTOR_ENCRYPTION_KEYS=key,
            SECRET_KEY=secrets.token_hex(16),
            CONNECTOR_ENV="test",
            META_GRAPH_URL=server.url,
        )
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "connector.cli", "worker", "--drain"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=True,
        )
        wall = time.perf_counter() - started
        summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        with runtime.sessions() as session:
            sent = list(
                session.execute(
                    select(Event.connection_id, Event.sent_at, Event.send_count).where(
                        Event.status == EventStatus.SENT
                    )
                )
            )
        runtime.close()
        counts = Counter(state.event_ids())
        return {
            "ids": ids,
            "sent": sent,
            "wall": wall,
            "summary": summary,
            "requests": state.calls,
            "each_once": len(counts) == len(rows) and set(counts.values()) == {1},
        }
    finally:
        server.stop()
        with admin.begin() as db:
            db.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def latency_run(url: str) -> bool:
    rv = run(url, {n: 100 for n in range(100)}, 0.3)
    loop = rv["summary"]["seconds"]
    print(
        f"latency: {len(rv['sent'])} of 10000 sent, each once: {rv['each_once']}, "
        f"{rv['requests']} requests at 300 ms, worker loop {loop:.2f} s, "
        f"process wall {rv['wall']:.2f} s (serial floor: {rv['requests'] * 0.3:.0f} s)"
    )
    ok = len(rv["sent"]) == 10_000 and rv["each_once"] and rv["wall"] < 10
    print("target (all 10,000 once, under 10 s):", "met" if ok else "NOT met")
    return ok


def fairness_run(url: str) -> bool:
    stores = {0: 20_000, **{n: 5 for n in range(1, 51)}}
    rv = run(url, stores, 0.05)
    big = rv["ids"][0]
    big_times = sorted(t for c, t, _ in rv["sent"] if c == big)
    small_times = [t for c, t, _ in rv["sent"] if c != big]
    half = big_times[len(big_times) // 2 - 1]
    last_small = max(small_times)
    print(
        f"fairness: big store {len(big_times)} sent, small stores {len(small_times)} of 250 "
        f"sent; last small event {(last_small - big_times[0]).total_seconds():.2f} s after "
        f"the first big one, big store half done at "
        f"{(half - big_times[0]).total_seconds():.2f} s; worker loop "
        f"{rv['summary']['seconds']:.2f} s"
    )
    ok = len(small_times) == 250 and last_small <= half
    print(
        "target (small stores done before half the backlog):",
        "met" if ok else "NOT met",
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", choices=["latency", "fairness", "both"], default="both"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()
    if args.mode in ("latency", "both"):
        latency_run(args.database_url)
    if args.mode in ("fairness", "both"):
        fairness_run(args.database_url)


if __name__ == "__main__":
    main()
