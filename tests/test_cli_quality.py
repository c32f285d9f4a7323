"""`connector quality`, as an operator runs it after a day of orders and Meta's daily read."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from adapters.woocommerce.translate import translate as woo_translate
from connector import dataset_quality, dispatcher
from connector.cli import cli
from connector.platform import ConnectionInfo
from connector.runtime import Runtime
from connector.store import queries
from tests.conftest import fixture_bytes
from tests.fakes.dataset_quality import DatasetQuality, event_answer
from tests.fakes.graph import FakeGraph
from tests.fakes.server import LiveServer
from tests.test_quality import FAST, TOKEN, add_connection, graph, worker_runtime

__all__ = ["graph", "worker_runtime"]  # fixtures used by name below


@pytest.fixture
def run(worker_runtime: Runtime) -> Callable[..., Result]:
    s = worker_runtime.settings
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


def send_orders(rt: Runtime, conn_id: str, n: int, *, ip: str) -> None:
    """``n`` paid WooCommerce orders, every other one without a phone, sent to the fake Meta."""
    now = datetime.now(UTC)
    info = ConnectionInfo(
        id=conn_id, platform="woocommerce", store="https://shop.example", settings={}
    )
    with rt.sessions.begin() as session:
        for i in range(n):
            order: dict[str, Any] = json.loads(
                fixture_bytes("woocommerce/order-processing.json")
            )
            order["id"] = 5000 + i
            order["customer_ip_address"] = ip
            if i % 2:
                order["billing"] = {**order["billing"], "phone": ""}
            events = [
                e.replace(event_time=now - timedelta(hours=1))
                for e in woo_translate("order.updated", order, info, now).events
            ]
            queries.record_delivery(
                session,
                queries.ReceiptIn(
                    platform="woocommerce",
                    connection_id=conn_id,
                    delivery_id=f"q{i}",
                    topic="order.updated",
                ),
                events,
                now=now,
            )
    dispatcher.run_worker(runtime=rt, drain=True, policy=FAST)


def test_quality_shows_coverage_estimate_and_meta_scores(
    worker_runtime: Runtime,
    graph: tuple[FakeGraph, DatasetQuality, LiveServer],
    run: Callable[..., Result],
) -> None:
    """The table lists each key's share per event name, our estimate, Meta's EMQ and warnings."""
    rt = worker_runtime
    dq = graph[1]
    conn_id = add_connection(rt, "woocommerce", "https://shop.example", "3001")
    send_orders(rt, conn_id, 10, ip="168.212.226.204")
    dq.access = {TOKEN: {"3001"}}
    dq.answers["3001"] = [
        event_answer(
            "Purchase", score=6.8, browser_event_id=100.0, overall_event_id=4.0
        )
    ]
    dataset_quality.check_dataset_quality(rt, now=datetime.now(UTC))
    result = run("quality", "--connection", conn_id, "--days", "7")
    assert 0 == result.exit_code, result.output
    lines = result.output.splitlines()
    assert "Purchase" in lines[3]
    table = {line[:22].strip(): line[22:].split() for line in lines[5:22]}
    assert ["10"] == table["events sent"]
    assert ["100%"] == table["em (email)"]
    assert ["50%"] == table["ph (phone)"]
    assert ["100%"] == table["client_ip_address"]
    assert ["0%"] == table["fbc (click id)"]
    assert "6.8" in result.output
    assert "our estimate" in result.output
    assert "not Meta's score" in result.output
    assert "eventID = the order id" in result.output
    assert "To improve:" in result.output

    data = json.loads(run("quality", "--json", "--connection", conn_id).output)
    (report,) = data["connections"]
    (purchase,) = report["events"]
    assert (10, 1.0, 0.5) == (
        purchase["events_sent"],
        purchase["coverage"]["em"],
        purchase["coverage"]["ph"],
    )
    # em 3 + external id 1 + IP and UA 1 + names 0.5 on all; phone 2 on half.
    assert 6.5 == purchase["our_estimate"]
    assert 6.8 == report["meta"]["scores"][0]["composite_score"]
    assert ["dedup_event_id_mismatch"] == [w["kind"] for w in report["warnings"]]


def test_quality_says_why_meta_scores_are_missing(
    worker_runtime: Runtime,
    graph: tuple[FakeGraph, DatasetQuality, LiveServer],
    run: Callable[..., Result],
) -> None:
    """A token without access shows as such; before the first read, so does that."""
    rt = worker_runtime
    first = add_connection(rt, "woocommerce", "https://a.example", "3002")
    second = add_connection(rt, "woocommerce", "https://b.example", "3003")
    # No token may read either pixel; then the second gets a new pixel, not read yet.
    dataset_quality.check_dataset_quality(rt, now=datetime.now(UTC))
    with rt.sessions.begin() as session:
        queries.get_connection(session, second).pixel_id = "3004"
    out = run("quality").output
    assert "no access" in out
    assert "not read yet" in out
    assert first in out
    assert "No events were sent in this period." in out


def test_quality_for_an_unknown_connection_fails(run: Callable[..., Result]) -> None:
    """An unknown id is an error with exit status 1, never a traceback."""
    result = run("quality", "--connection", "nope")
    assert 1 == result.exit_code
    assert "no connection nope" in result.output
    assert {"connections": []} == json.loads(run("quality", "--json").output)
