"""How fast POST /webhooks/shopify takes orders, beside a minimal correct receiver.

Every side runs under the very same server settings: the Procfile's web line,
``gunicorn -c gunicorn.conf.py`` (gevent workers, WEB_CONCURRENCY=2, the access log on
stdout, captured to a file), on one scratch PostgreSQL schema.

- **baseline**: a minimal correct receiver, a Flask app that checks
  ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body, constant-time compare),
  parses the JSON, and INSERTs one row (the delivery id, shop, topic, order id, total and
  currency; ``--baseline-row body`` stores the raw body instead) with ON CONFLICT on the
  delivery id, on a pooled psycopg connection in autocommit: one round trip that commits.
- **connector, translation inline**: ``connector.web:create_app()``, migrated with
  ``connector db upgrade``, one Shopify connection added with ``connector connections add``;
  each request translates the order and records its events (the default).
- **connector, translation by the worker**: the same with
  ``CONNECTOR_WEBHOOK_TRANSLATION=worker``: each request records the delivery and its sealed
  body; afterwards the bench translates them as ``connector worker`` does and says how fast.

The load: 2 sender processes x 8 keep-alive connections (16 in all, as ``wrk -c 16``), each
request a signed ``orders/paid`` delivery of the storefront order fixture (28 kB) with its
own order id and X-Shopify-Webhook-Id. Every server stays up and the load goes to each in
turn, for a few rounds (warm-up, then a fixed measured time each), so that whatever else the
machine runs meanwhile falls on every side alike; each round's figures are printed, then all
rounds together. The senders report their own CPU time ("load CPU", of one core), so one can
see they are not the bottleneck.

Which gunicorn worker accepts each of the 16 connections is a race, and a round where one
worker holds 11 of them while the other idles shows in its p99: that is why the rounds are
many and short, and why the per-round figures are printed.

    .venv/bin/python bench/ingest.py [--rounds 5] [--seconds 10] [--warmup 2]
        [--processes 2] [--connections 8] [--baseline-row fields|body]
        [--database-url postgresql://postgres@127.0.0.1/test]

Target (issue 15): connector/baseline throughput >= 0.5, and the connector's p99 < 50 ms.
Afterwards the outbox must hold exactly one Purchase per 200 answer. Figures are printed,
never asserted: timing depends on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHOP = "bench-store.myshopify.com"
SECRET = "shpss_bench_secret"  # noqa: S105 - a throwaway secret for a local run
ORDER = ROOT / "tests" / "fixtures" / "shopify" / "order_storefront.json"
ORDER_ID = b'"id": 5012345678901234567'

_BASELINE_INSERT = {
    "fields": (
        "INSERT INTO baseline_orders (delivery_id, shop, topic, order_id, total, currency)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING"
    ),
    "body": (
        "INSERT INTO baseline_orders (delivery_id, shop, topic, body)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING"
    ),
}


# -- the baseline: a minimal correct receiver ---------------------------------------------


def create_baseline_app() -> Any:
    """HMAC, JSON parse, one INSERT that commits, on a pooled connection; nothing else."""
    import psycopg
    from flask import Flask, request

    url = os.environ["BASELINE_DATABASE_URL"]
    row = os.environ.get("BASELINE_ROW", "fields")
    insert = _BASELINE_INSERT[row]
    key = os.environ["SHOPIFY_API_SECRET"].encode()
    # A pool as small as it gets: idle connections on a stack, one opened when none is idle.
    # Under gevent, list pop/append never interleave, and a connection is in one greenlet's
    # hands at a time; the pool grows to the number of concurrent requests and stays there.
    idle: list[psycopg.Connection[Any]] = []
    app = Flask("baseline")

    @app.post("/webhooks/shopify")
    def receive() -> tuple[str, int]:
        body = request.get_data(cache=False)
        claimed = request.headers.get("X-Shopify-Hmac-Sha256", "").encode("latin-1")
        expected = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, claimed):
            return "", 401
        try:
            order = json.loads(body)
        except ValueError:
            return "", 400
        delivery = request.headers.get("X-Shopify-Webhook-Id", "")
        shop = request.headers.get("X-Shopify-Shop-Domain", "")
        topic = request.headers.get("X-Shopify-Topic", "")
        if row == "fields":
            params: tuple[Any, ...] = (
                delivery,
                shop,
                topic,
                order.get("id"),
                order.get("total_price"),
                order.get("currency"),
            )
        else:
            params = (delivery, shop, topic, body.decode())
        conn = idle.pop() if idle else psycopg.connect(url, autocommit=True)
        try:
            conn.execute(
                insert, params
            )  # autocommit: this statement commits on its own
        except BaseException:
            conn.close()
            raise
        idle.append(conn)
        return "", 200

    return app


def create_baseline_table(database_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE baseline_orders (id bigserial PRIMARY KEY,"
                " delivery_id text NOT NULL UNIQUE, shop text NOT NULL, topic text NOT NULL,"
                " order_id bigint, total numeric, currency text, body text,"
                " received_at timestamptz NOT NULL DEFAULT now())"
            )
        )
    engine.dispose()


# -- the senders ---------------------------------------------------------------------------


@dataclass
class Result:
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    cpu_seconds: float

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def merge(self, other: Result) -> Result:
        statuses = dict(self.statuses)
        for status, count in other.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        return Result(
            max(self.seconds, other.seconds),
            self.latencies + other.latencies,
            statuses,
            self.cpu_seconds + other.cpu_seconds,
        )


def _signed_request(template: bytes, port: int, order_id: int) -> bytes:
    body = template.replace(ORDER_ID, f'"id": {order_id}'.encode())
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    head = (
        "POST /webhooks/shopify HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Shopify-Hmac-Sha256: {base64.b64encode(digest).decode()}\r\n"
        "X-Shopify-Topic: orders/paid\r\n"
        f"X-Shopify-Shop-Domain: {SHOP}\r\n"
        f"X-Shopify-Webhook-Id: bench-{order_id}\r\n"
        "X-Shopify-API-Version: 2026-07\r\n"
        "\r\n"
    )
    return head.encode() + body


def fire(
    port: int, warmup: float, seconds: float, connections: int, first_id: int, out: Any
) -> None:
    """Keep ``connections`` keep-alive connections busy; report (warm-up, measured)."""
    template = ORDER.read_bytes()
    if ORDER_ID not in template:
        raise SystemExit("the order fixture no longer has the expected id")
    counter = iter(range(first_id, first_id + 100_000_000))
    phases: list[tuple[list[float], dict[int, int]]] = [([], {}), ([], {})]

    async def connection(start: float, switch: float, deadline: float) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            payload = _signed_request(template, port, next(counter))
            started = time.perf_counter()
            if started >= deadline:
                break
            status = 0
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length:
                    await reader.readexactly(length)
                if close:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if writer is not None:
                    writer.close()
                reader = writer = None
            done = time.perf_counter()
            latencies, statuses = phases[0 if started < switch else 1]
            latencies.append(done - started)
            statuses[status] = statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    async def run() -> None:
        start = time.perf_counter()
        switch = start + warmup
        deadline = switch + seconds
        await asyncio.gather(
            *(connection(start, switch, deadline) for _ in range(connections))
        )

    cpu = time.process_time()
    asyncio.run(run())
    cpu = time.process_time() - cpu
    # the CPU time is the measured phase's share of the whole run
    share = seconds / (warmup + seconds)
    out.send(
        (
            Result(warmup, *phases[0], cpu * (1 - share)),
            Result(seconds, *phases[1], cpu * share),
        )
    )


def measure(
    port: int,
    warmup: float,
    seconds: float,
    processes: int,
    connections: int,
    first_id: int,
) -> tuple[Result, Result]:
    """(warm-up, measured) results of ``processes`` x ``connections`` senders."""
    pipes = []
    procs = []
    for n in range(processes):
        receiver, sender = multiprocessing.Pipe(duplex=False)
        proc = multiprocessing.Process(
            target=fire,
            args=(
                port,
                warmup,
                seconds,
                connections,
                first_id + n * 100_000_000,
                sender,
            ),
        )
        proc.start()
        pipes.append(receiver)
        procs.append(proc)
    results = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join()
    warm, measured = results[0]
    for w, m in results[1:]:
        warm, measured = warm.merge(w), measured.merge(m)
    return warm, measured


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def gunicorn(app: str, env: dict[str, str], port: int, chdir: Path) -> Iterator[None]:
    """The Procfile's web line (``gunicorn -c gunicorn.conf.py APP``) on a local port."""
    cmd = [
        str(BIN / "gunicorn"),
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(chdir),
        app,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, env={**env, "PORT": str(port)}, stdout=log, stderr=log
        )
        try:
            wait_for_port(port, proc, log)
            time.sleep(1.0)  # let both workers finish booting
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise SystemExit(f"gunicorn did not start:\n{output}") from None
            time.sleep(0.1)


@contextmanager
def scratch_schema(base_url: str) -> Iterator[tuple[str, str]]:
    """A fresh schema in ``base_url``'s database, dropped afterwards.

    Yields its SQLAlchemy URL and its libpq URL (for the baseline's plain psycopg).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from connector.config import normalize_database_url

    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(normalize_database_url(base_url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(normalize_database_url(base_url)).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    try:
        yield (
            url.render_as_string(hide_password=False),
            url.set(drivername="postgresql").render_as_string(hide_password=False),
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def connector_env(database_url: str, instance: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_", "WEB_"))
    }
    env.update(
        DATABASE_URL=database_url,
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        CONNECTOR_INSTANCE_PATH=str(instance),
        SECRET_KEY="bench",  # noqa: S106 - a throwaway key for a local run
        SHOPIFY_API_SECRET=SECRET,
        PYTHONPATH=str(ROOT),
    )
    return env


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "connector"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"connector {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def stored(database_url: str) -> tuple[int, int, int]:
    """(Purchase rows, distinct Purchase event ids, webhook receipts) in the outbox."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT event_id) FROM events"
                    " WHERE event_name = 'Purchase'"
                )
            ).one()
            receipts = conn.scalar(text("SELECT count(*) FROM webhook_receipts"))
            return int(row[0]), int(row[1]), int(receipts or 0)
    finally:
        engine.dispose()


def translate_waiting(env: dict[str, str]) -> tuple[int, float]:
    """What the worker does with the bodies the ``worker`` side left: (bodies, seconds).

    ``connector.inbox.translate_waiting`` in a loop until nothing waits, in this process,
    on the connector's own settings.
    """
    from connector import inbox
    from connector.config import Settings
    from connector.runtime import Runtime

    runtime = Runtime.from_settings(Settings.from_env(env))
    done = 0
    started = time.perf_counter()
    try:
        while True:
            n = inbox.translate_waiting(runtime)
            if not n:
                return done, time.perf_counter() - started
            done += n
    finally:
        runtime.close()


def combined(results: list[Result]) -> Result:
    """Rounds as one run: their requests over their summed time."""
    rv = results[0]
    for more in results[1:]:
        rv = rv.merge(more)
    return Result(
        sum(r.seconds for r in results), rv.latencies, rv.statuses, rv.cpu_seconds
    )


def report(name: str, result: Result) -> None:
    cpu = result.cpu_seconds / result.seconds
    print(
        f"{name:<38}{result.rate:>9.0f}{result.percentile(50):>9.1f}"
        f"{result.percentile(99):>9.1f}{result.requests:>9}{cpu:>10.0%}  "
        f"{dict(sorted(result.statuses.items()))}"
    )


#: the sides, in the order each round runs them: label, what serves it
SIDES = ("baseline", "inline", "worker")
LABELS = {
    "baseline": "baseline",
    "inline": "connector, translation inline",
    "worker": "connector, translation by the worker",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="per round and side"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="per round and side")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="per process")
    parser.add_argument(
        "--baseline-row", choices=sorted(_BASELINE_INSERT), default="fields"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()
    load = (args.warmup, args.seconds, args.processes, args.connections)
    results: dict[str, list[Result]] = {side: [] for side in SIDES}
    warm: dict[str, list[Result]] = {side: [] for side in SIDES}
    with (
        scratch_schema(args.database_url) as (url, libpq_url),
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = connector_env(url, Path(tmp) / "instance")
        run_cli(env, "db", "upgrade")
        run_cli(env, "connections", "add", "shopify", "--shop", SHOP)
        create_baseline_table(url)
        bench = ROOT / "bench"
        envs = {
            "baseline": {
                **env,
                "BASELINE_DATABASE_URL": libpq_url,
                "BASELINE_ROW": args.baseline_row,
            },
            "inline": {**env, "CONNECTOR_WEBHOOK_TRANSLATION": "inline"},
            "worker": {**env, "CONNECTOR_WEBHOOK_TRANSLATION": "worker"},
        }
        apps = {
            "baseline": ("ingest:create_baseline_app()", bench),
            "inline": ("connector.web:create_app()", ROOT),
            "worker": ("connector.web:create_app()", ROOT),
        }
        ports = {side: free_port() for side in SIDES}
        with contextlib.ExitStack() as servers:
            for side in SIDES:
                app, chdir = apps[side]
                servers.enter_context(gunicorn(app, envs[side], ports[side], chdir))
            # Every server stays up; the load goes to one at a time, side after side,
            # round after round, so that whatever else the machine does falls on all.
            for n in range(args.rounds):
                line = []
                for k, side in enumerate(SIDES):
                    first = 1 + (n * len(SIDES) + k) * 1_000_000_000
                    w, m = measure(ports[side], *load, first_id=first)
                    warm[side].append(w)
                    results[side].append(m)
                    line.append(
                        f"{side} {m.rate:.0f} req/s p99 {m.percentile(99):.0f} ms"
                    )
                print(f"round {n + 1}: " + ", ".join(line), flush=True)
        translated, seconds = translate_waiting(envs["worker"])
        purchases, distinct, receipts = stored(url)
    combined_results = {side: combined(results[side]) for side in SIDES}
    connections = args.processes * args.connections
    print(
        f"gunicorn -c gunicorn.conf.py (gevent, 2 workers, access log on) on PostgreSQL; "
        f"{args.processes} sender processes x {args.connections} keep-alive connections "
        f"= {connections}; {args.rounds} rounds, each side in turn "
        f"{args.warmup:.0f} s warm-up + {args.seconds:.0f} s measured; "
        f"baseline stores {args.baseline_row}"
    )
    print(
        f"{'':<38}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'requests':>9}"
        f"{'load CPU':>10}  statuses"
    )
    for side in SIDES:
        report(LABELS[side], combined_results[side])
    base = combined_results["baseline"]
    for side in ("inline", "worker"):
        hook = combined_results[side]
        ratio = hook.rate / base.rate
        p99 = hook.percentile(99)
        met = ratio >= 0.5 and p99 < 50
        print(
            f"{LABELS[side]}: ratio {ratio:.2f} (target >= 0.5), p99 {p99:.1f} ms "
            f"(target < 50): {'target met' if met else 'target NOT met'}"
        )
    accepted = sum(
        r.statuses.get(200, 0)
        for side in ("inline", "worker")
        for r in warm[side] + results[side]
    )
    print(
        f"the worker then translated the {translated} waiting bodies in {seconds:.1f} s "
        f"({translated / seconds if seconds else 0:.0f} per second, one process)"
    )
    ok = purchases == distinct == accepted == receipts
    print(
        f"outbox: {purchases} Purchase rows ({distinct} distinct), {receipts} receipts, "
        f"for {accepted} answers of 200 from both connector sides (warm-up included): "
        f"{'one Purchase per 200' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
