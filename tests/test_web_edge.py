"""The Procfile's web process over real HTTP: no secret in its output, slow clients stall nothing.

Each test starts the ``web:`` command of the Procfile as it is written (gunicorn with
``gunicorn.conf.py``) on a free loopback port against the test database, talks to it with
plain sockets, and stops it with SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from adapters.shopify.signature import sign_body
from connector.runtime import Runtime
from connector.store import queries
from tests.conftest import fixture_bytes

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "edge-api-key"
API_SECRET = "edge-api-secret-long-enough-for-hs256-keys"
SHOP = "edge-shop.myshopify.com"


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's ``web:`` line as argv, run with this interpreter's environment."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            command = line.removeprefix("web:").strip()
            break
    else:  # pragma: no cover - the Procfile always has a web line
        raise AssertionError("no web: line in the Procfile")
    command = re.sub(r"\$\{?PORT\}?", str(port), command)
    command = re.sub(r"\$\{WEB_CONCURRENCY:-(\d+)\}", r"\1", command)
    argv = shlex.split(command)
    assert "gunicorn" == argv[0]
    return [sys.executable, "-m", "gunicorn", *argv[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class WebProcess:
    """A running web process and the file its stdout and stderr go to."""

    base: str
    port: int
    proc: subprocess.Popen[bytes]
    output: Path

    def stop(self) -> str:
        """SIGTERM, wait (bounded), and return everything the process wrote."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.output.read_text(errors="replace")


@pytest.fixture
def web(
    database_url: str, encryption_key: str, tmp_path: Path, runtime: Runtime
) -> Iterator[WebProcess]:
    """The Procfile's web process on the test database, with the Shopify app configured."""
    port = free_port()
    output = tmp_path / "web.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": str(port),
        # every level: a secret must not reach even gunicorn's debug lines
        "GUNICORN_CMD_ARGS": "--log-level debug",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "CONNECTOR_ENCRYPTION_KEYS": encryption_key,
        "CONNECTOR_INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "edge-secret-key",
        "APP_URL": "http://127.0.0.1",
        "SHOPIFY_API_KEY": API_KEY,
        "SHOPIFY_API_SECRET": API_SECRET,
        "SHOPIFY_ADMIN_URL_TEMPLATE": "http://127.0.0.1:9/{shop}",
        "META_APP_ID": "1234",
        "META_APP_SECRET": "edge-meta-secret",
    }
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            procfile_web_command(port),
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    rv = WebProcess(f"http://127.0.0.1:{port}", port, proc, output)
    try:
        for _ in range(300):  # up to 30 s on a busy machine
            if proc.poll() is not None:
                raise AssertionError(rv.stop())
            try:
                if requests.get(f"{rv.base}/healthz", timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            threading.Event().wait(0.1)
        else:
            raise AssertionError("the web process did not answer: " + rv.stop())
        yield rv
    finally:
        rv.stop()


# -- item: no secret in any log line ----------------------------------------------------

#: values that must never appear in the process's output, whatever the route or level
SECRETS = {
    "token": "LINKTOKEN0a1b2c3d4e5f",
    "code": "OAUTHCODE9z8y7x6w",
    "state": "STATENONCE5v4u3t2s",
    "hmac": "HMACVALUEdeadbeefcafe",
    "id_token": "eyJhbGciOiJIUzI1NiJ9.SESSIONJWTpayload.sig",
    "user_id": "WOOSTATE1q2w3e4r",
    "session": "SESSIONCOOKIEvalue77",
    "signature": "WEBHOOKSIG0001",
}


@pytest.mark.slow
def test_no_token_code_state_hmac_or_session_reaches_the_web_process_output(
    web: WebProcess,
) -> None:
    """Admin links, OAuth callbacks, session tokens and cookies leave no secret in any line."""
    s = SECRETS
    cookie = {"Cookie": f"session={s['session']}"}
    referer = {
        "Referer": f"https://admin.shopify.com/?code={s['code']}&hmac={s['hmac']}"
    }
    requests_made = [
        f"/meta/connect?connection=abc&token={s['token']}",
        "/shopify/callback?"
        + urlencode(
            {
                "code": s["code"],
                "shop": SHOP,
                "state": s["state"],
                "timestamp": "1700000000",
                "hmac": s["hmac"],
            }
        ),
        f"/shopify/app?shop={SHOP}&id_token={s['id_token']}",
        f"/shopify/status?id_token={s['id_token']}",
        f"/woocommerce/return?user_id={s['user_id']}&success=1",
        f"/meta/callback?code={s['code']}&state={s['state']}",
        f"/admin?token={s['token']}",
        f"/nowhere?signature={s['signature']}&token={s['token']}",
    ]
    for path in requests_made:
        rv = requests.get(
            web.base + path,
            headers={**cookie, **referer},
            timeout=10,
            allow_redirects=False,
        )
        assert rv.status_code < 500, (path, rv.text[:200])
    rv = requests.post(
        f"{web.base}/meta/disconnect?connection=abc&token={s['token']}",
        headers={**cookie, "X-WC-Webhook-Signature": s["signature"]},
        timeout=10,
    )
    assert rv.status_code < 500
    # A request line too long for the server is logged as an error, with its query.
    rv = requests.get(
        f"{web.base}/meta/connect?token={s['token']}&pad=" + "x" * 9000, timeout=10
    )
    assert rv.status_code in {400, 414}
    output = web.stop()
    assert "/meta/connect" in output  # the access log is there...
    assert (
        "DEBUG gunicorn.error" in output
    )  # ...and gunicorn's debug lines, in our format...
    leaked = {name: value for name, value in s.items() if value in output}
    assert {} == leaked, output  # ...and holds no secret


# -- item: slow clients do not stall webhooks -------------------------------------------


class SlowClients:
    """Sockets that dribble their headers a byte at a time, or stop half-way in the body."""

    def __init__(self, port: int, dribbling: int, stalled: int) -> None:
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        self.pending: dict[socket.socket, bytes] = {}
        headers = (
            "POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n"
            + "".join(f"X-Pad-{i}: {'p' * 40}\r\n" for i in range(40))
            + "\r\n"
        ).encode()
        for _ in range(dribbling):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.socks.append(sock)
            self.pending[sock] = headers
        for _ in range(stalled):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(headers + b'{"id": ' + b"1" * 100)  # then nothing more
            self.socks.append(sock)
        self.thread = threading.Thread(target=self._dribble, daemon=True)
        self.thread.start()

    def _dribble(self) -> None:
        # One byte per socket every 50 ms, for at most 60 s: the test ends it long before.
        for _ in range(1200):
            if self.stop.wait(0.05):
                return
            for sock, rest in list(self.pending.items()):
                if not rest:
                    continue
                try:
                    sock.send(rest[:1])
                except OSError:
                    self.pending[sock] = b""
                    continue
                self.pending[sock] = rest[1:]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def shop(runtime: Runtime) -> str:
    """A Shopify connection the web process will find, verified with the app's secret."""
    with runtime.sessions.begin() as s:
        return queries.upsert_connection(s, "shopify", SHOP).id


@pytest.mark.slow
def test_slow_and_idle_clients_do_not_stall_webhooks(
    web: WebProcess, shop: str, make_slow: Callable[..., SlowClients]
) -> None:
    """With 6 slow sockets open, 10 signed Shopify deliveries each get 200 within 5 s.

    Shopify waits 5 s for an answer; with two sync workers, two such sockets stopped every
    delivery until the worker timeout.
    """
    make_slow(web.port, dribbling=3, stalled=3)
    body = fixture_bytes("shopify/order.json")
    answered = []
    for i in range(10):
        rv = requests.post(
            f"{web.base}/webhooks/shopify",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": "orders/paid",
                "X-Shopify-Shop-Domain": SHOP,
                "X-Shopify-Webhook-Id": f"edge-slow-{i}",
                "X-Shopify-Hmac-Sha256": sign_body(body, API_SECRET.encode()),
            },
            timeout=5,  # Shopify's own limit for an answer
        )
        answered.append(rv.status_code)
    assert [200] * 10 == answered


@pytest.fixture
def make_slow() -> Iterator[Callable[..., SlowClients]]:
    made: list[SlowClients] = []

    def factory(port: int, *, dribbling: int, stalled: int) -> SlowClients:
        rv = SlowClients(port, dribbling, stalled)
        made.append(rv)
        return rv

    yield factory
    for slow in made:
        slow.close()
