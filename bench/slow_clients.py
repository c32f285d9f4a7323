"""Webhooks answered while slow clients hold connections to the web process.

Migrates a scratch SQLite database, adds one Shopify connection, starts the web command (the
Procfile's ``web:`` line by default, or ``--command``) on a free loopback port, opens
``--slow`` sockets (half dribble their headers a byte at a time, half stop in the middle of
the body), then sends ``--deliveries`` signed Shopify webhooks one after another, each with
Shopify's 5 s limit, and prints how many got 200 in time and their latencies.

    .venv/bin/python bench/slow_clients.py [--slow 6] [--deliveries 10]
    .venv/bin/python bench/slow_clients.py --command \\
        "gunicorn -c /dev/null --bind 127.0.0.1:\\$PORT --workers 2 'connector.web:create_app()'"
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.shopify.signature import sign_body  # noqa: E402
from tests.test_web_edge import SlowClients, free_port, procfile_web_command  # noqa: E402

SECRET = secrets.token_hex(32)  # a fresh Shopify app secret for each run
SHOP = "bench-shop.myshopify.com"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=6)
    parser.add_argument("--deliveries", type=int, default=10)
    parser.add_argument("--command", help="web command; $PORT is replaced")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PORT": str(port),
            "DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "CONNECTOR_INSTANCE_PATH": tmp,
            "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "SECRET_KEY": "bench",
            "SHOPIFY_API_KEY": "bench-key",
            "SHOPIFY_API_SECRET": SECRET,
        }
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "connector", "db", "upgrade"], env=env, check=True)
        subprocess.run(
            [bin_dir / "connector", "connections", "add", "shopify", "--shop", SHOP],
            env=env,
            check=True,
            capture_output=True,
        )
        if args.command:
            argv = shlex.split(args.command.replace("$PORT", str(port)))
            argv = [sys.executable, "-m", "gunicorn", *argv[1:]]
        else:
            argv = procfile_web_command(port)
        print("web:", " ".join(argv[2:]))
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if requests.get(f"{base}/healthz", timeout=3).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            slow = SlowClients(port, args.slow - args.slow // 2, args.slow // 2)
            body = (ROOT / "tests/fixtures/shopify/order.json").read_bytes()
            latencies: list[float | None] = []
            for i in range(args.deliveries):
                started = time.perf_counter()
                try:
                    rv = requests.post(
                        f"{base}/webhooks/shopify",
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Shopify-Topic": "orders/paid",
                            "X-Shopify-Shop-Domain": SHOP,
                            "X-Shopify-Webhook-Id": f"bench-{i}",
                            "X-Shopify-Hmac-Sha256": sign_body(body, SECRET.encode()),
                        },
                        timeout=5,
                    )
                    ok = rv.status_code == 200
                except requests.RequestException:
                    ok = False
                elapsed = time.perf_counter() - started
                latencies.append(elapsed if ok else None)
            slow.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=40)
    answered = [x for x in latencies if x is not None]
    print(
        f"{len(answered)} of {args.deliveries} deliveries got 200 within 5 s "
        f"with {args.slow} slow clients open"
    )
    if answered:
        print(
            f"latency ms: median {sorted(answered)[len(answered) // 2] * 1000:.0f}, "
            f"max {max(answered) * 1000:.0f}"
        )


if __name__ == "__main__":
    main()
