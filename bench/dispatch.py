"""Dispatch throughput: one worker drains a 20,000-row backlog to the fake Graph API.

Creates a scratch PostgreSQL schema, fills the outbox with 20,000 real-sized Purchases (the
storefront order fixture through the Shopify translation: every match key, contents, fbp,
fbc; about 1.9 KB of JSON each), vacuums and analyzes it and runs a CHECKPOINT (as pgbench
does before a run, so that autovacuum and the fill's checkpoint do not fall into the timed
drain), serves the fake Graph API from a separate process on
loopback (it parses and checks every event, and answers at once), runs
``connector worker --drain`` as its own process, then prints events per second and the
worker's peak RSS, and drops the schema.

    .venv/bin/python bench/dispatch.py [--events 20000] [--database-url postgresql://...]
        [--profile FILE]

Target on a 2-core machine: at least 8,000 events/s and under 150 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import ProgrammingError  # noqa: E402

from connector import migrate  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import queries  # noqa: E402
from connector.store.models import Event, EventStatus  # noqa: E402

PIXEL = "1234567890"


def serve_fake(port_queue: Any, token: str) -> None:
    """The fake Graph API, in its own process so it does not share the worker's CPU budget."""
    import logging

    from werkzeug.serving import make_server

    from tests.fakes.graph import FakeGraph, make_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server(
        "127.0.0.1", 0, make_app(FakeGraph(tokens={token})), threaded=True
    )
    port_queue.put(server.server_port)
    server.serve_forever()


class PeakRss(threading.Thread):
    """Follow a process's VmHWM (its own peak RSS) until it exits.

    ``wait4``'s ru_maxrss would include the benchmark's own memory, which the child shares
    between fork and exec; VmHWM belongs to the exec'd worker alone.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.mib = 0.0

    def run(self) -> None:
        while True:
            try:
                status = self.path.read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = max(self.mib, int(line.split()[1]) / 1024)
                if line.startswith("State:") and "Z" in line:
                    return
            time.sleep(0.02)


ORDER = ROOT / "tests" / "fixtures" / "shopify" / "order_storefront.json"


def real_sized_payloads(n: int, when: datetime) -> list[dict[str, Any]]:
    """``n`` Purchases as the webhook path stores them: the storefront order fixture (full
    customer data, line items, fbp/fbc, IP and user agent) through the real translation, each
    with its own order id, email and phone, so no two payloads share their hashes."""
    from adapters.shopify.translate import translate_order
    from connector.platform import ConnectionInfo

    order = json.loads(ORDER.read_text())
    conn = ConnectionInfo(id="bench", platform="shopify", store="bench.myshopify.com")
    rv = []
    for i in range(n):
        order["id"] = 7_000_000_000_000 + i
        order["email"] = f"shopper{i}@example.com"
        order["customer"]["email"] = order["email"]
        order["processed_at"] = order["created_at"] = when.isoformat()
        outcome = translate_order(
            "orders/paid", order, conn, when + timedelta(minutes=1)
        )
        (event,) = outcome.events
        rv.append(event.to_meta())
    return rv


def seed(runtime: Runtime, n: int, token: str) -> None:
    now = datetime.now(UTC)
    when = now - timedelta(minutes=10)
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session, "shopify", "bench.myshopify.com", pixel_id=PIXEL, meta_token=token
        )
        conn_id = conn.id
    payloads = real_sized_payloads(n, when)
    rows = [
        {
            "connection_id": conn_id,
            "event_name": "Purchase",
            "event_id": payload["event_id"],
            "event_time": when,
            "payload": payload,
            "status": EventStatus.PENDING,
            "attempts": 0,
            "send_count": 0,
            "next_attempt_at": now - timedelta(seconds=1),
            "created_at": now,
        }
        for payload in payloads
    ]
    for start in range(0, n, 5000):
        with runtime.sessions.begin() as session:
            session.execute(insert(Event), rows[start : start + 5000])


def settle(admin: Any, schema: str) -> None:
    """Vacuum and analyze the new backlog and flush it to disk before the timed drain.

    As pgbench does before each run: otherwise autovacuum, woken by 20,000 fresh rows,
    and the checkpoint their WAL brings on would run during the drain, on the same two
    cores, and the figure would measure them as much as the worker.
    """
    with admin.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text(f'VACUUM (ANALYZE) "{schema}".events'))
        try:
            conn.execute(text("CHECKPOINT"))
        except (
            ProgrammingError
        ):  # not a superuser (nor, from 15, pg_checkpoint): skip it
            print("(no CHECKPOINT before the drain: this role may not run one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run the worker under cProfile and write its stats to FILE",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()

    base = normalize_database_url(args.database_url)
    if not base.startswith("postgresql"):
        sys.exit(
            "this benchmark measures PostgreSQL; pass --database-url postgresql://..."
        )
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    key = Fernet.generate_key().decode()
    token = secrets.token_urlsafe(24)
    fake = None
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
        t = time.perf_counter()
        seed(runtime, args.events, token)
        print(
            f"backlog: {args.events} pending events inserted in {time.perf_counter() - t:.1f} s"
        )
        settle(admin, schema)

        ctx = mp.get_context("spawn")
        ports = ctx.Queue()
        fake = ctx.Process(target=serve_fake, args=(ports, token), daemon=True)
        fake.start()
        graph_url = f"http://127.0.0.1:{ports.get(timeout=30)}"

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
            META_GRAPH_URL=graph_url,
        )
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                *(["-m", "cProfile", "-o", args.profile] if args.profile else []),
                "-m",
                "connector.cli",
                "worker",
                "--drain",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        peak = PeakRss(proc.pid)
        peak.start()
        out = proc.stdout.read()
        rc = proc.wait()
        wall = time.perf_counter() - started
        peak.join()
        if rc != 0:
            sys.exit(f"worker exited with {rc}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
        with runtime.sessions() as session:
            sent = session.scalar(
                select(func.count()).where(Event.status == EventStatus.SENT)
            )
        runtime.close()
        peak_mb = peak.mib
        print(f"sent: {sent} of {args.events} ({summary['requests']} requests)")
        print(
            f"worker loop: {summary['seconds']:.2f} s, {summary['events_per_second']:.0f} events/s"
        )
        print(
            f"process wall time (start-up included): {wall:.2f} s, "
            f"{args.events / wall:.0f} events/s"
        )
        print(f"worker peak RSS: {peak_mb:.1f} MB")
        ok = (
            sent == args.events
            and summary["events_per_second"] >= 8000
            and peak_mb < 150
        )
        print("target (>= 8,000 events/s, < 150 MB):", "met" if ok else "NOT met")
    finally:
        if fake is not None:
            fake.terminate()
            fake.join(timeout=5)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
