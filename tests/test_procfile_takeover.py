"""The WooCommerce takeover, tried as a stranger's browser against the Procfile's web process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from tests.fakes.server import serve
from tests.fakes.woocommerce import FakeWooCommerce

ROOT = Path(__file__).resolve().parent.parent
PIXEL = "424242424242"


def procfile_web_command() -> str:
    """The ``web:`` line of the Procfile, as the platform runs it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            return command.strip()
    raise AssertionError("the Procfile has no web process")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def web(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The Procfile's web process on a free port, on the test database; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",  # one worker boots faster; the attack needs no more
        "CONNECTOR_ENV": "development",
        "CONNECTOR_INSTANCE_PATH": str(tmp_path / "instance"),
        "DATABASE_URL": settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": ",".join(settings.encryption_keys),
        "SECRET_KEY": settings.secret_key,
        "APP_URL": base,
        # the fake store listens on loopback, which only this development switch admits
        "WOOCOMMERCE_ALLOW_INSECURE_URLS": "1",
    }
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {procfile_web_command()}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "web.log").read_text()
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # still booting
                pass
            assert time.monotonic() < deadline, "the web process did not start"
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def snapshot(runtime: Runtime, connection_id: str, fake: FakeWooCommerce) -> Any:
    with runtime.sessions() as db:
        conn = queries.get_connection(db, connection_id)
        return (
            conn.status,
            conn.platform_key,
            conn.platform_token,
            conn.webhook_secret,
            conn.pixel_id,
            conn.meta_token,
            sorted(fake.keys),
            sorted(fake.webhooks),
        )


def test_a_strangers_takeover_changes_nothing_on_the_procfile_web_process(
    web: str, runtime: Runtime
) -> None:
    """connect with the victim's URL, made-up keys, return?success=1, Meta connect/disconnect: all refused."""
    fake = FakeWooCommerce(require_https_callback=False)
    with serve(fake.app) as store:
        key = fake.add_key()
        with runtime.sessions.begin() as db:
            conn = queries.upsert_connection(
                db,
                "woocommerce",
                store.url,
                platform_key=key.consumer_key,
                platform_token=key.consumer_secret,
                webhook_secret="s" * 48,
                pixel_id=PIXEL,
                meta_token="EAAB-owner-token",
            )
            connection_id = conn.id
        before = snapshot(runtime, connection_id, fake)

        stranger = requests.Session()
        start = stranger.get(
            f"{web}/woocommerce/connect",
            params={"store_url": store.url},
            allow_redirects=False,
            timeout=10,
        )
        assert 302 == start.status_code, start.text
        state = dict(parse_qsl(urlsplit(start.headers["Location"]).query))["user_id"]
        answer = requests.post(
            f"{web}/woocommerce/callback",
            json={
                "key_id": 1,
                "user_id": state,
                "consumer_key": "ck_" + "7" * 40,
                "consumer_secret": "cs_" + "8" * 40,
                "key_permissions": "read_write",
            },
            timeout=10,
        )
        assert 200 == answer.status_code
        page = stranger.get(
            f"{web}/woocommerce/return",
            params={"user_id": state, "success": "1"},
            headers={"Accept": "text/html"},
            timeout=30,
        )
        assert 400 == page.status_code, page.text
        assert "did not accept the keys" in page.text
        for leaked in ("/meta/connect", "token=", connection_id, PIXEL):
            assert leaked not in page.text
        for params in (
            {"connection": connection_id},
            {"connection": connection_id, "token": "9999999999.nonce.00"},
        ):
            assert (
                401
                == stranger.get(
                    f"{web}/meta/connect", params=params, timeout=10
                ).status_code
            )
            assert (
                401
                == stranger.post(
                    f"{web}/meta/disconnect", data=params, timeout=10
                ).status_code
            )
        assert before == snapshot(runtime, connection_id, fake)
        # the only store request: the proof's read with the made-up keys, refused by the store
        assert [("GET", "/wp-json/wc/v3/webhooks")] == [
            (m, p) for m, p, _ in fake.rest_calls
        ]
