"""`connector events list|show|replay`, `send-test-event` and `worker --drain`, as an operator runs them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from connector.cli import cli
from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import ConnectionStatus, Event, EventStatus
from tests.fakes.graph import FakeGraph
from tests.fakes.server import LiveServer
from tests.test_dispatcher import (
    PIXEL,
    TOKEN,
    add_connection,
    add_events,
    drain,
    events_by_id,
    fake_graph,
    get_connection,
    meta_event,
    status_counts,
)


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, LiveServer]]:
    with fake_graph() as pair:
        yield pair


@pytest.fixture
def rt(
    runtime: Runtime,
    graph: tuple[FakeGraph, LiveServer],
    make_settings: Callable[..., Settings],
) -> Runtime:
    return replace(runtime, settings=make_settings(meta_graph_url=graph[1].url))


@pytest.fixture
def run(rt: Runtime) -> Callable[..., Result]:
    """Invoke the `connector` command with an environment pointing at the test database and fake."""
    s = rt.settings
    env = {
        "DATABASE_URL": s.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": ",".join(s.encryption_keys),
        "SECRET_KEY": s.secret_key,
        "CONNECTOR_ENV": "test",
        "CONNECTOR_INSTANCE_PATH": str(s.instance_path),
        "META_GRAPH_URL": s.meta_graph_url,
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def row_id(rt: Runtime, event_id: str) -> int:
    with rt.sessions() as session:
        rv = session.scalar(select(Event.id).where(Event.event_id == event_id))
        assert rv is not None
        return rv


def set_rows(rt: Runtime, event_ids: list[str], **values: Any) -> None:
    with rt.sessions.begin() as session:
        session.execute(
            update(Event).where(Event.event_id.in_(event_ids)).values(**values)
        )


# -- list / show --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param((), {"a-0", "a-1", "a-2", "b-0", "b-1"}, id="all"),
        pytest.param(("--status", "dead"), {"a-1"}, id="by-status"),
        pytest.param(("--connection", "B"), {"b-0", "b-1"}, id="by-connection"),
        pytest.param(("--limit", "2"), {"b-0", "b-1"}, id="newest-first-limited"),
    ],
)
def test_events_list_filters_rows(
    rt: Runtime, run: Callable[..., Result], args: tuple[str, ...], expected: set[str]
) -> None:
    """`events list` shows the rows asked for, newest first."""
    a = add_connection(rt, "shop-a.myshopify.com")
    b = add_connection(rt, "shop-b.myshopify.com")
    add_events(rt, a, 3, prefix="a-")
    add_events(rt, b, 2, prefix="b-")
    set_rows(rt, ["a-1"], status=EventStatus.DEAD, last_error="invalid: bad hash")
    args = tuple(b if x == "B" else x for x in args)
    result = run("events", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    assert {r["event_id"] for r in json.loads(result.output)} == expected


def test_events_show_prints_the_row_and_payload_but_no_secret(
    rt: Runtime, run: Callable[..., Result]
) -> None:
    """`events show` prints state, payload and last error, and never the connection's token."""
    conn_id = add_connection(rt, meta_token="super-secret-token")
    add_events(rt, conn_id, 1)
    set_rows(
        rt, ["order-0"], status=EventStatus.DEAD, last_error="invalid: Meta said no"
    )
    result = run("events", "show", str(row_id(rt, "order-0")))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["status"] == "dead"
    assert doc["last_error"] == "invalid: Meta said no"
    assert doc["payload"]["event_id"] == "order-0"
    assert "super-secret-token" not in result.output


def test_events_show_of_an_unknown_id_fails_clearly(run: Callable[..., Result]) -> None:
    """An unknown id is an error with a message, exit status 1."""
    result = run("events", "show", "987654")
    assert result.exit_code == 1
    assert "no event 987654" in result.output


# -- replay -------------------------------------------------------------------------------


def test_replay_by_id_puts_dead_rows_back_with_attempts_reset(
    rt: Runtime, run: Callable[..., Result], graph: tuple[FakeGraph, LiveServer]
) -> None:
    """A replayed dead row is pending again with no attempts, and the worker sends it."""
    conn_id = add_connection(rt)
    add_events(rt, conn_id, 2)
    set_rows(
        rt, ["order-0", "order-1"], status=EventStatus.DEAD, attempts=5, last_error="x"
    )
    result = run("events", "replay", str(row_id(rt, "order-0")))
    assert result.exit_code == 0, result.output
    assert "1 event(s) back to pending" in result.output
    rows = events_by_id(rt)
    assert (rows["order-0"].status, rows["order-0"].attempts) == (
        EventStatus.PENDING,
        0,
    )
    assert rows["order-1"].status == EventStatus.DEAD
    drain(rt)
    assert graph[0].event_ids() == ["order-0"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(("--dead",), {"pending": 2, "held": 1}, id="dead"),
        pytest.param(("--held",), {"pending": 1, "dead": 2}, id="held"),
        pytest.param(("--dead", "--held"), {"pending": 3}, id="both"),
    ],
)
def test_replay_by_status(
    rt: Runtime,
    run: Callable[..., Result],
    flags: tuple[str, ...],
    expected: dict[str, int],
) -> None:
    """--dead and --held choose which rows go back to pending."""
    conn_id = add_connection(rt)
    add_events(rt, conn_id, 3)
    set_rows(rt, ["order-0", "order-1"], status=EventStatus.DEAD)
    set_rows(rt, ["order-2"], status=EventStatus.HELD)
    assert run("events", "replay", *flags).exit_code == 0
    assert status_counts(rt) == expected


def test_replay_limited_to_a_connection(
    rt: Runtime, run: Callable[..., Result]
) -> None:
    """--connection leaves other stores' dead letters alone."""
    a = add_connection(rt, "shop-a.myshopify.com")
    b = add_connection(rt, "shop-b.myshopify.com")
    add_events(rt, a, 1, prefix="a-", status=EventStatus.DEAD)
    add_events(rt, b, 1, prefix="b-", status=EventStatus.DEAD)
    assert run("events", "replay", "--dead", "--connection", a).exit_code == 0
    rows = events_by_id(rt)
    assert (rows["a-0"].status, rows["b-0"].status) == (
        EventStatus.PENDING,
        EventStatus.DEAD,
    )


def test_replay_reports_rows_too_old_for_meta_and_leaves_them(
    rt: Runtime, run: Callable[..., Result]
) -> None:
    """A dead row older than Meta's 7-day window is named and not replayed."""
    conn_id = add_connection(rt)
    add_events(
        rt,
        conn_id,
        1,
        prefix="old-",
        status=EventStatus.DEAD,
        event_time=datetime.now(UTC) - timedelta(days=8),
    )
    add_events(rt, conn_id, 1, prefix="fresh-", status=EventStatus.DEAD)
    result = run("events", "replay", "--dead")
    assert result.exit_code == 0
    assert "outside Meta's 7-day window" in result.output
    assert "1 event(s) back to pending" in result.output
    assert events_by_id(rt)["old-0"].status == EventStatus.DEAD


def test_replay_keeps_meta_s_62_day_window_for_physical_store_events(
    rt: Runtime, run: Callable[..., Result]
) -> None:
    """A physical_store event 20 days old goes back; one 63 days old is named and stays."""
    conn_id = add_connection(rt)
    now = datetime.now(UTC)

    def in_store(event_id: str, when: datetime) -> dict[str, Any]:
        return {
            **meta_event(event_id, event_time=when),
            "action_source": "physical_store",
        }

    for prefix, days in (("store20-", 20), ("store63-", 63)):
        add_events(
            rt,
            conn_id,
            1,
            prefix=prefix,
            status=EventStatus.DEAD,
            event_time=now - timedelta(days=days),
            payload=in_store,
        )
    result = run("events", "replay", "--dead")
    assert result.exit_code == 0
    assert "1 event(s) back to pending" in result.output
    assert "62 days for physical_store" in result.output
    by_id = events_by_id(rt)
    assert by_id["store20-0"].status == EventStatus.PENDING
    assert by_id["store63-0"].status == EventStatus.DEAD


def test_replay_needs_ids_or_a_status(run: Callable[..., Result]) -> None:
    """Without ids, --dead or --held, replay refuses to guess."""
    result = run("events", "replay")
    assert result.exit_code == 2
    assert "--dead" in result.output


# -- a revoked token, end to end -----------------------------------------------------------


@pytest.mark.parametrize("recovery", ["connections-add", "replay-held"])
def test_a_revoked_token_holds_events_until_the_owner_reconnects(
    rt: Runtime,
    run: Callable[..., Result],
    graph: tuple[FakeGraph, LiveServer],
    recovery: str,
) -> None:
    """190 holds the rows and marks needs_reconnect; a new token (add, or set then replay) sends them."""
    state, _ = graph
    conn_id = add_connection(rt, "shop-a.myshopify.com")
    ids = add_events(rt, conn_id, 20)
    state.fail_next(1, "revoked")
    drain(rt)
    assert get_connection(rt, conn_id).status == ConnectionStatus.NEEDS_RECONNECT
    assert status_counts(rt) == {"held": 20}

    state.tokens.add("fresh-token")
    if recovery == "connections-add":
        result = run(
            "connections",
            "add",
            "shopify",
            "--shop",
            "shop-a.myshopify.com",
            "--meta-token",
            "fresh-token",
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1] == conn_id
    else:
        with rt.sessions.begin() as session:
            conn = queries.get_connection(session, conn_id)
            conn.meta_token = "fresh-token"
            conn.status = ConnectionStatus.ACTIVE
        result = run("events", "replay", "--held")
        assert "20 event(s) back to pending" in result.output
    assert status_counts(rt) == {"pending": 20}
    drain(rt)
    assert status_counts(rt) == {"sent": 20}
    assert sorted(state.event_ids()) == sorted(ids)
    assert get_connection(rt, conn_id).status == ConnectionStatus.ACTIVE


# -- send-test-event / worker --------------------------------------------------------------


@pytest.mark.parametrize("event_name", ["Purchase", "InitiateCheckout"])
def test_send_test_event_sends_one_valid_event_with_the_test_code(
    rt: Runtime,
    run: Callable[..., Result],
    graph: tuple[FakeGraph, LiveServer],
    event_name: str,
) -> None:
    """The test event passes Meta's checks, carries the test code, and Meta's answer is printed."""
    state, _ = graph
    conn_id = add_connection(rt, test_event_code="TEST4242")
    result = run("send-test-event", "--connection", conn_id, "--event-name", event_name)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["events_received"] == 1
    assert answer["fbtrace_id"]
    assert [(r.event_name, r.test_event_code, r.pixel_id) for r in state.received] == [
        (event_name, "TEST4242", PIXEL)
    ]


def test_send_test_event_refuses_a_connection_without_a_test_code(
    rt: Runtime, run: Callable[..., Result], graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Without a test_event_code the event would count as real: nothing is sent."""
    conn_id = add_connection(rt)
    result = run("send-test-event", "--connection", conn_id)
    assert result.exit_code == 1
    assert "no test_event_code" in result.output
    assert graph[0].calls == 0


def test_send_test_event_prints_metas_refusal(
    rt: Runtime, run: Callable[..., Result], graph: tuple[FakeGraph, LiveServer]
) -> None:
    """When Meta refuses, its code and message are printed and the command fails."""
    graph[0].revoke(TOKEN)
    conn_id = add_connection(rt, test_event_code="TEST4242")
    result = run("send-test-event", "--connection", conn_id)
    assert result.exit_code == 1
    assert '"code": 190' in result.output


def test_worker_drain_prints_a_summary(
    rt: Runtime, run: Callable[..., Result], graph: tuple[FakeGraph, LiveServer]
) -> None:
    """`connector worker --drain` sends what is due and prints its counts as JSON."""
    conn_id = add_connection(rt)
    add_events(rt, conn_id, 12)
    result = run("worker", "--drain", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["sent"], summary["requests"]) == (12, 3)
    assert len(graph[0].event_ids()) == 12
