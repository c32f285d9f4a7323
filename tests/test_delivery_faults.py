"""Delivery under failure, black box: `connector worker` processes against a faulty fake Meta.

Outbox rows are recorded as the webhook path records them; everything after that goes through
the command line (`worker`, `worker --drain`, `events list/show/replay`, `connections add`)
against the fake Graph API on loopback, told to fail the way Meta, proxies and networks fail.
After every scenario each accepted event is sent, dead or held with a reason, and the fake's
record of event ids agrees with the outbox's send counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from connector.events import CanonicalEvent, UserData
from connector.store import queries
from connector.store.db import make_engine, make_sessionmaker
from connector.store.models import Base
from tests.conftest import migrate_url
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.test_end_to_end import connection_row

API_VERSION = "v25.0"
#: every subprocess and every wait is bounded: a hang fails the test instead of the run
COMMAND_TIMEOUT = 60
WAIT_SECONDS = 15.0
FINAL = {"sent", "dead", "held"}


# -- harness -------------------------------------------------------------------------------


@dataclass
class Canned:
    """One answer played instead of Meta's; ``forward`` lets Meta count the events first."""

    status: int
    body: bytes
    content_type: str = "text/html"
    forward: bool = False


@dataclass
class Graph:
    """The fake Graph API on loopback, with answers a proxy or a broken Meta would give."""

    state: FakeGraph
    url: str
    canned: list[Canned] = field(default_factory=list)

    def counts(self, pixel_id: str) -> Counter[str | None]:
        """How many times Meta counted each event id for this pixel."""
        return Counter(self.state.event_ids(pixel_id))


def _discard_start(*_args: Any, **_kwargs: Any) -> Callable[[bytes], object]:
    """A WSGI start_response that throws the fake's own answer away."""
    return lambda _data: None


@pytest.fixture(scope="module")
def graph() -> Iterator[Graph]:
    """The fake Graph API behind a layer that can replace its next answers."""
    state = FakeGraph()
    app = make_app(state)
    holder = Graph(state=state, url="")
    inner = app.wsgi_app

    def steered(environ: dict[str, Any], start_response: Any) -> Any:
        with state.lock:
            canned = holder.canned.pop(0) if holder.canned else None
        if canned is None:
            return inner(environ, start_response)
        if canned.forward:
            for _ in inner(environ, _discard_start):
                pass
        start_response(
            f"{canned.status} X",
            [
                ("Content-Type", canned.content_type),
                ("Content-Length", str(len(canned.body))),
            ],
        )
        return [canned.body]

    app.wsgi_app = steered  # type: ignore[method-assign]
    server = LiveServer(app).start()
    holder.url = server.url
    try:
        yield holder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test database, for recording deliveries and letting time pass."""
    eng = make_engine(migrate_url(database_url))
    _wipe(eng)
    try:
        yield eng
    finally:
        _wipe(eng)
        eng.dispose()


def _wipe(eng: Engine) -> None:
    with eng.begin() as conn:
        for tbl in reversed(Base.metadata.sorted_tables):
            conn.execute(tbl.delete())


@pytest.fixture(scope="module")
def env(
    database_url: str,
    graph: Graph,
    engine: Engine,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment every `connector` process of this module runs with."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_"))
    }
    environ.update(
        DATABASE_URL=database_url,
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECRET_KEY="faults-secret-key",
        CONNECTOR_INSTANCE_PATH=str(tmp_path_factory.mktemp("instance")),
        CONNECTOR_POLL_INTERVAL="0.2",
        META_GRAPH_URL=graph.url,
        META_API_VERSION=API_VERSION,
        PYTHONUNBUFFERED="1",
    )
    return environ


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def connector(env: dict[str, str]) -> Run:
    """Run `connector ARGS...`; fails the test on an unexpected exit status."""

    def run(
        *args: str, expect: int = 0, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "connector.cli", *args],
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert proc.returncode == expect, (
            f"connector {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return proc

    return run


def spawn(env: dict[str, str], *args: str, **extra: str) -> subprocess.Popen[str]:
    """Start `connector ARGS...` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "connector.cli", *args],
        env={**env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def add_connection(connector: Run, graph: Graph, pixel: str, token: str) -> str:
    """A Shopify connection of its own for one scenario; its id."""
    graph.state.tokens.add(token)
    proc = connector(
        "connections",
        "add",
        "shopify",
        "--shop",
        f"faults-{pixel}.myshopify.com",
        "--pixel-id",
        pixel,
        "--meta-token",
        token,
    )
    return proc.stdout.strip().splitlines()[-1].strip()


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def record(
    engine: Engine,
    conn_id: str,
    event_ids: Iterable[str],
    *,
    age: timedelta = timedelta(hours=2),
    unhashed: Iterable[str] = (),
) -> list[str]:
    """Record one accepted delivery with a Purchase per event id, as the webhook path does."""
    ids = list(event_ids)
    bad = set(unhashed)
    when = datetime.now(UTC).replace(microsecond=0) - age
    events = [
        CanonicalEvent(
            event_name="Purchase",
            event_id=eid,
            event_time=when,
            action_source="system_generated",
            user_data=UserData(
                # an address that is not hashed: Meta refuses the event, the request with it
                em=(f"{eid}@shop.example",) if eid in bad else (_hash(f"{eid}@x.ex"),),
                external_id=(_hash(eid),),
            ),
        )
        for eid in ids
    ]
    receipt = queries.ReceiptIn(
        platform="shopify",
        connection_id=conn_id,
        delivery_id=uuid.uuid4().hex,
        topic="orders/paid",
    )
    with make_sessionmaker(engine).begin() as session:
        accepted = queries.record_delivery(session, receipt, events)
    assert len(accepted.new_events) == len(ids)
    return ids


def let_time_pass(engine: Engine, conn_id: str) -> None:
    """Make every retry and backoff of this connection due now, as if the wait were over."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE events SET next_attempt_at = :t "
                "WHERE connection_id = :c AND status = 'pending'"
            ),
            {"t": past, "c": conn_id},
        )
        conn.execute(
            text("UPDATE connections SET backoff_until = NULL WHERE id = :c"),
            {"c": conn_id},
        )


def drain(connector: Run, *args: str, **extra: str) -> dict[str, Any]:
    """`connector worker --drain`; the counts it prints on its last line."""
    proc = connector("worker", "--drain", *args, extra=extra)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def rows_of(connector: Run, conn_id: str) -> list[dict[str, Any]]:
    """Every outbox row of a connection, from `events list --json`."""
    proc = connector(
        "events", "list", "--connection", conn_id, "--limit", "5000", "--json"
    )
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def settle(
    connector: Run, engine: Engine, conn_id: str, *args: str
) -> list[dict[str, Any]]:
    """Drain, letting retry waits pass, until no row is pending or leased; the rows then."""
    for _ in range(8):
        drain(connector, *args)
        rows = rows_of(connector, conn_id)
        if all(r["status"] in FINAL for r in rows):
            return rows
        let_time_pass(engine, conn_id)
    pytest.fail(f"rows never settled: {rows}")


def assert_accounted(
    rows: list[dict[str, Any]], graph: Graph, pixel: str, expected: Iterable[str]
) -> None:
    """Nothing lost; every dead or held row says why; Meta's counts never exceed send_count."""
    assert sorted(r["event_id"] for r in rows) == sorted(expected)
    counts = graph.counts(pixel)
    for r in rows:
        assert r["status"] in FINAL, r
        if r["status"] == "sent":
            assert 1 <= counts[r["event_id"]] <= r["send_count"], (r, counts)
        else:
            assert len(r["last_error"] or "") > 20, r
    assert set(counts) <= {r["event_id"] for r in rows}


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds, for at most WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- answers that are not Meta's -------------------------------------------------------------


def test_html_errors_and_a_non_json_200_are_retried_until_sent(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """A 500 and a 503 in HTML and a 200 that is not JSON are retried; the re-send is counted."""
    pixel = "4100000001"
    conn_id = add_connection(connector, graph, pixel, "tok-html")
    ids = record(engine, conn_id, [f"html-{i}" for i in range(5)])
    page = b"<html><body><h1>Service Unavailable</h1></body></html>"
    graph.canned.extend(
        [
            Canned(500, b"<html><body>Internal Server Error</body></html>"),
            Canned(503, page),
            Canned(200, b"OK", content_type="text/plain", forward=True),
        ]
    )
    first = drain(connector)
    assert (first["sent"], first["dead"], first["held"]) == (0, 0, 0)
    pending = rows_of(connector, conn_id)
    assert {r["status"] for r in pending} == {"pending"}
    assert all("HTTP 500" in r["last_error"] for r in pending)
    rows = settle(connector, engine, conn_id)
    assert not graph.canned
    assert {r["status"] for r in rows} == {"sent"}
    assert_accounted(rows, graph, pixel, ids)
    # Meta counted the events behind the unreadable 200, and once more on the retry.
    assert set(graph.counts(pixel).values()) == {2}


def test_an_answer_that_comes_too_late_is_a_counted_re_send(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Meta counting a request whose answer came after the client gave up shows in send_count."""
    pixel = "4100000002"
    conn_id = add_connection(connector, graph, pixel, "tok-late")
    ids = record(engine, conn_id, [f"late-{i}" for i in range(3)])
    graph.state.fail_next(1, "timeout", seconds=1.5)
    stats = drain(connector, CONNECTOR_HTTP_TIMEOUT="0.5")
    assert stats["retried"] == 3
    wait_for(lambda: graph.state.in_flight == 0, "the slow answer to finish")
    rows = settle(connector, engine, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 2)}
    assert set(graph.counts(pixel).values()) == {2}


def test_meta_counting_fewer_events_than_sent_is_recorded(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """A 200 with events_received below the batch size is a visible mismatch, not a retry."""
    pixel = "4100000003"
    conn_id = add_connection(connector, graph, pixel, "tok-short")
    ids = record(engine, conn_id, [f"short-{i}" for i in range(10)])
    graph.state.fail_next(1, "short")
    stats = drain(connector)
    assert (stats["sent"], stats["mismatches"], stats["requests"]) == (10, 1, 1)
    rows = rows_of(connector, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}
    shown = json.loads(connector("events", "show", str(rows[0]["id"])).stdout)
    assert shown["events_received"] == 9
    assert shown["fbtrace_id"]


# -- Meta's refusals ---------------------------------------------------------------------------


def test_one_invalid_event_among_a_thousand_is_dead_and_the_rest_go_once(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """A 400 for one unhashed address in a batch of 1000 dead-letters it alone."""
    pixel = "4100000004"
    conn_id = add_connection(connector, graph, pixel, "tok-split")
    ids = [f"split-{i:04d}" for i in range(1000)]
    record(engine, conn_id, ids, unhashed=["split-0637"])
    stats = drain(connector)
    assert (stats["sent"], stats["dead"]) == (999, 1)
    rows = rows_of(connector, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    [dead] = [r for r in rows if r["status"] == "dead"]
    assert dead["event_id"] == "split-0637"
    assert dead["last_error"].startswith("invalid")
    assert "user_data.em" in dead["last_error"]
    counts = graph.counts(pixel)
    assert "split-0637" not in counts
    assert set(counts.values()) == {1}
    assert {r["send_count"] for r in rows if r["status"] == "sent"} == {1}


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80004])
def test_a_rate_limit_backs_the_connection_off_and_loses_nothing(
    connector: Run, graph: Graph, engine: Engine, code: int
) -> None:
    """Meta's rate-limit codes back the connection off; its events wait, then go once."""
    pixel = f"42000{code:05d}"
    conn_id = add_connection(connector, graph, pixel, f"tok-rate-{code}")
    ids = record(engine, conn_id, [f"rate-{code}-{i}" for i in range(4)])
    graph.state.fail_next(1, "rate_limit", code=code)
    stats = drain(connector, "--batch-size", "2")
    # the throttled batch waits, and so does the next one of the connection, unsent
    assert (stats["rate_limited"], stats["requests"]) == (4, 1)
    assert (stats["sent"], stats["dead"], stats["held"]) == (0, 0, 0)
    # while the backoff lasts another worker sends nothing of this connection
    again = drain(connector)
    assert again["requests"] == 0
    rows = rows_of(connector, conn_id)
    assert {r["status"] for r in rows} == {"pending"}
    assert sum(f"code {code}" in (r["last_error"] or "") for r in rows) == 4
    assert connection_row(connector, conn_id)["status"] == "active"
    assert not graph.counts(pixel)
    let_time_pass(engine, conn_id)
    rows = settle(connector, engine, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}
    assert set(graph.counts(pixel).values()) == {1}


def test_a_revoked_token_holds_until_a_new_one_sends_exactly_once(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Meta's 190 holds the events and flags the connection; `connections add --meta-token` sends."""
    pixel = "4100000005"
    conn_id = add_connection(connector, graph, pixel, "tok-old-190")
    ids = record(engine, conn_id, [f"revoked-{i}" for i in range(3)])
    graph.state.fail_next(1, "revoked")
    stats = drain(connector)
    assert stats["held"] == 3
    rows = rows_of(connector, conn_id)
    assert {r["status"] for r in rows} == {"held"}
    assert all("reconnect" in r["last_error"] for r in rows)
    conn = connection_row(connector, conn_id)
    assert conn["status"] == "needs_reconnect"
    assert "190" in conn["status_reason"]
    later = record(engine, conn_id, ["revoked-later"])
    drain(connector)
    assert not graph.counts(pixel)
    assert rows_of(connector, conn_id)[0]["status"] == "held"
    graph.state.tokens.add("tok-new-190")
    connector(
        "connections",
        "add",
        "shopify",
        "--shop",
        f"faults-{pixel}.myshopify.com",
        "--meta-token",
        "tok-new-190",
    )
    assert connection_row(connector, conn_id)["status"] == "active"
    rows = settle(connector, engine, conn_id)
    assert_accounted(rows, graph, pixel, ids + later)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}
    assert set(graph.counts(pixel).values()) == {1}


def test_a_pixel_that_does_not_exist_holds_the_connection(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Code 100 subcode 33 holds the events with a reason naming the pixel, and nothing dies."""
    pixel, good = "4100000006", "4100000007"
    conn_id = add_connection(connector, graph, pixel, "tok-pixel")
    ids = record(engine, conn_id, [f"pixel-{i}" for i in range(3)])
    graph.state.pixels = {good}
    try:
        stats = drain(connector)
        assert (stats["held"], stats["dead"], stats["sent"]) == (3, 0, 0)
        rows = rows_of(connector, conn_id)
        assert {r["status"] for r in rows} == {"held"}
        assert all("pixel does not exist" in r["last_error"] for r in rows)
        assert connection_row(connector, conn_id)["status"] == "needs_reconnect"
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            f"faults-{pixel}.myshopify.com",
            "--pixel-id",
            good,
            "--meta-token",
            "tok-pixel",
        )
        rows = settle(connector, engine, conn_id)
    finally:
        graph.state.pixels = None
    assert_accounted(rows, graph, good, ids)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}
    assert not graph.counts(pixel)


def test_events_too_old_or_from_the_future_are_dead_and_old_ones_not_replayed(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Events past Meta's 7 days or ahead of the clock are dead with a reason, never sent."""
    pixel = "4100000008"
    conn_id = add_connection(connector, graph, pixel, "tok-time")
    old = record(engine, conn_id, ["time-old"], age=timedelta(days=8))
    future = record(engine, conn_id, ["time-future"], age=-timedelta(hours=1))
    fine = record(engine, conn_id, ["time-fine"])
    stats = drain(connector)
    assert (stats["sent"], stats["dead"]) == (1, 2)
    rows = {r["event_id"]: r for r in rows_of(connector, conn_id)}
    assert rows[old[0]]["status"] == "dead"
    assert rows[old[0]]["last_error"].startswith("too_old")
    assert "7 days" in rows[old[0]]["last_error"]
    assert rows[future[0]]["status"] == "dead"
    assert rows[future[0]]["last_error"].startswith("future")
    assert rows[fine[0]]["status"] == "sent"
    replay = connector("events", "replay", str(rows[old[0]]["id"]))
    assert "0 event(s) back to pending" in replay.stdout
    assert "7-day" in replay.stderr
    drain(connector)
    assert_accounted(list(rows.values()), graph, pixel, old + future + fine)
    assert graph.counts(pixel) == Counter({"time-fine": 1})
    assert rows_of(connector, conn_id)[-1]["status"] == "dead"


# -- the network and the worker failing ---------------------------------------------------------


def test_meta_unreachable_then_back_sends_each_event_once(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Connection refused is retried with a readable reason; once Meta is back each event goes once."""
    pixel = "4100000009"
    conn_id = add_connection(connector, graph, pixel, "tok-refused")
    ids = record(engine, conn_id, [f"refused-{i}" for i in range(5)])
    nowhere = f"http://127.0.0.1:{_free_port()}"
    stats = drain(connector, META_GRAPH_URL=nowhere)
    assert (stats["retried"], stats["sent"], stats["dead"]) == (5, 0, 0)
    rows = rows_of(connector, conn_id)
    assert {r["status"] for r in rows} == {"pending"}
    assert all("could not reach Meta" in r["last_error"] for r in rows)
    let_time_pass(engine, conn_id)
    rows = settle(connector, engine, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    assert {r["status"] for r in rows} == {"sent"}
    assert set(graph.counts(pixel).values()) == {1}


def test_sigterm_mid_batch_finishes_the_batch_and_exits_cleanly(
    connector: Run, graph: Graph, engine: Engine, env: dict[str, str]
) -> None:
    """SIGTERM while a request is in flight: the answer is recorded, exit 0, nothing leased."""
    pixel = "4100000010"
    conn_id = add_connection(connector, graph, pixel, "tok-term")
    ids = record(engine, conn_id, [f"term-{i}" for i in range(20)])
    graph.state.fail_next(1, "delay", seconds=2.0)
    worker = spawn(env, "worker", "--batch-size", "10")
    try:
        wait_for(lambda: graph.state.in_flight > 0, "the worker's first request")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    rows = rows_of(connector, conn_id)
    assert {r["status"] for r in rows} <= {"sent", "pending"}
    for r in rows:
        shown = json.loads(connector("events", "show", str(r["id"])).stdout)
        assert shown["lease_owner"] is None
        if r["status"] == "pending":
            break
    assert sum(r["status"] == "sent" for r in rows) >= 10
    rows = settle(connector, engine, conn_id)
    assert_accounted(rows, graph, pixel, ids)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}
    assert set(graph.counts(pixel).values()) == {1}


def test_sigkill_mid_batch_another_worker_re_sends_after_the_lease(
    connector: Run, graph: Graph, engine: Engine, env: dict[str, str]
) -> None:
    """A worker killed mid-request loses its lease; the next one re-sends with the same event ids."""
    pixel = "4100000011"
    conn_id = add_connection(connector, graph, pixel, "tok-kill")
    ids = record(engine, conn_id, [f"kill-{i}" for i in range(6)])
    graph.state.fail_next(1, "delay", seconds=1.0)
    worker = spawn(env, "worker", "--drain", "--lease-seconds", "2")
    try:
        wait_for(lambda: graph.state.in_flight > 0, "the worker's request")
        worker.kill()
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL
    wait_for(lambda: graph.state.in_flight == 0, "Meta to finish the orphaned request")
    rows = rows_of(connector, conn_id)
    assert {r["status"] for r in rows} == {"sending"}

    def all_sent() -> bool:
        drain(connector)
        return {r["status"] for r in rows_of(connector, conn_id)} == {"sent"}

    wait_for(all_sent, "the lease to expire and a second worker to send")
    rows = rows_of(connector, conn_id)
    assert sorted(r["event_id"] for r in rows) == sorted(ids)
    # Meta got the orphaned request and the re-send, both with the same event ids.
    assert graph.counts(pixel) == Counter({eid: 2 for eid in ids})


def test_random_timeouts_and_errors_lose_nothing(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """A third of Meta's answers failing at random leaves every event sent, re-sends counted."""
    pixel = "4100000012"
    conn_id = add_connection(connector, graph, pixel, "tok-random")
    ids = record(engine, conn_id, [f"random-{i:03d}" for i in range(60)])
    graph.state.fail_randomly(0.34, ("timeout", "500", "html"), seed=7)
    try:
        rows = settle(
            connector, engine, conn_id, "--batch-size", "6", "--lease-seconds", "30"
        )
        for _ in range(8):
            if {r["status"] for r in rows} == {"sent"}:
                break
            let_time_pass(engine, conn_id)
            rows = settle(connector, engine, conn_id, "--batch-size", "6")
    finally:
        graph.state.fail_randomly(0.0)
    wait_for(lambda: graph.state.in_flight == 0, "slow answers to finish")
    assert {r["status"] for r in rows} == {"sent"}
    assert_accounted(rows, graph, pixel, ids)


# -- the database failing ----------------------------------------------------------------------


def _with_application_name(database_url: str, name: str) -> str:
    url = make_url(database_url)
    return url.update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def _sent(engine: Engine, conn_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM events WHERE connection_id = :c AND status = 'sent'"
                ),
                {"c": conn_id},
            ).scalar_one()
        )


def _terminate(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :n"
                ),
                {"n": name},
            ).all()
        )


def test_a_worker_survives_its_database_connections_being_killed(
    connector: Run,
    graph: Graph,
    engine: Engine,
    env: dict[str, str],
    database_url: str,
) -> None:
    """PostgreSQL dropping the worker's connections: it reconnects and keeps sending (PG only)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("terminating a backend needs PostgreSQL")
    pixel = "4100000013"
    conn_id = add_connection(connector, graph, pixel, "tok-pgkill")
    name = f"qa_faults_{uuid.uuid4().hex[:10]}"
    before = record(engine, conn_id, [f"pg-before-{i}" for i in range(3)])
    worker = spawn(
        env, "worker", DATABASE_URL=_with_application_name(env["DATABASE_URL"], name)
    )
    try:
        wait_for(lambda: _sent(engine, conn_id) == 3, "the worker to send the first")
        wait_for(lambda: _terminate(engine, name) > 0, "the worker's backends")
        after = record(engine, conn_id, [f"pg-after-{i}" for i in range(3)])
        wait_for(lambda: _sent(engine, conn_id) == 6, "the worker to send again")
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    rows = rows_of(connector, conn_id)
    assert_accounted(rows, graph, pixel, before + after)
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}


# -- regressions: scenarios that once lost a count or stuck events -----------------------


def test_fixing_the_pixel_alone_releases_events_held_for_a_missing_pixel(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """After code 100/33, `connections add --pixel-id GOOD` should let the held events go."""
    pixel, good = "5100000001", "5100000002"
    conn_id = add_connection(connector, graph, pixel, "tok-bug-pixel")
    ids = record(engine, conn_id, [f"bugpixel-{i}" for i in range(3)])
    graph.state.pixels = {good}
    try:
        drain(connector)
        assert {r["status"] for r in rows_of(connector, conn_id)} == {"held"}
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            f"faults-{pixel}.myshopify.com",
            "--pixel-id",
            good,
        )
        print("after --pixel-id:", connection_row(connector, conn_id))
        drain(connector)
        rows = rows_of(connector, conn_id)
    finally:
        graph.state.pixels = None
    print(rows)
    assert {r["status"] for r in rows} == {"sent"}
    assert graph.counts(good) == Counter({e: 1 for e in ids})


def test_a_re_send_after_sigkill_shows_in_send_count(
    connector: Run, graph: Graph, engine: Engine, env: dict[str, str]
) -> None:
    """Meta counted each event twice (orphaned request + re-send): send_count should say 2."""
    pixel = "5100000003"
    conn_id = add_connection(connector, graph, pixel, "tok-bug-kill")
    ids = record(engine, conn_id, [f"bugkill-{i}" for i in range(3)])
    graph.state.fail_next(1, "delay", seconds=1.0)
    worker = spawn(env, "worker", "--drain", "--lease-seconds", "2")
    try:
        wait_for(lambda: graph.state.in_flight > 0, "the request")
        worker.kill()
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=10)
    wait_for(lambda: graph.state.in_flight == 0, "Meta")

    def all_sent() -> bool:
        drain(connector)
        return {r["status"] for r in rows_of(connector, conn_id)} == {"sent"}

    wait_for(all_sent, "the re-send")
    rows = rows_of(connector, conn_id)
    print([(r["event_id"], r["send_count"]) for r in rows], graph.counts(pixel))
    assert graph.counts(pixel) == Counter({e: 2 for e in ids})
    assert {r["send_count"] for r in rows} == {2}


def test_connection_refused_is_not_counted_as_a_send(
    connector: Run, graph: Graph, engine: Engine
) -> None:
    """Meta never saw a refused connection: send_count should stay at the real number, 1."""
    pixel = "5100000004"
    conn_id = add_connection(connector, graph, pixel, "tok-bug-refused")
    record(engine, conn_id, ["bugrefused-0"])
    drain(connector, META_GRAPH_URL=f"http://127.0.0.1:{_free_port()}")
    let_time_pass(engine, conn_id)
    rows = settle(connector, engine, conn_id)
    print(rows, graph.counts(pixel))
    assert graph.counts(pixel) == Counter({"bugrefused-0": 1})
    assert rows[0]["send_count"] == 1


def test_database_dropped_while_a_request_is_in_flight(
    connector: Run, graph: Graph, engine: Engine, env: dict[str, str]
) -> None:
    """PostgreSQL dropping the worker's connection mid-request: the answer is still recorded."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    pixel = "5100000005"
    conn_id = add_connection(connector, graph, pixel, "tok-bug-pg")
    name = f"qa_bug_{uuid.uuid4().hex[:10]}"
    ids = record(engine, conn_id, [f"bugpg-{i}" for i in range(3)])
    graph.state.fail_next(1, "delay", seconds=1.5)
    worker = spawn(
        env,
        "worker",
        "--lease-seconds",
        "3",
        DATABASE_URL=_with_application_name(env["DATABASE_URL"], name),
    )
    try:
        wait_for(lambda: graph.state.in_flight > 0, "the request")
        print("terminated", _terminate(engine, name))
        wait_for(lambda: _sent(engine, conn_id) == 3, "sent")
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)
    rows = rows_of(connector, conn_id)
    print([(r["event_id"], r["send_count"]) for r in rows], graph.counts(pixel))
    print(err[-3000:])
    assert graph.counts(pixel) == Counter({e: 1 for e in ids})
