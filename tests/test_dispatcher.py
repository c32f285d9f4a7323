"""The dispatcher: claim, send, classify, retry, hold and dead-letter, against the fake Graph API."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from connector import dispatcher, registry
from connector.config import Settings
from connector.platform import PeriodicJob
from connector.retry import RetryPolicy
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer, serve

PIXEL = "1234567890"
TOKEN = "meta-token"
ROOT = Path(__file__).resolve().parent.parent
#: retries in tests come back within milliseconds
FAST = RetryPolicy(
    base=timedelta(milliseconds=20),
    cap=timedelta(milliseconds=200),
    rate_limit_base=timedelta(milliseconds=200),
    rate_limit_cap=timedelta(milliseconds=400),
)


# -- helpers (the CLI tests use them too) ----------------------------------------------


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def meta_event(
    event_id: str, *, event_time: datetime, event_name: str = "Purchase"
) -> dict[str, Any]:
    """A website event as the outbox stores it: hashes only, and what Meta needs for the web."""
    return {
        "event_name": event_name,
        "event_time": int(event_time.timestamp()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop-a.example/checkouts/thank_you",
        "user_data": {
            "em": [sha(f"{event_id}@example.com")],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "custom_data": {"value": 19.99, "currency": "EUR", "order_id": event_id},
    }


def add_connection(
    runtime: Runtime,
    store: str = "shop-a.myshopify.com",
    *,
    pixel_id: str | None = PIXEL,
    meta_token: str | None = TOKEN,
    **fields: Any,
) -> str:
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session,
            "shopify",
            store,
            pixel_id=pixel_id,
            meta_token=meta_token,
        )
        # Set after the upsert, which turns an uninstalled store active again.
        for name, value in fields.items():
            setattr(conn, name, value)
        return conn.id


def add_events(
    runtime: Runtime,
    connection_id: str,
    n: int,
    *,
    prefix: str = "order-",
    event_time: datetime | None = None,
    payload: Callable[[str, datetime], dict[str, Any]] = lambda i, t: meta_event(
        i, event_time=t
    ),
    status: str = EventStatus.PENDING,
    **columns: Any,
) -> list[str]:
    """Insert ``n`` due outbox rows in bulk; returns their event ids."""
    now = datetime.now(UTC)
    when = event_time or now - timedelta(minutes=5)
    ids = [f"{prefix}{i}" for i in range(n)]
    rows = [
        {
            "connection_id": connection_id,
            "event_name": "Purchase",
            "event_id": event_id,
            "event_time": when,
            "payload": payload(event_id, when),
            "status": status,
            "attempts": 0,
            "send_count": 0,
            "next_attempt_at": now - timedelta(seconds=1),
            "created_at": now,
            **columns,
        }
        for event_id in ids
    ]
    with runtime.sessions.begin() as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(Event), rows[start : start + 5000])
    return ids


def status_counts(runtime: Runtime) -> dict[str, int]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Event.status, func.count()).group_by(Event.status)
        )
        return {status: int(n) for status, n in rows}


def events_by_id(runtime: Runtime) -> dict[str, Event]:
    with runtime.sessions() as session:
        return {e.event_id: e for e in session.scalars(select(Event))}


def get_connection(runtime: Runtime, conn_id: str) -> Connection:
    with runtime.sessions() as session:
        return queries.get_connection(session, conn_id)


@contextmanager
def fake_graph(
    state: FakeGraph | None = None,
) -> Iterator[tuple[FakeGraph, LiveServer]]:
    """The fake Graph API on a loopback port."""
    state = state if state is not None else FakeGraph(tokens={TOKEN})
    with serve(make_app(state)) as server:
        yield state, server


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, LiveServer]]:
    with fake_graph() as pair:
        yield pair


@pytest.fixture
def worker_runtime(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
) -> Runtime:
    """The test runtime, its settings pointed at the fake Graph API."""
    settings = make_settings(meta_graph_url=graph[1].url, http_timeout=2.0)
    return replace(runtime, settings=settings)


def drain(runtime: Runtime, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("policy", FAST)
    rv = dispatcher.run_worker(runtime=runtime, drain=True, **kwargs)
    assert rv is not None
    return rv


def drain_until_settled(
    runtime: Runtime, deadline_s: float = 60.0, **kwargs: Any
) -> None:
    """Drain again whenever retries come due, until no row is pending or sending."""
    deadline = time.monotonic() + deadline_s
    while True:
        counts = status_counts(runtime)
        if not counts.get("pending") and not counts.get("sending"):
            return
        assert time.monotonic() < deadline, f"outbox did not settle: {counts}"
        drain(runtime, **kwargs)
        time.sleep(0.05)


# -- sending ----------------------------------------------------------------------------


def test_due_events_are_sent_once_with_metas_answer(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Every due row goes out once and records events_received, fbtrace_id and sent_at."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    ids = add_events(worker_runtime, conn_id, 30)
    summary = drain(worker_runtime)
    assert summary["sent"] == 30
    assert summary["requests"] == 1
    assert sorted(state.event_ids(PIXEL)) == sorted(ids)
    for row in events_by_id(worker_runtime).values():
        assert row.status == EventStatus.SENT
        assert row.events_received == 30
        assert row.fbtrace_id
        assert row.sent_at is not None
        assert row.send_count == 1
        assert row.lease_owner is None


def test_batches_hold_at_most_batch_size_events(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
) -> None:
    """A backlog goes out in requests of at most batch_size events."""
    state, server = graph
    state.keep_bodies = True
    rt = replace(
        runtime, settings=make_settings(meta_graph_url=server.url, batch_size=40)
    )
    conn_id = add_connection(rt)
    add_events(rt, conn_id, 100)
    assert drain(rt)["requests"] == 3
    assert sorted(len(b["data"]) for b in state.bodies) == [20, 40, 40]


def test_each_connection_goes_to_its_own_pixel(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Rows are grouped by connection and posted to that connection's pixel."""
    state, _ = graph
    a = add_connection(worker_runtime, "shop-a.myshopify.com", pixel_id="111")
    b = add_connection(worker_runtime, "shop-b.myshopify.com", pixel_id="222")
    ids_a = add_events(worker_runtime, a, 5, prefix="a-")
    ids_b = add_events(worker_runtime, b, 7, prefix="b-")
    drain(worker_runtime)
    assert sorted(state.event_ids("111")) == sorted(ids_a)
    assert sorted(state.event_ids("222")) == sorted(ids_b)


def test_a_test_event_code_travels_with_the_connections_events(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A connection in test mode sends its test_event_code with every request."""
    state, _ = graph
    conn_id = add_connection(worker_runtime, test_event_code="TEST123")
    add_events(worker_runtime, conn_id, 3)
    drain(worker_runtime)
    assert {r.test_event_code for r in state.received} == {"TEST123"}
    assert all(
        r.partner_agent and "capi-connector" in r.partner_agent for r in state.received
    )


def test_a_short_count_from_meta_is_recorded_and_counted(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """When Meta counts fewer events than were sent, the row says so and the summary counts it."""
    state, _ = graph
    state.fail_next(1, "short")
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 4)
    assert drain(worker_runtime)["mismatches"] == 1
    assert {r.events_received for r in events_by_id(worker_runtime).values()} == {3}


# -- invalid and out-of-window events ---------------------------------------------------


def _unhashed_email(event_id: str, when: datetime) -> dict[str, Any]:
    payload = meta_event(event_id, event_time=when)
    if event_id == "order-37":
        payload["user_data"]["em"] = ["shopper@example.com"]
    return payload


def test_an_invalid_event_is_bisected_out_and_dies_alone(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Meta rejects the batch; halves are sent until only the invalid event is left, dead."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    ids = add_events(worker_runtime, conn_id, 100, payload=_unhashed_email)
    summary = drain(worker_runtime)
    rows = events_by_id(worker_runtime)
    assert summary["dead"] == 1
    assert rows["order-37"].status == EventStatus.DEAD
    assert "Invalid parameter" in (rows["order-37"].last_error or "")
    assert "user_data.em" in (rows["order-37"].last_error or "")
    assert sorted(state.event_ids()) == sorted(i for i in ids if i != "order-37")
    assert {r.status for k, r in rows.items() if k != "order-37"} == {EventStatus.SENT}
    # Refused requests reach no one: each valid event counts exactly one send.
    assert {r.send_count for k, r in rows.items() if k != "order-37"} == {1}


@pytest.mark.parametrize(
    ("offset", "kind"),
    [
        pytest.param(timedelta(days=7, minutes=1), "too_old", id="eight-days-old"),
        pytest.param(-timedelta(minutes=10), "future", id="ten-minutes-ahead"),
    ],
)
def test_events_outside_metas_window_are_dead_lettered_before_sending(
    worker_runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    offset: timedelta,
    kind: str,
) -> None:
    """A row Meta would refuse for its time dies visibly and never sinks its batch."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    good = add_events(worker_runtime, conn_id, 5, prefix="good-")
    add_events(
        worker_runtime,
        conn_id,
        2,
        prefix="bad-",
        event_time=datetime.now(UTC) - offset,
    )
    summary = drain(worker_runtime)
    assert summary["dead"] == 2
    rows = events_by_id(worker_runtime)
    assert all(
        (rows[f"bad-{i}"].last_error or "").startswith(f"{kind}:") for i in range(2)
    )
    assert sorted(state.event_ids()) == sorted(good)
    assert state.calls == 1


def _website_gaps(event_id: str, when: datetime) -> dict[str, Any]:
    payload = meta_event(event_id, event_time=when)
    if event_id == "gap-0":
        del payload["user_data"]["client_user_agent"]
    if event_id == "gap-1":
        del payload["event_source_url"]
    return payload


def test_website_events_meta_would_refuse_are_dead_lettered_before_sending(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A website event without client_user_agent or event_source_url dies alone, unsent."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    good = add_events(worker_runtime, conn_id, 5, prefix="good-")
    add_events(worker_runtime, conn_id, 2, prefix="gap-", payload=_website_gaps)
    summary = drain(worker_runtime)
    rows = events_by_id(worker_runtime)
    assert summary["dead"] == 2
    assert (rows["gap-0"].last_error or "").startswith("invalid:")
    assert "client_user_agent" in (rows["gap-0"].last_error or "")
    assert "event_source_url" in (rows["gap-1"].last_error or "")
    assert {rows[g].send_count for g in ("gap-0", "gap-1")} == {0}
    # No bisection: one request carried the good events.
    assert sorted(state.event_ids()) == sorted(good)
    assert state.calls == 1


def test_a_pixel_id_no_request_can_carry_holds_the_connection(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A stored pixel id that is not digits holds the events for a reconnect; no crash loop."""
    state, _ = graph
    conn_id = add_connection(worker_runtime, pixel_id="12/../34")
    add_events(worker_runtime, conn_id, 3)
    assert drain(worker_runtime)["held"] == 3
    conn = get_connection(worker_runtime, conn_id)
    assert conn.status == ConnectionStatus.NEEDS_RECONNECT
    assert "digits" in (conn.status_reason or "")
    assert status_counts(worker_runtime) == {"held": 3}
    assert state.calls == 0


# -- holding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param(
            {
                "status": ConnectionStatus.NEEDS_RECONNECT,
                "status_reason": "token expired",
            },
            "needs Meta reconnected (token expired)",
            id="needs-reconnect",
        ),
        pytest.param(
            {"status": ConnectionStatus.UNINSTALLED}, "uninstalled", id="uninstalled"
        ),
        pytest.param(
            {"status": ConnectionStatus.DISCONNECTED}, "disconnected", id="disconnected"
        ),
        pytest.param({"pixel_id": None}, "no Meta pixel", id="no-pixel"),
        pytest.param({"meta_token": None}, "no Meta access token", id="no-token"),
    ],
)
def test_connections_that_cannot_send_hold_their_events(
    worker_runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    fields: dict[str, Any],
    reason: str,
) -> None:
    """Rows of a connection that cannot send are held with a readable reason, never sent or dropped."""
    state, _ = graph
    conn_id = add_connection(worker_runtime, **fields)
    add_events(worker_runtime, conn_id, 3)
    assert drain(worker_runtime)["held"] == 3
    rows = events_by_id(worker_runtime).values()
    assert {r.status for r in rows} == {EventStatus.HELD}
    assert all(reason in (r.last_error or "") for r in rows)
    assert state.calls == 0


def test_a_revoked_token_holds_the_connection_until_a_new_token_arrives(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A 190 marks the connection needs_reconnect and holds its rows; a new token sends them."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    ids = add_events(worker_runtime, conn_id, 10)
    state.revoke(TOKEN)
    drain(worker_runtime)
    conn = get_connection(worker_runtime, conn_id)
    assert conn.status == ConnectionStatus.NEEDS_RECONNECT
    assert "190" in (conn.status_reason or "")
    assert status_counts(worker_runtime) == {"held": 10}
    # Events arriving meanwhile are held too, not sent with the dead token.
    add_events(worker_runtime, conn_id, 2, prefix="late-")
    drain(worker_runtime)
    assert status_counts(worker_runtime) == {"held": 12}

    state.tokens.add("new-token")
    with worker_runtime.sessions.begin() as session:
        conn = queries.get_connection(session, conn_id)
        conn.meta_token = "new-token"
        assert queries.reactivate(session, conn) == 12
    drain(worker_runtime)
    assert status_counts(worker_runtime) == {"sent": 12}
    assert sorted(state.event_ids()) == sorted([*ids, "late-0", "late-1"])


# -- retrying ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("500", id="http-500-code-2"),
        pytest.param("html", id="non-json-502"),
        pytest.param("timeout", id="timeout"),
    ],
)
def test_transient_failures_retry_later_with_backoff(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
    kind: str,
) -> None:
    """A transient failure puts the rows back with one more attempt, due after the backoff."""
    state, server = graph
    state.timeout_seconds = 0.6
    rt = replace(
        runtime, settings=make_settings(meta_graph_url=server.url, http_timeout=0.2)
    )
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    conn_id = add_connection(rt)
    add_events(rt, conn_id, 3)
    state.fail_next(1, kind)
    summary = drain(rt, clock=lambda: t0, rand=lambda: 0.5, policy=RetryPolicy())
    assert summary["retried"] == 3
    for row in events_by_id(rt).values():
        assert row.status == EventStatus.PENDING
        assert row.attempts == 1
        # full jitter over min(cap, 5 s * 2**0), the draw fixed at one half
        assert row.next_attempt_at == t0 + timedelta(seconds=2.5)
        assert row.last_error
        assert row.last_error.startswith("transient:")
        # a timeout or a 5xx may have reached Meta: it counts as a send
        assert row.send_count == 1


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80004], ids=lambda c: f"code-{c}")
def test_rate_limits_back_off_the_whole_connection(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer], code: int
) -> None:
    """A rate limit sets the connection's backoff; nothing of it is claimed until then."""
    state, _ = graph
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 5)
    state.fail_next(1, "rate_limit", code=code)
    policy = RetryPolicy()
    summary = drain(worker_runtime, clock=lambda: t0, rand=lambda: 0.0, policy=policy)
    assert summary["rate_limited"] == 5
    until = t0 + timedelta(
        seconds=30
    )  # equal jitter: half of the 1 min ceiling at least
    assert get_connection(worker_runtime, conn_id).backoff_until == until
    add_events(worker_runtime, conn_id, 2, prefix="new-")
    assert (
        drain(worker_runtime, clock=lambda: t0 + timedelta(seconds=29))["claimed"] == 0
    )
    summary = drain(worker_runtime, clock=lambda: until + timedelta(seconds=1))
    assert summary["sent"] == 7


@pytest.mark.parametrize(
    ("status", "counted"),
    [
        pytest.param(400, 0, id="400-refused-before-processing"),
        pytest.param(503, 1, id="503-may-have-been-processed"),
    ],
)
def test_a_rate_limited_request_counts_as_a_send_only_when_meta_may_have_taken_it(
    worker_runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    status: int,
    counted: int,
) -> None:
    """send_count counts requests Meta may have processed; a 4xx refusal is not one."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 3)
    state.fail_next(1, "rate_limit", code=613, status=status)
    # A frozen clock: the back-off never comes due inside this drain, however slow the machine.
    t0 = datetime.now(UTC)
    assert drain(worker_runtime, clock=lambda: t0)["rate_limited"] == 3
    assert {r.send_count for r in events_by_id(worker_runtime).values()} == {counted}


def test_an_expired_lease_is_reclaimed_and_a_live_one_is_not(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Rows leased by a worker that died go out again; rows another worker holds stay with it."""
    state, _ = graph
    conn_id = add_connection(worker_runtime)
    now = datetime.now(UTC)
    dead = add_events(
        worker_runtime,
        conn_id,
        3,
        prefix="dead-",
        status=EventStatus.SENDING,
        lease_owner="gone",
        lease_expires_at=now - timedelta(seconds=1),
    )
    add_events(
        worker_runtime,
        conn_id,
        2,
        prefix="busy-",
        status=EventStatus.SENDING,
        lease_owner="alive",
        lease_expires_at=now + timedelta(minutes=2),
    )
    drain(worker_runtime)
    assert sorted(state.event_ids()) == sorted(dead)
    assert status_counts(worker_runtime) == {"sent": 3, "sending": 2}


def test_locked_rows_are_skipped_not_waited_for(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer], is_postgres: bool
) -> None:
    """On PostgreSQL a claim skips rows another transaction has locked (SKIP LOCKED)."""
    if not is_postgres:
        pytest.skip("row locks are a PostgreSQL feature; SQLite serializes writers")
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 10)
    with worker_runtime.engine.connect() as other:
        tx = other.begin()
        locked = (
            other.execute(text("SELECT id FROM events ORDER BY id LIMIT 4 FOR UPDATE"))
            .scalars()
            .all()
        )
        claimed = dispatcher.Dispatcher(worker_runtime).claim()
        tx.rollback()
    assert len(claimed) == 6
    assert not {c.id for c in claimed} & set(locked)


# -- periodic jobs ----------------------------------------------------------------------


def test_a_failing_periodic_job_is_logged_and_the_others_still_run(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that raises is logged; the worker and the other jobs carry on, each at its interval."""
    ran: list[str] = []

    def boom(_rt: Any) -> None:
        raise RuntimeError("reconciliation failed")

    jobs = [
        PeriodicJob(name="boom", interval_seconds=3600, run=boom),
        PeriodicJob(
            name="tick", interval_seconds=3600, run=lambda rt: ran.append("tick")
        ),
    ]
    from connector.jobs import JobRunner

    scheduler = JobRunner(runtime, jobs)
    scheduler.run_due()
    scheduler.run_due()
    assert ran == ["tick"]
    assert "periodic job boom failed" in caplog.text


def test_the_worker_collects_every_platforms_periodic_jobs() -> None:
    """Each adapter's periodic jobs are among those the worker runs."""
    from connector.jobs import collect_periodic_jobs

    names = {job.name for job in collect_periodic_jobs()}
    for adapter in registry.adapters().values():
        assert {job.name for job in adapter.periodic_jobs()} <= names


def test_a_running_worker_stops_when_asked(worker_runtime: Runtime) -> None:
    """run_worker returns once its stop event is set, having sent what was due."""
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 5)
    stop = threading.Event()
    thread = threading.Thread(
        target=dispatcher.run_worker,
        kwargs={"runtime": worker_runtime, "stop": stop, "policy": FAST},
    )
    thread.start()
    deadline = time.monotonic() + 30
    while status_counts(worker_runtime).get("sent", 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


# -- processes: SIGTERM, SIGKILL --------------------------------------------------------


def worker_env(settings: Settings, graph_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("META_", "SHOPIFY_", "CONNECTOR_"))
    }
    env.update(
        DATABASE_URL=settings.database_url,
        CONNECTOR_ENCRYPTION_KEYS=",".join(settings.encryption_keys),
        SECRET_KEY=settings.secret_key,
        CONNECTOR_ENV="test",
        CONNECTOR_INSTANCE_PATH=str(settings.instance_path),
        META_GRAPH_URL=graph_url,
    )
    return env


def start_worker(
    settings: Settings, graph_url: str, *args: str, **extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "worker", *args],
        env={**worker_env(settings, graph_url), **extra},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_finishes_the_current_batch_and_exits_zero(
    worker_runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """SIGTERM mid-request: the requests in flight are recorded, no new one starts, exit 0."""
    state, server = graph
    conn_id = add_connection(worker_runtime)
    add_events(worker_runtime, conn_id, 80)
    calls_before = state.calls
    state.fail_next(2, "delay", seconds=1.5)
    proc = start_worker(
        worker_runtime.settings,
        server.url,
        "--batch-size",
        "10",
        CONNECTOR_SEND_CONCURRENCY="2",
    )
    try:
        wait_for(lambda: state.in_flight > 0)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate()
    assert rc == 0, err.decode()
    counts = status_counts(worker_runtime)
    requests_made = state.calls - calls_before
    assert counts.get("sending", 0) == 0
    # Two requests at most were in flight; each one's answer is recorded, nothing else went.
    assert requests_made in (1, 2)
    assert counts["sent"] == 10 * requests_made
    assert counts["pending"] == 80 - counts["sent"]


@pytest.mark.slow
def test_two_workers_send_twenty_thousand_events_exactly_once(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
    is_postgres: bool,
) -> None:
    """20,000 rows, two concurrent workers on PostgreSQL: each event reaches Meta once; the invalid one dies alone."""
    if not is_postgres:
        pytest.skip("concurrent workers coordinate through PostgreSQL row locks")
    state, server = graph
    rt = replace(runtime, settings=make_settings(meta_graph_url=server.url))
    conn_id = add_connection(rt)

    def payload(event_id: str, when: datetime) -> dict[str, Any]:
        body = meta_event(event_id, event_time=when)
        if event_id == "order-12345":
            del body["event_source_url"]  # a website event without its URL
        return body

    ids = add_events(rt, conn_id, 20_000, payload=payload)
    summaries: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda w=w: summaries.append(drain(rt, worker_id=f"w{w}"))
        )
        for w in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(summaries) == 2
    assert all(s["claimed"] > 0 for s in summaries), summaries
    received = Counter(state.event_ids())
    assert set(received) == set(ids) - {"order-12345"}
    assert max(received.values()) == 1
    assert status_counts(rt) == {"sent": 19_999, "dead": 1}
    with rt.sessions() as session:
        assert session.scalar(select(func.max(Event.send_count))) == 1


@pytest.mark.slow
def test_a_fault_run_loses_nothing_and_resends_with_the_same_event_id(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
) -> None:
    """Timeouts, 500s, a rate-limit run and a SIGKILLed worker: every event ends sent, none lost."""
    state, server = graph
    state.timeout_seconds = 0.5
    rt = replace(
        runtime,
        settings=make_settings(
            meta_graph_url=server.url,
            http_timeout=0.25,
            batch_size=100,
            lease_seconds=2,
        ),
    )
    conn_id = add_connection(rt)
    ids = add_events(rt, conn_id, 3000)

    # A worker process is killed while Meta is still answering its request.
    state.fail_next(1, "delay", seconds=1.0)
    proc = start_worker(
        rt.settings,
        server.url,
        "--batch-size",
        "100",
        "--lease-seconds",
        "2",
        # one request in flight when it dies, so exactly one batch is orphaned (a 2 s lease
        # is too short for the worker to claim ahead)
        CONNECTOR_SEND_CONCURRENCY="1",
    )
    try:
        wait_for(lambda: state.in_flight > 0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert status_counts(rt).get("sending") == 100

    state.fail_next(4, "rate_limit", code=80004)
    state.fail_randomly(0.3, ("timeout", "500", "html"), seed=7)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            drain_until_settled(rt, worker_id=name)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors
    state.fail_randomly(0.0)

    assert status_counts(rt) == {"sent": 3000}
    received = Counter(state.event_ids())
    assert set(received) == set(ids)
    resent = {i for i, n in received.items() if n > 1}
    assert resent, "the faults should have caused some re-sends"
    rows = events_by_id(rt)
    # Every send Meta saw is counted on its row, except the killed worker's one request.
    assert all(received[i] <= rows[i].send_count + 1 for i in ids)
    uncounted = sum(received.values()) - sum(r.send_count for r in rows.values())
    assert uncounted <= 100
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).where(Event.attempts > 0)) > 0
        # the killed worker's lease ran out and another worker took the rows over
        assert (
            session.scalar(select(func.count()).where(Event.lease_owner.is_not(None)))
            == 0
        )
