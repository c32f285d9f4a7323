"""The Procfile as a host runs it: release, then web and worker as separate processes.

Each process is the Procfile's own command line run through ``sh -c`` (as Heroku does), on
PostgreSQL, talking to a local fake of Meta's Graph API. Processes get SIGTERM the way a host
restarts them: the whole process group, with 30 s to exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import migrate_url
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.test_end_to_end import fresh, shopify_headers

ROOT = Path(__file__).resolve().parent.parent
SECRET = "shpss_rehearsal"
SHOP = "rehearsal.myshopify.com"
PIXEL = "5550001112"
#: Heroku sends SIGKILL 30 s after SIGTERM
HOST_GRACE_SECONDS = 30
#: no step of the rehearsal may take longer than this
STEP_TIMEOUT = 45.0


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {
        kind.strip(): command.strip()
        for kind, _, command in (line.partition(":") for line in lines if line.strip())
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def fresh_database(database_url: str, is_postgres: bool) -> Iterator[str]:
    """An empty PostgreSQL schema of its own: the release phase has something to migrate."""
    if not is_postgres:
        pytest.skip(
            "several web and worker processes share a database only on PostgreSQL"
        )
    schema = f"rehearsal_{os.getpid()}_{int(time.time())}"
    base = make_url(migrate_url(database_url)).set(query={})
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict(
            {"options": f"-csearch_path={schema}"}
        ).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, str]]:
    state = FakeGraph()
    server = LiveServer(make_app(state)).start()
    try:
        yield state, server.url
    finally:
        server.stop()


def host_env(
    database_url: str, graph_url: str, tmp_path: Path, port: int
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_", "PROMETHEUS_"))
    }
    env.update(
        DATABASE_URL=database_url,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECRET_KEY="rehearsal-secret-key",
        CONNECTOR_INSTANCE_PATH=str(tmp_path / "instance"),
        CONNECTOR_POLL_INTERVAL="0.2",
        CONNECTOR_LOG_FORMAT="json",
        SHOPIFY_API_SECRET=SECRET,
        META_GRAPH_URL=graph_url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        # gunicorn's workers keep their metrics in a folder under it: the test's, not /tmp
        TMPDIR=str(tmp_path),
    )
    return env


class Process:
    """One Procfile process, in its own process group, its output in a file."""

    def __init__(self, kind: str, env: dict[str, str], logdir: Path) -> None:
        self.kind = kind
        self.log: IO[bytes] = (logdir / f"{kind}-{time.monotonic_ns()}.log").open("wb")
        self.proc = subprocess.Popen(
            ["sh", "-c", procfile()[kind]],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def terminate(self) -> float:
        """SIGTERM to the whole group, as a host does; seconds until it exited."""
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=HOST_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return float("inf")
        finally:
            self.log.close()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def wait_healthy(base: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base}/healthz did not answer 200 within {STEP_TIMEOUT} s")


@contextmanager
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()


def run_release(env: dict[str, str]) -> None:
    rv = subprocess.run(
        ["sh", "-c", procfile()["release"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert 0 == rv.returncode, rv.stdout + rv.stderr


def add_shop(env: dict[str, str]) -> None:
    rv = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "connections",
            "add",
            "shopify",
            "--shop",
            SHOP,
            "--pixel-id",
            PIXEL,
            "--meta-token",
            "meta-token",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert 0 == rv.returncode, rv.stdout + rv.stderr


class Sender:
    """Delivers signed orders one after another, retrying as Shopify does until it gets 200."""

    def __init__(self, base: str, orders: list[int]) -> None:
        self.base = base
        self.orders = orders
        self.statuses: list[int] = []
        self.unreachable = 0
        self.delivered: list[int] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        template = json.loads(fresh("shopify/order_storefront.json"))
        for order_id in self.orders:
            template["id"] = order_id
            body = json.dumps(template).encode()
            headers = shopify_headers(
                "orders/paid", body, SHOP, webhook_id=f"w-{order_id}", secret=SECRET
            )
            deadline = time.monotonic() + STEP_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    rv = requests.post(
                        f"{self.base}/webhooks/shopify",
                        data=body,
                        headers=headers,
                        timeout=10,
                    )
                except requests.RequestException:
                    self.unreachable += (
                        1  # the web process restarts: the platform retries
                    )
                    time.sleep(0.2)
                    continue
                self.statuses.append(rv.status_code)
                if rv.status_code == 200:
                    self.delivered.append(order_id)
                    break
                time.sleep(0.2)

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(self.delivered) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.delivered) >= n, f"only {len(self.delivered)} of {n} delivered"


def sent_event_ids(state: FakeGraph) -> set[str]:
    with state.lock:
        return {str(r.event_id) for r in state.received if r.pixel_id == PIXEL}


@pytest.mark.slow
def test_release_web_and_worker_survive_restarts_mid_load(
    fresh_database: str, graph: tuple[FakeGraph, str], tmp_path: Path
) -> None:
    """Restarting web and worker with SIGTERM loses nothing and answers no webhook with 5xx."""
    state, graph_url = graph
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = host_env(fresh_database, graph_url, tmp_path, port)
    run_release(env)
    add_shop(env)
    orders = [8_100_000 + i for i in range(60)]
    with processes() as running:
        running += [Process("web", env, tmp_path), Process("worker", env, tmp_path)]
        wait_healthy(base)
        sender = Sender(base, orders)
        sender.thread.start()

        sender.wait_for(15)
        web_exit = running[0].terminate()
        running[0] = Process("web", env, tmp_path)
        wait_healthy(base)

        sender.wait_for(35)
        worker_exit = running[1].terminate()
        running[1] = Process("worker", env, tmp_path)

        sender.thread.join(STEP_TIMEOUT)
        assert sorted(orders) == sorted(sender.delivered)
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(sent_event_ids(state)) < len(orders) and time.monotonic() < deadline:
            time.sleep(0.2)
        final_exits = [p.terminate() for p in running]
    assert [] == [s for s in sender.statuses if s >= 500]
    assert {str(o) for o in orders} == sent_event_ids(state)
    assert web_exit < HOST_GRACE_SECONDS
    assert worker_exit < HOST_GRACE_SECONDS
    assert all(t < HOST_GRACE_SECONDS for t in final_exits)


def test_the_procfile_runs_under_honcho(
    tmp_path: Path, database_url: str, graph: tuple[FakeGraph, str]
) -> None:
    """`honcho start release`, then `honcho start web worker`: /healthz answers, SIGTERM stops both."""
    port = free_port()
    db = (
        database_url
        if database_url.startswith("postgresql")
        else f"sqlite:///{tmp_path / 'honcho.db'}"
    )
    env = host_env(db, graph[1], tmp_path, port)
    honcho = [
        sys.executable,
        "-m",
        "honcho",
        "-f",
        str(ROOT / "Procfile"),
        "-d",
        str(ROOT),
        "--no-colour",
    ]
    release = subprocess.run(
        [*honcho, "start", "release"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert 0 == release.returncode, release.stdout + release.stderr
    assert "database is up to date" in release.stdout
    log = (tmp_path / "honcho.log").open("wb")
    # From the project's folder, as the README says to run it (and as the host runs the app):
    # the web line reads gunicorn.conf.py from there.
    proc = subprocess.Popen(
        [*honcho, "start", "-p", str(port), "web", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=HOST_GRACE_SECONDS) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    output = (tmp_path / "honcho.log").read_text()
    assert "web.1" in output
    assert "worker.1" in output
    assert "Traceback" not in output
