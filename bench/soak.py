"""Soak: several workers, many stores, a slow and faulty Meta, a broken store, a disconnect and
a database cut; every event of a healthy store must reach Meta exactly once.

The fake Graph API answers each request after 0.3-2 s, refuses 10% of them (Meta's transient
code 1) and fails 5% with a 500; neither counts the events. One store's Meta token was written
under an encryption key the workers no longer have; another store disconnects Meta a quarter of
the way through and reconnects two seconds later; at half way every database connection of the
workers is cut for 5 s (they reach PostgreSQL through a loopback proxy). The workers are
`connector worker` processes. At the end: the fake's count of every healthy event id is exactly
1, the broken store's events are held with a reason, and no row is left in `sending`.

    .venv/bin/python bench/soak.py [--workers 4] [--stores 100] [--events 20000]
                                   [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connector import meta_oauth, migrate  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.store import queries  # noqa: E402
from connector.store.models import Event, EventStatus  # noqa: E402
from tests.fakes.graph import FakeGraph, make_app  # noqa: E402
from tests.fakes.server import LiveServer  # noqa: E402
from tests.fakes.tcp_proxy import TcpProxy  # noqa: E402


def faulty_graph(
    state: FakeGraph,
    latency: tuple[float, float],
    refuse: float,
    fail: float,
    seed: int = 7,
) -> Any:
    """The fake Graph API behind a layer that is slow and refuses or fails some requests."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    app = make_app(state)
    inner = app.wsgi_app
    rng = random.Random(seed)
    lock = threading.Lock()

    def layer(environ: dict[str, Any], start_response: Any) -> Any:
        with lock:
            delay = rng.uniform(*latency)
            draw = rng.random()
        time.sleep(delay)
        if draw < refuse + fail:
            status, code, message = (
                ("400 Bad Request", 1, "An unknown error occurred")
                if draw < refuse
                else ("500 Internal Server Error", 2, "Service temporarily unavailable")
            )
            body = json.dumps(
                {
                    "error": {
                        "message": message,
                        "type": "OAuthException",
                        "code": code,
                        "is_transient": True,
                        "fbtrace_id": secrets.token_hex(6),
                    }
                }
            ).encode()
            start_response(
                status,
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        return inner(environ, start_response)

    app.wsgi_app = layer  # type: ignore[method-assign]
    return app


def payload(event_id: str, when: datetime) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256(f"{event_id}@example.com".encode()).hexdigest()
    return {
        "event_name": "Purchase",
        "event_time": int(when.timestamp()),
        "event_id": event_id,
        "action_source": "system_generated",
        "user_data": {"em": [digest]},
        "custom_data": {"value": 10.0, "currency": "EUR", "order_id": event_id},
    }


def run_soak(
    base_url: str,
    *,
    workers: int = 4,
    stores: int = 100,
    events: int = 20_000,
    latency: tuple[float, float] = (0.3, 2.0),
    refuse: float = 0.10,
    fail: float = 0.05,
    cut_seconds: float = 5.0,
    timeout: float = 900.0,
    batch_size: int = 1000,
    lease_seconds: int = 120,
    log: Any = print,
) -> dict[str, Any]:
    """Run the soak on a scratch schema of PostgreSQL ``base_url``; the figures and findings."""
    base = normalize_database_url(base_url)
    schema = f"soak_{secrets.token_hex(4)}"
    admin = create_engine(base)
    with admin.begin() as db:
        db.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    direct = url.render_as_string(hide_password=False)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    key = Fernet.generate_key().decode()
    state = FakeGraph(tokens=set())
    server = LiveServer(faulty_graph(state, latency, refuse, fail)).start()
    procs: list[subprocess.Popen[bytes]] = []
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    runtime: Runtime | None = None
    try:
        migrate.upgrade(direct)
        runtime = Runtime.from_settings(
            Settings(
                env="test",
                database_url=direct,
                encryption_keys=(key,),
                secret_key=secrets.token_hex(16),
            )
        )
        now = datetime.now(UTC)
        when = now - timedelta(minutes=10)
        conns: list[tuple[str, str, str]] = []
        with runtime.sessions.begin() as session:
            for i in range(stores):
                pixel, token = f"{7_000_000_000 + i}", f"tok-{i}-{secrets.token_hex(4)}"
                state.tokens.add(token)
                conn = queries.upsert_connection(
                    session,
                    "shopify",
                    f"soak-{i}.myshopify.com",
                    pixel_id=pixel,
                    meta_token=token,
                )
                conns.append((conn.id, pixel, token))
        rows = [
            {
                "connection_id": conns[i % stores][0],
                "event_name": "Purchase",
                "event_id": f"s{i % stores}-e{i}",
                "event_time": when,
                "payload": payload(f"s{i % stores}-e{i}", when),
                "status": EventStatus.PENDING,
                "attempts": 0,
                "send_count": 0,
                "next_attempt_at": now - timedelta(seconds=1),
                "created_at": now,
            }
            for i in range(events)
        ]
        with runtime.sessions.begin() as session:
            for start in range(0, len(rows), 5000):
                session.execute(insert(Event), rows[start : start + 5000])
        broken_id, broken_pixel, _ = conns[0]
        flaky_id, _, flaky_token = conns[1 % stores]
        foreign = Fernet(Fernet.generate_key()).encrypt(b"tok").decode()
        with runtime.engine.begin() as db:
            db.execute(
                text("UPDATE connections SET meta_token = :t WHERE id = :c"),
                {"t": foreign, "c": broken_id},
            )
        healthy = events - sum(1 for i in range(events) if i % stores == 0)

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("META_", "CONNECTOR_"))
        }
        env.update(
            DATABASE_URL=proxied,
            CONNECTOR_ENCRYPTION_KEYS=key,
            SECRET_KEY=secrets.token_hex(16),
            CONNECTOR_ENV="test",
            CONNECTOR_POLL_INTERVAL="0.2",
            CONNECTOR_BATCH_SIZE=str(batch_size),
            CONNECTOR_LEASE_SECONDS=str(lease_seconds),
            META_GRAPH_URL=server.url,
        )
        started = time.monotonic()
        for w in range(workers):
            with (logs / f"worker-{w}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "connector.cli", "worker"],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

        def sent() -> int:
            assert runtime is not None
            with runtime.sessions() as session:
                return int(
                    session.scalar(
                        select(func.count()).where(Event.status == EventStatus.SENT)
                    )
                    or 0
                )

        def open_rows() -> int:
            assert runtime is not None
            with runtime.sessions() as session:
                return int(
                    session.scalar(
                        select(func.count()).where(
                            Event.status.in_(
                                [EventStatus.PENDING, EventStatus.SENDING]
                            ),
                            Event.connection_id != broken_id,
                        )
                    )
                    or 0
                )

        disconnected = cut = False
        while True:
            done = sent()
            if not disconnected and done >= healthy // 4:
                disconnected = True
                with runtime.sessions.begin() as session:
                    meta_oauth.disconnect(
                        session,
                        queries.get_connection(session, flaky_id),
                        datetime.now(UTC),
                    )
                log(f"{time.monotonic() - started:.1f} s: store 1 disconnected Meta")
                time.sleep(2.0)
                with runtime.sessions.begin() as session:
                    conn = queries.get_connection(session, flaky_id)
                    conn.meta_token = flaky_token
                    queries.reactivate(session, conn)
                log(f"{time.monotonic() - started:.1f} s: store 1 reconnected")
            if not cut and done >= healthy // 2:
                cut = True
                proxy.cut()
                log(
                    f"{time.monotonic() - started:.1f} s: database cut for {cut_seconds:g} s"
                )
                time.sleep(cut_seconds)
                proxy.restore()
                log(f"{time.monotonic() - started:.1f} s: database back")
            if disconnected and cut and open_rows() == 0:
                break
            if time.monotonic() - started > timeout:
                log("timed out")
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
        received = Counter(state.event_ids())
        with runtime.sessions() as session:
            outbox = list(
                session.execute(
                    select(
                        Event.event_id,
                        Event.connection_id,
                        Event.status,
                        Event.last_error,
                    )
                )
            )
        healthy_ids = [e for e, c, _, _ in outbox if c != broken_id]
        twice = sorted(e for e in healthy_ids if received[e] > 1)
        missing = sorted(e for e in healthy_ids if received[e] == 0)
        broken = [(s, err) for _, c, s, err in outbox if c == broken_id]
        rv = {
            "events": events,
            "stores": stores,
            "workers": workers,
            "seconds": round(elapsed, 1),
            "requests": state.calls,
            "healthy_events": len(healthy_ids),
            "sent_exactly_once": sum(1 for e in healthy_ids if received[e] == 1),
            "sent_more_than_once": len(twice),
            "never_sent": len(missing),
            "broken_store_held_with_reason": sum(
                1 for s, err in broken if s == "held" and "decrypted" in (err or "")
            ),
            "broken_store_events": len(broken),
            "broken_store_reached_meta": len(state.event_ids(broken_pixel)),
            "left_in_sending": sum(1 for _, _, s, _ in outbox if s == "sending"),
            "worker_exit_codes": codes,
            "logs": str(logs),
        }
        rv["ok"] = (
            rv["sent_exactly_once"] == rv["healthy_events"]
            and rv["broken_store_held_with_reason"] == rv["broken_store_events"]
            and rv["broken_store_reached_meta"] == 0
            and rv["left_in_sending"] == 0
            and codes == [0] * workers
        )
        return rv
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        server.stop()
        proxy.close()
        if runtime is not None:
            runtime.close()
        with admin.begin() as db:
            db.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--cut-seconds", type=float, default=5.0)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()
    rv = run_soak(
        args.database_url,
        workers=args.workers,
        stores=args.stores,
        events=args.events,
        cut_seconds=args.cut_seconds,
    )
    print(json.dumps(rv, indent=2))
    print("acceptance:", "met" if rv["ok"] else "NOT met")


if __name__ == "__main__":
    main()
