"""How fast POST /webhooks/shopify takes orders, beside a bare Flask endpoint.

Runs gunicorn (2 sync workers, the Procfile's settings without the access log) twice
on the same port settings: once with the connector (``connector.web:create_app()``)
on a scratch PostgreSQL schema migrated with ``connector db upgrade``, once with a
Flask app that only answers 200. A second process fires signed ``orders/paid``
webhooks (the storefront order fixture, a distinct order id and webhook id each) from
16 concurrent senders for 10 seconds at each, then prints requests/s and p50/p99
latency side by side. Every request opens its own connection, as Shopify's do.

    .venv/bin/python bench/ingest.py [--seconds 10] [--senders 16]
        [--database-url postgresql://postgres@127.0.0.1/test]

Target: the webhook path keeps at least 15% of the bare endpoint's throughput, with a
p99 under 50 ms. The script checks the outbox afterwards: one Purchase per 200.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from adapters.shopify.signature import sign_body  # noqa: E402
from connector.config import normalize_database_url  # noqa: E402
from connector.store.models import Event  # noqa: E402

SHOP = "bench-store.myshopify.com"
SECRET = "shpss_bench_secret"  # noqa: S105 - a throwaway secret for a local run
ORDER = ROOT / "tests" / "fixtures" / "shopify" / "order_storefront.json"
ORDER_ID = b'"id": 5012345678901234567'
BIN = Path(sys.executable).parent


def create_bare_app() -> Flask:
    """The baseline: a Flask app whose only route answers 200."""
    app = Flask("bare")

    @app.post("/webhooks/shopify")
    def ok() -> tuple[str, int]:
        return "", 200

    return app


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


# -- the sender process ------------------------------------------------------------------


def fire(port: int, seconds: float, senders: int, first_id: int, out: Any) -> None:
    """Send signed orders/paid deliveries for ``seconds``; report through ``out``."""
    template = ORDER.read_bytes()
    if ORDER_ID not in template:
        raise SystemExit("the order fixture no longer has the expected id")
    counter = iter(range(first_id, first_id + 10_000_000))

    def request() -> bytes:
        order_id = next(counter)
        body = template.replace(ORDER_ID, f'"id": {order_id}'.encode())
        head = (
            "POST /webhooks/shopify HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Shopify-Hmac-Sha256: {sign_body(body, SECRET.encode())}\r\n"
            "X-Shopify-Topic: orders/paid\r\n"
            f"X-Shopify-Shop-Domain: {SHOP}\r\n"
            f"X-Shopify-Webhook-Id: bench-{order_id}\r\n"
            "X-Shopify-API-Version: 2026-07\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body

    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def sender(deadline: float) -> None:
        while time.perf_counter() < deadline:
            payload = request()
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            answer = await reader.read()
            writer.close()
            latencies.append(time.perf_counter() - started)
            status = int(answer[9:12]) if answer[:5] == b"HTTP/" else 0
            statuses[status] = statuses.get(status, 0) + 1

    async def run() -> float:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(sender(deadline) for _ in range(senders)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    out.send((len(latencies), elapsed, latencies, statuses))


def measure(port: int, seconds: float, senders: int, first_id: int) -> Result:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(
        target=fire, args=(port, seconds, senders, first_id, sender)
    )
    proc.start()
    count, elapsed, latencies, statuses = receiver.recv()
    proc.join()
    return Result(count, elapsed, latencies, statuses)


# -- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def gunicorn(
    app: str, env: dict[str, str], port: int, chdir: Path, threads: int
) -> Iterator[None]:
    cmd = [
        str(BIN / "gunicorn"),
        "--workers",
        "2",
        "--threads",
        str(threads),
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(chdir),
        "--log-level",
        "warning",
        app,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
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
def scratch_schema(base_url: str) -> Iterator[str]:
    """A fresh schema in ``base_url``'s database, dropped afterwards."""
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(normalize_database_url(base_url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(normalize_database_url(base_url))
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def connector_env(database_url: str, instance: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_"))
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


def purchases(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Event)) or 0)
    finally:
        engine.dispose()


def report(name: str, result: Result) -> None:
    print(
        f"{name:<22}{result.rate:>10.0f}{result.percentile(50):>10.1f}"
        f"{result.percentile(99):>10.1f}{result.requests:>10}  {result.statuses}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="gunicorn threads per worker (1: the Procfile's sync workers)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"
        ),
    )
    args = parser.parse_args()
    with scratch_schema(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        env = connector_env(url, Path(tmp) / "instance")
        run_cli(env, "db", "upgrade")
        run_cli(env, "connections", "add", "shopify", "--shop", SHOP)
        port = free_port()
        with gunicorn("connector.web:create_app()", env, port, ROOT, args.threads):
            # a short warm-up so both workers have their imports and pools ready
            warm = measure(port, 1.0, args.senders, 1)
            hook = measure(port, args.seconds, args.senders, 10_000_000)
        accepted = warm.statuses.get(200, 0) + hook.statuses.get(200, 0)
        stored = purchases(url)
        bare_port = free_port()
        with gunicorn(
            "ingest:create_bare_app()",
            env,
            bare_port,
            Path(__file__).parent,
            args.threads,
        ):
            measure(bare_port, 1.0, args.senders, 1)
            bare = measure(bare_port, args.seconds, args.senders, 1)
    print(
        f"gunicorn 2 workers x {args.threads} thread(s), {args.senders} concurrent senders, "
        f"{args.seconds:.0f} s, one connection per request"
    )
    print(
        f"{'':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}  statuses"
    )
    report("bare Flask 200", bare)
    report("POST /webhooks/shopify", hook)
    print(f"webhook / bare throughput: {hook.rate / bare.rate:.0%} (target >= 15%)")
    print(f"webhook p99: {hook.percentile(99):.1f} ms (target < 50 ms)")
    print(
        f"Purchase rows stored: {stored} for {accepted} answers of 200 (warm-up included)"
    )


if __name__ == "__main__":
    main()
