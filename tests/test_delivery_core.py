"""Delivery under stress: every request holds a live lease, one bad store never stops the others.

Each test plays one way a worker used to send a row twice, stall every store, or lose Meta's
answer: another worker taking rows over mid-claim, a claim outliving its lease, refusals
that cost a bisection, a disconnect or a database outage during a request, an answer that
trickles in, a token no key decrypts, a row that kills its worker, a refusal of a token
the owner has just replaced, and Meta's own transience and configuration errors.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask, Response
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import make_url

from connector import dispatcher, meta_oauth
from connector.config import Settings
from connector.dispatcher import Dispatcher
from connector.retry import DEFAULT_POLICY
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer, serve
from tests.fakes.tcp_proxy import TcpProxy
from tests.test_dispatcher import (
    FAST,
    ROOT,
    add_connection,
    add_events,
    drain,
    meta_event,
    wait_for,
    worker_env,
)

TOKEN = "meta-token"
NEW_TOKEN = "meta-token-new"
PIXEL_A, PIXEL_B = "1111111111", "2222222222"


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, LiveServer]]:
    state = FakeGraph(tokens={TOKEN, NEW_TOKEN})
    with serve(make_app(state)) as server:
        yield state, server


def at(runtime: Runtime, url: str, **overrides: Any) -> Runtime:
    """The test runtime pointed at a Graph API on ``url``."""
    overrides.setdefault("http_timeout", 5.0)
    settings = replace(runtime.settings, meta_graph_url=url, **overrides)
    return replace(runtime, settings=settings)


def two_stores(rt: Runtime, n: int = 3) -> tuple[str, str, list[str], list[str]]:
    a = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    b = add_connection(rt, "b.myshopify.com", pixel_id=PIXEL_B)
    return a, b, add_events(rt, a, n, prefix="a-"), add_events(rt, b, n, prefix="b-")


def unhashed(event_id: str, when: datetime) -> dict[str, Any]:
    """An event Meta refuses on its own: the address is not hashed."""
    rv = meta_event(event_id, event_time=when)
    rv["user_data"]["em"] = [f"{event_id}@example.com"]
    return rv


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def rows(rt: Runtime, conn_id: str) -> list[Event]:
    with rt.sessions() as session:
        return list(
            session.scalars(
                select(Event).where(Event.connection_id == conn_id).order_by(Event.id)
            )
        )


def connection(rt: Runtime, conn_id: str) -> Connection:
    with rt.sessions() as session:
        return queries.get_connection(session, conn_id)


def take_over(rt: Runtime, conn_id: str, owner: str = "other-worker") -> None:
    """Another worker leases the connection's rows (theirs ran out, say)."""
    with rt.sessions.begin() as session:
        session.execute(
            update(Event)
            .where(Event.connection_id == conn_id)
            .values(
                lease_owner=owner,
                lease_expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )


# -- 1. every request holds a live lease ------------------------------------------------


def test_rows_another_worker_took_over_meanwhile_are_not_sent(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """While store A's request is in flight, B's rows are re-leased: this worker never sends them.

    The lease is short enough that every request renews it first (see FRESH_LEASE_SHARE).
    """
    state, server = graph
    rt = at(runtime, server.url, lease_seconds=10)
    _, b, a_ids, _ = two_stores(rt)
    worker = Dispatcher(rt, worker_id="w1", concurrency=1, policy=FAST)
    claimed = worker.claim()
    assert len(claimed) == 6
    state.fail_next(1, "delay", seconds=1.0)
    thread = in_thread(lambda: worker.process(claimed))
    wait_for(lambda: state.in_flight > 0)
    take_over(rt, b)
    thread.join(timeout=30)
    worker.close()
    assert Counter(state.event_ids(PIXEL_A)) == Counter(a_ids)
    assert state.event_ids(PIXEL_B) == []
    assert {(r.status, r.lease_owner) for r in rows(rt, b)} == {
        ("sending", "other-worker")
    }
    assert (worker.stats.sent, worker.stats.lease_lost) == (3, 3)


def test_rows_taken_over_during_their_own_request_are_not_counted_as_sent(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """An answer recorded for no row (all re-leased) counts as lease lost, not as sent."""
    state, server = graph
    rt = at(runtime, server.url, lease_seconds=10)
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, conn, 3)
    worker = Dispatcher(rt, worker_id="w1", policy=FAST)
    claimed = worker.claim()
    state.fail_next(1, "delay", seconds=1.0)
    thread = in_thread(lambda: worker.process(claimed))
    wait_for(lambda: state.in_flight > 0)
    take_over(rt, conn)
    thread.join(timeout=30)
    worker.close()
    assert (worker.stats.sent, worker.stats.lease_lost) == (0, 3)


def test_a_request_right_after_its_claim_goes_without_renewing_the_lease(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Claimed moments ago, with the whole lease ahead: one write to lease, one to record."""
    state, server = graph
    rt = at(runtime, server.url, lease_seconds=120)
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    ids = add_events(rt, conn, 3)
    writes: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE EVENTS"):
            writes.append(statement)

    event.listen(rt.engine, "before_cursor_execute", seen)
    try:
        worker = Dispatcher(rt, worker_id="w1", policy=FAST)
        worker.process(worker.claim())
        worker.close()
    finally:
        event.remove(rt.engine, "before_cursor_execute", seen)
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)
    assert worker.stats.sent == 3
    assert len(writes) == 2, writes


def test_events_a_redaction_deleted_after_the_claim_are_not_sent(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A GDPR customers/redact lands between the claim and the request: nothing of it goes."""
    state, server = graph
    rt = at(runtime, server.url, lease_seconds=120)
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, conn, 3, customer_ref="cust-1")
    worker = Dispatcher(rt, worker_id="w1", policy=FAST)
    claimed = worker.claim()
    with rt.sessions.begin() as session:
        queries.redact_customer(session, conn, "cust-1", [])
    worker.process(claimed)
    worker.close()
    assert state.event_ids(PIXEL_A) == []
    assert rows(rt, conn) == []


def test_rows_of_a_claim_that_outlived_its_lease_are_sent_once(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Meta slow enough for a claim's lease to run out: a later claim of the same worker may
    take its rows again, and each event still reaches Meta once."""
    state, server = graph
    rt = at(
        runtime,
        server.url,
        lease_seconds=10,
        http_timeout=3.9,
        batch_size=1,
        poll_interval=0.05,
    )
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    ids = add_events(rt, conn, 8)
    state.fail_next(3, "delay", seconds=3.6)
    dispatcher.run_worker(
        runtime=rt, drain=True, worker_id="w1", concurrency=4, policy=FAST
    )
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)
    assert {r.status for r in rows(rt, conn)} == {"sent"}


def test_a_failed_recording_does_not_lose_the_next_accepted_answer(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """The first recording fails while the next request is out: that next answer is recorded
    all the same; only the rows whose answer was lost wait for their lease."""
    from sqlalchemy.exc import IntegrityError

    state, server = graph
    rt = at(runtime, server.url, batch_size=2)
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, conn, 4)
    worker = Dispatcher(rt, worker_id="w1", concurrency=2, policy=FAST)
    real = worker._sent
    calls: list[list[int]] = []

    def flaky(*args: Any) -> None:
        calls.append([r.id for r in args[1]])
        if len(calls) == 1:
            time.sleep(0.3)  # the next request goes out meanwhile
            raise IntegrityError("UPDATE events", {}, Exception("a write that fails"))
        real(*args)

    worker._sent = flaky  # type: ignore[method-assign]
    worker.process(worker.claim())
    worker.close()
    assert len(state.event_ids(PIXEL_A)) == 4
    assert len(calls) == 2
    assert Counter(r.status for r in rows(rt, conn)) == {"sent": 2, "sending": 2}


def test_a_busy_connection_pool_is_waited_for_not_a_lost_answer(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Every pooled connection taken for a moment: recording Meta's answer waits and retries."""
    from sqlalchemy.orm import sessionmaker

    from connector.capi import SendResult
    from connector.store.db import make_engine

    _, server = graph
    rt = at(runtime, server.url)
    conn = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, conn, 2)
    engine = make_engine(
        rt.settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.3
    )
    small = replace(rt, engine=engine, sessions=sessionmaker(engine))
    worker = Dispatcher(small, worker_id="w1", concurrency=1, policy=FAST)
    try:
        claimed = worker.claim()
        target = worker._targets([conn])[conn]
        held = engine.connect()  # another thread holds the only connection...
        threading.Timer(1.0, held.close).start()  # ...for a second
        worker._sent(
            target,
            claimed,
            SendResult(events_received=2, fbtrace_id="trace"),
            time.monotonic() + 120,
        )
    finally:
        worker.close()
        engine.dispose()
    assert {r.status for r in rows(rt, conn)} == {"sent"}


def test_a_claim_that_used_most_of_its_lease_gives_the_rest_back(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Two slow requests use three quarters of a 4 s lease: the next store's rows go back unsent."""
    state, server = graph
    rt = at(runtime, server.url, lease_seconds=4, batch_size=2)
    a = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, a, 4, prefix="a-")
    b = add_connection(rt, "b.myshopify.com", pixel_id=PIXEL_B)
    add_events(rt, b, 2, prefix="b-")
    worker = Dispatcher(rt, worker_id="w1", concurrency=1, claim_size=6, policy=FAST)
    claimed = worker.claim()
    assert len(claimed) == 6
    state.fail_next(2, "delay", seconds=1.9)
    worker.process(claimed)
    worker.close()
    assert len(state.event_ids(PIXEL_A)) == 4
    assert state.event_ids(PIXEL_B) == []
    assert {(r.status, r.lease_owner) for r in rows(rt, b)} == {("pending", None)}
    assert worker.stats.released == 2


# -- 2. one bad store costs its own requests only ----------------------------------------


def test_events_meta_names_as_refused_cost_one_request_each(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """10 refused events among 100: Meta names each, so 11 requests, not a bisection's 60+."""
    state, server = graph
    rt = at(runtime, server.url)
    a = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    good = add_events(rt, a, 90, prefix="good-")
    bad = add_events(rt, a, 10, prefix="bad-", payload=unhashed)
    b = add_connection(rt, "b.myshopify.com", pixel_id=PIXEL_B)
    other = add_events(rt, b, 5, prefix="b-")
    stats = drain(rt)
    assert (stats["sent"], stats["dead"]) == (95, 10)
    assert stats["requests"] == 10 + 1 + 1
    assert Counter(state.event_ids(PIXEL_A)) == Counter(good)
    assert Counter(state.event_ids(PIXEL_B)) == Counter(other)
    dead = {r.event_id for r in rows(rt, a) if r.status == EventStatus.DEAD}
    assert dead == set(bad)


def test_a_store_whose_every_event_is_refused_is_set_aside(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A store whose 40 events are all refused costs a handful of requests, then waits as failing."""
    state, server = graph
    rt = at(runtime, server.url)
    a = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, a, 40, prefix="bad-", payload=unhashed)
    b = add_connection(rt, "b.myshopify.com", pixel_id=PIXEL_B)
    other = add_events(rt, b, 5, prefix="b-")
    stats = drain(rt)
    assert Counter(state.event_ids(PIXEL_B)) == Counter(other)
    # a quarter of its 40 events, each named by Meta: 10 requests, and B's one
    assert stats["requests"] == 10 + 1
    statuses = Counter(r.status for r in rows(rt, a))
    assert statuses == {"dead": 10, "pending": 30}
    conn = connection(rt, a)
    assert conn.status == ConnectionStatus.FAILING
    assert "refused each of the 10 events" in (conn.status_reason or "")
    assert conn.backoff_until is not None


# -- 3. a disconnect leaves the rows in flight to their worker ------------------------------


def test_a_disconnect_during_a_request_keeps_metas_answer(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Meta counted the events while the owner disconnected: they are sent, and never again."""
    state, server = graph
    rt = at(runtime, server.url)
    conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    ids = add_events(rt, conn_id, 5)
    later = add_events(
        rt,
        conn_id,
        1,
        prefix="later-",
        next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
    )
    worker = Dispatcher(rt, worker_id="w1", policy=FAST)
    claimed = worker.claim()
    state.fail_next(1, "delay", seconds=1.0)
    thread = in_thread(lambda: worker.process(claimed))
    wait_for(lambda: state.in_flight > 0)
    with rt.sessions.begin() as session:
        meta_oauth.disconnect(
            session, queries.get_connection(session, conn_id), datetime.now(UTC)
        )
    thread.join(timeout=30)
    worker.close()
    by_id = {r.event_id: r for r in rows(rt, conn_id)}
    assert {(by_id[i].status, by_id[i].send_count) for i in ids} == {("sent", 1)}
    assert by_id[later[0]].status == EventStatus.HELD
    with rt.sessions.begin() as session:
        conn = queries.get_connection(session, conn_id)
        conn.meta_token = TOKEN
        queries.reactivate(session, conn)
    drain(rt)
    assert Counter(state.event_ids(PIXEL_A)) == Counter([*ids, *later])


# -- 4. Meta's answer outlives a database outage ----------------------------------------------


def test_metas_answer_is_kept_through_a_database_outage_of_seconds(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    database_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    """The database drops for 3 s right as Meta answers: the answer is recorded once it is back."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a network cut needs a database behind a socket (PostgreSQL)")
    state, server = graph
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    rt = Runtime.from_settings(
        make_settings(database_url=proxied, meta_graph_url=server.url, http_timeout=5.0)
    )
    try:
        conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
        ids = add_events(rt, conn_id, 5)
        worker = Dispatcher(rt, worker_id="w1", policy=FAST)
        claimed = worker.claim()
        state.fail_next(1, "delay", seconds=1.0)
        thread = in_thread(lambda: worker.process(claimed))
        wait_for(lambda: state.in_flight > 0)
        proxy.cut()
        wait_for(lambda: state.in_flight == 0)
        time.sleep(
            3.0
        )  # the outage itself: longer than the old 1.4 s of write attempts
        proxy.restore()
        thread.join(timeout=60)
        worker.close()
    finally:
        proxy.close()
        rt.close()
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)
    assert {(r.status, r.send_count) for r in rows(runtime, conn_id)} == {("sent", 1)}


# -- 5. a send has a deadline; serve's worker finishes on Ctrl-C ------------------------------


class Trickle:
    """An HTTP server whose 200 answer comes one piece every half second, for about 4 s."""

    BODY = json.dumps(
        {"events_received": 3, "messages": [], "fbtrace_id": "T"}
    ).encode()

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client:
            client.recv(1 << 20)
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.BODY)}\r\n\r\n"
            ).encode()
            try:
                client.sendall(head)
                step = len(self.BODY) // 8 + 1
                for i in range(0, len(self.BODY), step):
                    time.sleep(0.5)
                    client.sendall(self.BODY[i : i + step])
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def test_an_answer_that_trickles_in_past_the_deadline_is_given_up(
    runtime: Runtime,
) -> None:
    """Each piece comes within the read timeout, the whole takes 4 s: the 1 s deadline ends it."""
    trickle = Trickle()
    try:
        rt = at(runtime, trickle.url, http_timeout=1.0)
        conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
        add_events(rt, conn_id, 3)
        stats = drain(rt, policy=DEFAULT_POLICY, rand=lambda: 1.0)
    finally:
        trickle.close()
    assert (stats["sent"], stats["retried"]) == (0, 3)
    assert {r.status for r in rows(rt, conn_id)} == {"pending"}
    assert all(
        "did not answer within 1 s" in (r.last_error or "") for r in rows(rt, conn_id)
    )
    # Meta may have counted it: a possible send, counted
    assert {r.send_count for r in rows(rt, conn_id)} == {1}


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_serve_finishes_the_workers_batch(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """`connector serve` interrupted mid-request: the worker thread records the answer first."""
    state, server = graph
    conn_id = add_connection(runtime, "a.myshopify.com", pixel_id=PIXEL_A)
    ids = add_events(runtime, conn_id, 5)
    state.fail_next(1, "delay", seconds=2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "serve", "--port", str(port)],
        env=worker_env(runtime.settings, server.url),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as a terminal delivers it: a test run started in the background (as CI runs
        # its two suites) inherits SIGINT ignored, and Python keeps it ignored.
        preexec_fn=_sigint_default,
    )
    try:
        wait_for(lambda: state.in_flight > 0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)
    assert {(r.status, r.lease_owner) for r in rows(runtime, conn_id)} == {
        ("sent", None)
    }


# -- 6. one broken store never stops the others; stuck rows end; liveness shows --------------


def test_a_token_no_key_decrypts_holds_its_connection_and_no_other(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A token written under a key since removed: that store is held with a reason, B is sent."""
    state, server = graph
    rt = at(runtime, server.url)
    a, _, _, b_ids = two_stores(rt)
    foreign = Fernet(Fernet.generate_key()).encrypt(TOKEN.encode()).decode()
    with rt.engine.begin() as db:
        db.execute(
            text("UPDATE connections SET meta_token = :t WHERE id = :c"),
            {"t": foreign, "c": a},
        )
    stats = drain(rt)
    assert Counter(state.event_ids(PIXEL_B)) == Counter(b_ids)
    assert state.event_ids(PIXEL_A) == []
    assert (stats["sent"], stats["held"]) == (3, 3)
    assert {r.status for r in rows(rt, a)} == {"held"}
    assert all("cannot be decrypted" in (r.last_error or "") for r in rows(rt, a))
    with rt.sessions() as session:
        status, reason = session.execute(
            select(Connection.status, Connection.status_reason).where(
                Connection.id == a
            )
        ).one()
    assert status == ConnectionStatus.NEEDS_RECONNECT
    assert "cannot be decrypted" in reason


def test_a_row_that_keeps_killing_its_worker_ends_dead_and_a_reclaim_is_an_attempt(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Leases that ran out count as attempts; after MAX_RECLAIMS the row is dead, not looping."""
    state, server = graph
    rt = at(runtime, server.url)
    conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    expired = {
        "status": EventStatus.SENDING,
        "lease_owner": "gone",
        "lease_expires_at": datetime.now(UTC) - timedelta(seconds=1),
    }
    [stuck] = add_events(
        rt, conn_id, 1, prefix="stuck-", reclaims=dispatcher.MAX_RECLAIMS, **expired
    )
    [once] = add_events(rt, conn_id, 1, prefix="once-", **expired)
    drain(rt)
    by_id = {r.event_id: r for r in rows(rt, conn_id)}
    assert by_id[stuck].status == EventStatus.DEAD
    assert (by_id[stuck].last_error or "").startswith("stuck:")
    assert state.event_ids(PIXEL_A) == [once]
    assert (by_id[once].status, by_id[once].attempts, by_id[once].reclaims) == (
        "sent",
        1,
        1,
    )


def test_a_running_worker_shows_in_the_health_check(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """/healthz reports the workers alive from their heartbeats; a stopped worker leaves."""
    from connector.web import create_app

    _, server = graph
    rt = at(runtime, server.url, poll_interval=0.05)
    client = create_app(runtime=rt).test_client()
    assert client.get("/healthz").get_json()["workers"]["alive"] == 0
    stop = threading.Event()
    thread = in_thread(
        lambda: dispatcher.run_worker(runtime=rt, stop=stop, worker_id="hb-1")
    )
    try:
        wait_for(lambda: client.get("/healthz").get_json()["workers"]["alive"] == 1)
    finally:
        stop.set()
        thread.join(timeout=30)
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok"
    assert body["workers"]["alive"] == 0


def test_a_stored_event_that_is_not_an_object_is_dead_lettered_alone(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """The request carries the stored text as it is; what is not an event never joins one."""
    state, server = graph
    rt = at(runtime, server.url)
    conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    good = add_events(rt, conn_id, 2)
    add_events(
        rt, conn_id, 1, prefix="odd-", payload=lambda i, t: ["not", "an", "event"]
    )
    drain(rt)
    by_id = {r.event_id: r for r in rows(rt, conn_id)}
    assert Counter(state.event_ids(PIXEL_A)) == Counter(good)
    assert by_id["odd-0"].status == "dead"
    assert "not a JSON object" in (by_id["odd-0"].last_error or "")


def test_a_stop_gives_back_the_rows_claimed_ahead(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """The next claim is leased while a request is out; a stop then releases it, unsent."""
    state, server = graph
    rt = at(runtime, server.url, batch_size=2, poll_interval=0.05)
    conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(rt, conn_id, 6)
    state.fail_next(1, "delay", seconds=1.0)
    stop = threading.Event()
    thread = in_thread(
        lambda: dispatcher.run_worker(
            runtime=rt, stop=stop, worker_id="w1", concurrency=1
        )
    )
    # Batches of 2, one request at a time: each claim takes 2 rows; while the first
    # request is out, the next 2 rows are leased ahead.
    wait_for(
        lambda: (
            state.in_flight > 0
            and Counter(r.status for r in rows(rt, conn_id))["sending"] == 4
        )
    )
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    statuses = Counter(r.status for r in rows(rt, conn_id))
    assert "sending" not in statuses
    assert statuses["sent"] + statuses["pending"] == 6
    assert all(r.lease_owner is None for r in rows(rt, conn_id))


# -- 7. an answer about an old token or pixel is not acted on ---------------------------------


def test_a_refusal_of_a_token_replaced_during_the_request_is_ignored(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """The owner reconnects while the old token's request is refused: nothing is held."""
    state, server = graph
    rt = at(runtime, server.url)
    conn_id = add_connection(
        rt, "a.myshopify.com", pixel_id=PIXEL_A, meta_token="old-token"
    )
    ids = add_events(rt, conn_id, 3)
    worker = Dispatcher(rt, worker_id="w1", policy=FAST)
    claimed = worker.claim()
    state.fail_next(1, "delay", seconds=1.0)  # then the fake refuses old-token with 190
    thread = in_thread(lambda: worker.process(claimed))
    wait_for(lambda: state.in_flight > 0)
    with rt.sessions.begin() as session:
        queries.get_connection(session, conn_id).meta_token = NEW_TOKEN
    thread.join(timeout=30)
    worker.close()
    assert connection(rt, conn_id).status == ConnectionStatus.ACTIVE
    assert {r.status for r in rows(rt, conn_id)} == {"pending"}
    drain(rt)
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)


# -- 12. Meta's transience and configuration errors ----------------------------------------


def canned_graph(status: int, body: dict[str, Any] | str) -> Flask:
    app = Flask(__name__)

    @app.post("/<version>/<pixel>/events")
    def events(version: str, pixel: str) -> Response:
        if isinstance(body, str):
            return Response(body, status, mimetype="text/html")
        return Response(json.dumps(body), status, mimetype="application/json")

    return app


def test_metas_is_transient_is_a_retry_not_a_bisection(runtime: Runtime) -> None:
    """A code 100 Meta marks transient retries the whole batch; nothing is dead-lettered."""
    answer = {
        "error": {
            "message": "Invalid parameter",
            "type": "OAuthException",
            "code": 100,
            "error_subcode": 2804050,
            "is_transient": True,
            "fbtrace_id": "T",
        }
    }
    with serve(canned_graph(400, answer)) as server:
        rt = at(runtime, server.url)
        conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
        add_events(rt, conn_id, 8)
        # the retry waits its full 5 s: this drain sees one request
        stats = drain(rt, policy=DEFAULT_POLICY, rand=lambda: 1.0)
    assert (stats["requests"], stats["retried"], stats["dead"]) == (1, 8, 0)
    assert {r.status for r in rows(rt, conn_id)} == {"pending"}


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        pytest.param(
            400,
            {
                "error": {
                    "message": "(#2635) You are calling a deprecated version of the Ads API.",
                    "type": "OAuthException",
                    "code": 2635,
                    "fbtrace_id": "T",
                }
            },
            "code 2635",
            id="deprecated-version",
        ),
        pytest.param(
            404, "<html><body>Not Found</body></html>", "HTTP 404", id="html-404"
        ),
        pytest.param(
            413,
            "<html><body>Request Entity Too Large</body></html>",
            "HTTP 413",
            id="html-413",
        ),
    ],
)
def test_a_configuration_error_shows_on_the_connection_at_once(
    runtime: Runtime, status: int, body: dict[str, Any] | str, shown: str
) -> None:
    """No week of retries behind an "active" store: the connection says failing, and why."""
    with serve(canned_graph(status, body)) as server:
        rt = at(runtime, server.url)
        conn_id = add_connection(rt, "a.myshopify.com", pixel_id=PIXEL_A)
        add_events(rt, conn_id, 4)
        stats = drain(rt)
    assert stats["requests"] == 1
    conn = connection(rt, conn_id)
    assert conn.status == ConnectionStatus.FAILING
    assert shown in (conn.status_reason or "")
    assert conn.backoff_until is not None
    assert conn.backoff_until > datetime.now(UTC) + timedelta(minutes=30)
    assert {r.status for r in rows(rt, conn_id)} == {"pending"}


def test_a_failing_connection_that_sends_again_is_active(
    runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Once its backoff has passed and Meta accepts, the failing connection is active again."""
    state, server = graph
    rt = at(runtime, server.url)
    conn_id = add_connection(
        rt,
        "a.myshopify.com",
        pixel_id=PIXEL_A,
        status=ConnectionStatus.FAILING,
        status_reason="Meta refuses every request",
    )
    ids = add_events(rt, conn_id, 2)
    drain(rt)
    assert Counter(state.event_ids(PIXEL_A)) == Counter(ids)
    conn = connection(rt, conn_id)
    assert (conn.status, conn.status_reason) == (ConnectionStatus.ACTIVE, None)


# -- 9. the claim reads due rows only; 13. timeouts --------------------------------------------


def test_the_claim_reads_the_claimable_rows_index(
    runtime: Runtime, is_postgres: bool
) -> None:
    """With thousands of sent rows and a few due, the claim reads the due rows by index."""
    if not is_postgres:
        pytest.skip("PostgreSQL's planner")
    conn_id = add_connection(runtime, "a.myshopify.com", pixel_id=PIXEL_A)
    add_events(runtime, conn_id, 20_000, prefix="sent-", status=EventStatus.SENT)
    add_events(runtime, conn_id, 5, prefix="due-")
    with runtime.engine.begin() as db:
        db.execute(text("ANALYZE events"))
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "row_number() OVER" in statement:  # the claim's search for due rows
            seen.append((statement, params))

    event.listen(runtime.engine, "before_cursor_execute", capture)
    try:
        claimed = Dispatcher(runtime, worker_id="w1").claim()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", capture)
    assert len(claimed) == 5
    statement, params = seen[0]
    with runtime.engine.connect() as db:
        cursor = db.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(str(r[0]) for r in cursor.fetchall())
    # The due rows are found through an index on their status (the partial claimable-rows
    # index, or the due index), never by walking the primary key or the whole table.
    assert "Seq Scan on events" not in plan, plan
    assert any(
        ("ix_events_claimable" in line or "ix_events_due" in line)
        for line in plan.splitlines()
    ), plan
    assert (
        "Index Cond: ((status)::text = ANY" in plan or "ix_events_claimable" in plan
    ), plan


def test_postgres_connections_carry_timeouts_and_keepalives(
    runtime: Runtime, is_postgres: bool
) -> None:
    """A half-open connection after a failover cannot block a worker forever."""
    if not is_postgres:
        pytest.skip("libpq parameters")
    with runtime.engine.connect() as db:
        assert db.execute(text("SHOW statement_timeout")).scalar_one() == "30s"
        dsn = db.connection.dbapi_connection.info.dsn  # type: ignore[union-attr]
    for part in (
        "connect_timeout=10",
        "keepalives=1",
        "keepalives_idle=30",
        "tcp_user_timeout=60000",
    ):
        assert part in dsn


@pytest.mark.parametrize(
    ("value", "ok"), [("1", False), ("2", True), ("5", True), ("3601", False)]
)
def test_lease_seconds_has_one_range_for_the_option_and_the_environment(
    value: str, ok: bool, runtime: Runtime, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """`--lease-seconds` and CONNECTOR_LEASE_SECONDS accept and refuse the same values."""
    from connector.config import Settings as S
    from connector.errors import ConfigError

    env = {"CONNECTOR_LEASE_SECONDS": value}
    if ok:
        assert S.from_env(env).lease_seconds == int(value)
    else:
        with pytest.raises(ConfigError, match="CONNECTOR_LEASE_SECONDS"):
            S.from_env(env)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "worker",
            "--drain",
            "--lease-seconds",
            value,
        ],
        env=worker_env(runtime.settings, graph[1].url),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
