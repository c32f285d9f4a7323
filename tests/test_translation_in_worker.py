"""CONNECTOR_WEBHOOK_TRANSLATION=worker: the web records the sealed body, the worker translates.

What must hold (connector.inbox): the answer comes before the translation, the body at rest is
sealed, the worker makes exactly the events the request would have made and deletes the body
in the same transaction, a lifecycle delivery first translates what still waits for its
store, a failing body is tried again and finally given up with its reason, and on SQLite
(no fast path) the setting changes nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DataError

from connector import dispatcher, inbox
from connector.config import Settings
from connector.errors import ConfigError
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import (
    Event,
    EventStatus,
    WebhookBody,
    WebhookReceipt,
    utcnow,
)
from connector.web import create_app, webhooks
from tests.conftest import fixture_bytes
from tests.test_shopify_webhooks import (
    SHOP,
    events,
    headers_for,
    order_bytes,
    receipts,
)
from tests.test_shopify_webhooks import order_of_customer_191167 as customer_order

SECRET = "shpss_current"
#: the token the fake Graph API knows
TOKEN = "meta-token"

Post = Callable[..., Any]


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET, webhook_translation="worker")


@pytest.fixture
def shop(runtime: Runtime) -> str:
    with runtime.sessions.begin() as session:
        return queries.upsert_connection(
            session, "shopify", SHOP, pixel_id="1234567890", meta_token=TOKEN
        ).id


@pytest.fixture
def post(runtime: Runtime) -> Post:
    client = create_app(runtime=runtime).test_client()

    def send(topic: str, body: bytes, *, webhook_id: str | None = None) -> Any:
        return client.post(
            "/webhooks/shopify",
            data=body,
            headers=headers_for(topic, body, secret=SECRET, webhook_id=webhook_id),
        )

    return send


@pytest.fixture
def postgres_only(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("the web process leaves translation to the worker on PostgreSQL")


def bodies(runtime: Runtime) -> list[WebhookBody]:
    with runtime.sessions() as session:
        return list(session.scalars(select(WebhookBody)))


def inline(runtime: Runtime, make_settings: Callable[..., Settings]) -> Runtime:
    return replace(
        runtime,
        settings=make_settings(shopify_api_secret=SECRET, webhook_translation="inline"),
    )


def comparable(ev: Event) -> dict[str, Any]:
    return {
        "event_name": ev.event_name,
        "event_id": ev.event_id,
        "event_time": ev.event_time,
        "payload": ev.payload,
        "order_ref": ev.order_ref,
        "customer_ref": ev.customer_ref,
        "match_keys": ev.match_keys,
        "status": ev.status,
    }


@pytest.mark.usefixtures("postgres_only")
def test_an_order_is_answered_waiting_and_the_worker_makes_the_inline_event(
    runtime: Runtime, shop: str, post: Post, make_settings: Callable[..., Settings]
) -> None:
    """200 ``waiting`` at once; then exactly the event the request would have made."""
    body = order_bytes(id=1001)
    rv = post("orders/paid", body)
    assert (200, {"status": "waiting", "new_events": 0}) == (
        rv.status_code,
        rv.get_json(),
    )
    assert [] == events(runtime)
    [receipt] = receipts(runtime)
    assert (queries.WAITING, None) == (receipt.outcome, receipt.order_ref)
    [sealed] = bodies(runtime)
    # At rest the body is sealed: none of the shopper's data can be read from the row.
    for plain in (b"bob.norman", b"Norman", b"Louisville", b"+16136120707", b"total"):
        assert plain not in sealed.sealed
    assert 1 == inbox.translate_waiting(runtime)
    assert [] == bodies(runtime)
    [receipt] = receipts(runtime)
    assert ("accepted", "1001") == (receipt.outcome, receipt.order_ref)
    [waited] = events(runtime)

    # The same order through the request path (the store connected afresh) makes the same
    # event.
    with runtime.sessions.begin() as session:
        queries.redact_store(session, shop)
    now_inline = inline(runtime, make_settings)
    with now_inline.sessions.begin() as session:
        queries.upsert_connection(
            session, "shopify", SHOP, pixel_id="1234567890", meta_token="EAAB-token"
        )
    client = create_app(runtime=now_inline).test_client()
    rv = client.post(
        "/webhooks/shopify", data=body, headers=headers_for("orders/paid", body)
    )
    assert {"status": "accepted", "new_events": 1} == rv.get_json()
    [direct] = events(runtime)
    assert comparable(direct) == comparable(waited)


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_repeated_delivery_is_a_duplicate_and_waits_once(
    runtime: Runtime, post: Post
) -> None:
    body = order_bytes(id=1001)
    assert "waiting" == post("orders/paid", body, webhook_id="w-1").get_json()["status"]
    assert (
        "duplicate" == post("orders/paid", body, webhook_id="w-1").get_json()["status"]
    )
    assert 1 == len(bodies(runtime))
    assert 1 == inbox.translate_waiting(runtime)
    assert 1 == len(events(runtime))


@pytest.mark.usefixtures("postgres_only", "shop")
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(
            order_bytes(id=1001, note="\ud800 lone"),  # json.dumps escapes it
            "cannot keep",
            id="lone-surrogate",
        ),
    ],
)
def test_an_unusable_signed_body_is_recorded_with_its_reason(
    runtime: Runtime, post: Post, body: bytes, reason: str
) -> None:
    """Signed, so answered 200; the worker records it as skipped and why, and keeps nothing."""
    assert {"status": "waiting", "new_events": 0} == post(
        "orders/paid", body
    ).get_json()
    assert 1 == inbox.translate_waiting(runtime)
    [receipt] = receipts(runtime)
    assert "skipped" == receipt.outcome
    assert reason in (receipt.detail or "")
    assert ([], []) == (events(runtime), bodies(runtime))


@pytest.mark.usefixtures("postgres_only", "shop")
def test_an_uninstall_first_translates_what_waits_and_holds_it(
    runtime: Runtime, post: Post
) -> None:
    """Orders received before the uninstall still become events, held like the others."""
    post("orders/paid", order_bytes(id=1001))
    post("orders/paid", order_bytes(id=1002))
    rv = post("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    assert {"status": "action", "new_events": 0} == rv.get_json()
    assert [] == bodies(runtime)
    assert [EventStatus.HELD, EventStatus.HELD] == [e.status for e in events(runtime)]


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_customer_redaction_reaches_orders_still_waiting(
    runtime: Runtime, post: Post
) -> None:
    """customers/redact deletes the customer's orders even when they were not translated."""
    post("orders/paid", customer_order(299938))
    post("orders/paid", order_bytes())  # another customer's order stays
    rv = post("customers/redact", fixture_bytes("shopify/customers_redact.json"))
    assert {"status": "action", "new_events": 0} == rv.get_json()
    assert [] == bodies(runtime)
    assert ["5012345678901234567"] == [e.event_id for e in events(runtime)]
    assert ["orders/paid", "customers/redact"] == [r.topic for r in receipts(runtime)]


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_data_request_reports_orders_still_waiting(
    runtime: Runtime, post: Post
) -> None:
    post("orders/paid", customer_order(299938))
    post("customers/data_request", fixture_bytes("shopify/customers_data_request.json"))
    [_, request] = receipts(runtime)
    report = json.loads(request.detail or "{}")
    assert "299938" in json.dumps(report)


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_failing_body_is_tried_again_later_then_given_up_with_its_reason(
    runtime: Runtime, post: Post, caplog: pytest.LogCaptureFixture
) -> None:
    """A body no key opens: tried MAX_ATTEMPTS times, waiting longer each time, then failed."""
    post("orders/paid", order_bytes(id=1001))
    with runtime.sessions.begin() as session:
        session.execute(update(WebhookBody).values(sealed=b"gAAAAA-not-a-token"))
    now = utcnow()
    waits = []
    for attempt in range(1, inbox.MAX_ATTEMPTS):
        assert 1 == inbox.translate_waiting(runtime, now=now)
        [body] = bodies(runtime)
        assert (attempt, "CryptoError") == (body.attempts, body.last_error)
        waits.append(body.available_at - now)
        # not due again before its wait is over
        assert 0 == inbox.translate_waiting(runtime, now=now)
        now = body.available_at
    assert waits == sorted(waits)
    assert waits[0] == inbox.RETRY_FIRST
    assert 1 == inbox.translate_waiting(runtime, now=now)
    assert [] == bodies(runtime)
    [receipt] = receipts(runtime)
    assert "failed" == receipt.outcome
    assert "CryptoError" in (receipt.detail or "")
    assert "order sweep" in (receipt.detail or "")
    assert [] == events(runtime)
    assert "gAAAAA" not in caplog.text


@pytest.mark.usefixtures("postgres_only", "shop")
def test_one_failing_body_does_not_hold_back_the_others(
    runtime: Runtime, post: Post
) -> None:
    post("orders/paid", order_bytes(id=1001))
    post("orders/paid", order_bytes(id=1002))
    with runtime.sessions.begin() as session:
        first = min(session.scalars(select(WebhookBody.receipt_id)))
        session.execute(
            update(WebhookBody)
            .where(WebhookBody.receipt_id == first)
            .values(sealed=b"broken")
        )
    assert 2 == inbox.translate_waiting(runtime)
    assert ["1002"] == [e.order_ref for e in events(runtime)]
    [left] = bodies(runtime)
    assert (first, 1) == (left.receipt_id, left.attempts)


@pytest.mark.usefixtures("postgres_only", "shop")
def test_workers_side_by_side_translate_each_body_once(
    runtime: Runtime, post: Post
) -> None:
    """SKIP LOCKED: four threads, 40 bodies, 40 events, every body gone."""
    for n in range(40):
        post("orders/paid", order_bytes(id=2000 + n))
    done: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            n = inbox.translate_waiting(runtime, limit=3)
            if not n:
                return
            with lock:
                done.append(n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert 40 == sum(done)
    assert 40 == len({e.order_ref for e in events(runtime)}) == len(events(runtime))
    assert [] == bodies(runtime)


@pytest.fixture
def graph_runtime(
    runtime: Runtime, make_settings: Callable[..., Settings]
) -> Iterator[Runtime]:
    from tests.test_dispatcher import fake_graph

    with fake_graph() as (_, server):
        yield replace(
            runtime,
            settings=make_settings(
                shopify_api_secret=SECRET,
                webhook_translation="worker",
                meta_graph_url=server.url,
                http_timeout=2.0,
            ),
        )


@pytest.mark.usefixtures("postgres_only", "shop")
def test_the_worker_loop_translates_then_sends(
    graph_runtime: Runtime, post: Post
) -> None:
    """``connector worker --drain``: waiting orders become events and are sent."""
    recent = (utcnow() - timedelta(minutes=5)).isoformat()
    for n in range(5):
        post(
            "orders/paid",
            order_bytes(id=3000 + n, created_at=recent, processed_at=recent),
        )
    summary = dispatcher.run_worker(runtime=graph_runtime, drain=True)
    assert summary is not None
    assert [] == bodies(graph_runtime)
    assert [EventStatus.SENT] * 5 == [e.status for e in events(graph_runtime)]


def test_on_sqlite_the_request_still_translates(
    runtime: Runtime, shop: str, post: Post, is_postgres: bool
) -> None:
    """SQLite has no single-statement fast path: the setting leaves the request inline."""
    if is_postgres:
        pytest.skip("SQLite only")
    rv = post("orders/paid", order_bytes(id=1001))
    assert {"status": "accepted", "new_events": 1} == rv.get_json()
    assert [] == bodies(runtime)


def test_the_setting_takes_inline_or_worker_only(
    make_settings: Callable[..., Settings],
) -> None:
    base = {"CONNECTOR_ENV": "test"}
    assert "inline" == Settings.from_env(base).webhook_translation
    assert (
        "worker"
        == Settings.from_env(
            {**base, "CONNECTOR_WEBHOOK_TRANSLATION": "Worker"}
        ).webhook_translation
    )
    with pytest.raises(ConfigError, match="CONNECTOR_WEBHOOK_TRANSLATION"):
        Settings.from_env({**base, "CONNECTOR_WEBHOOK_TRANSLATION": "later"})


@pytest.mark.usefixtures("postgres_only", "shop")
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(
            DataError("UPDATE webhook_receipts ...", {}, ValueError("refused")),
            id="refused-by-the-database",
        ),
        pytest.param(TypeError("a bug"), id="a-bug-in-the-write"),
    ],
)
def test_one_bodys_failed_write_sets_back_only_that_body(
    runtime: Runtime, post: Post, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """The batch is taken again body by body: the others are translated, this one waits,
    and the worker loop goes on."""
    post("orders/paid", order_bytes(id=1001))
    post("orders/paid", order_bytes(id=1002))
    with runtime.sessions() as session:
        refused = min(session.scalars(select(WebhookBody.receipt_id)))
    record = queries.record_translation

    def refuse_one(session: Any, receipt_id: int, *args: Any, **kwargs: Any) -> Any:
        if receipt_id == refused:
            raise failure
        return record(session, receipt_id, *args, **kwargs)

    monkeypatch.setattr(queries, "record_translation", refuse_one)
    assert 2 == inbox.translate_waiting(runtime)
    assert ["1002"] == [e.order_ref for e in events(runtime)]
    [left] = bodies(runtime)
    assert (refused, 1, type(failure).__name__) == (
        left.receipt_id,
        left.attempts,
        left.last_error,
    )


@pytest.mark.usefixtures("postgres_only", "shop")
def test_metrics_say_how_many_bodies_wait_and_for_how_long(
    runtime: Runtime, post: Post
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def gauges() -> dict[str, float]:
        client = create_app(runtime=runtime).test_client()
        text = client.get("/metrics").get_data(as_text=True)
        return {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("connector_webhook_bodies")
        }

    assert {
        "connector_webhook_bodies_waiting": 0,
        "connector_webhook_bodies_oldest_seconds": 0,
    } == gauges()
    post("orders/paid", order_bytes(id=1001))
    post("orders/paid", order_bytes(id=1002))
    with runtime.sessions.begin() as session:
        session.execute(
            update(WebhookReceipt).values(received_at=utcnow() - timedelta(minutes=10))
        )
    seen = gauges()
    assert 2 == seen["connector_webhook_bodies_waiting"]
    assert 600 <= seen["connector_webhook_bodies_oldest_seconds"] < 900
    inbox.translate_waiting(runtime)
    assert 0 == gauges()["connector_webhook_bodies_waiting"]


@pytest.mark.usefixtures("postgres_only", "shop")
def test_an_uninstall_while_a_worker_translates_that_store_waits_without_a_deadlock(
    runtime: Runtime, post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker holds the body and needs the store's key-share lock for its events; the
    uninstall waits for the body before it locks the store, so both finish, neither aborted."""
    post("orders/paid", order_bytes(id=1001))
    locked, go = threading.Event(), threading.Event()
    translation = inbox._translation

    def slow(row: Any) -> Any:
        locked.set()
        go.wait(timeout=20)
        return translation(row)

    monkeypatch.setattr(inbox, "_translation", slow)
    done: dict[str, Any] = {}

    def worker_batch() -> None:
        done["translated"] = inbox.translate_waiting(runtime)

    def uninstall() -> None:
        body = fixture_bytes("shopify/app_uninstalled.json")
        done["uninstall"] = post("app/uninstalled", body).status_code

    worker = threading.Thread(target=worker_batch)
    worker.start()
    assert locked.wait(timeout=20)
    web = threading.Thread(target=uninstall)
    web.start()
    web.join(
        timeout=1.5
    )  # past PostgreSQL's deadlock_timeout (1 s) were it to deadlock
    go.set()
    worker.join(timeout=30)
    web.join(timeout=30)
    assert {"translated": 1, "uninstall": 200} == done
    assert [EventStatus.HELD] == [e.status for e in events(runtime)]


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_body_that_fails_to_translate_does_not_outlive_a_customer_redaction(
    runtime: Runtime, post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untranslatable when the redaction comes: deleted, its receipt failed, no event later."""
    post("orders/paid", customer_order(299938))
    translation = inbox._translation

    def transient(row: Any) -> Any:
        raise RuntimeError("transient")

    monkeypatch.setattr(inbox, "_translation", transient)
    rv = post("customers/redact", fixture_bytes("shopify/customers_redact.json"))
    assert {"status": "action", "new_events": 0} == rv.get_json()
    assert [] == bodies(runtime)
    [order] = [r for r in receipts(runtime) if r.topic == "orders/paid"]
    assert "failed" == order.outcome
    assert "customer redaction" in (order.detail or "")
    monkeypatch.setattr(inbox, "_translation", translation)
    assert 0 == inbox.translate_waiting(runtime, now=utcnow() + timedelta(hours=2))
    assert [] == events(runtime)


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_lifecycle_delivery_spends_no_tries_of_a_body_it_cannot_translate(
    runtime: Runtime, post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker keeps all its tries: an uninstall's passes over the body count none."""
    post("orders/paid", order_bytes(id=1001))

    def transient(row: Any) -> Any:
        raise RuntimeError("transient")

    monkeypatch.setattr(inbox, "_translation", transient)
    rv = post("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    assert 200 == rv.status_code
    [body] = bodies(runtime)
    assert 0 == body.attempts


@pytest.mark.usefixtures("postgres_only", "shop")
def test_a_body_a_worker_takes_after_the_first_pass_costs_no_deadlock(
    runtime: Runtime, post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body arrives after the lifecycle delivery's unlocked pass and a worker holds it:
    the locked transaction does not wait for it (NOWAIT) but starts over, and both finish."""
    post("orders/paid", order_bytes(id=1001))
    first_pass = webhooks._translate_waiting_first
    passes: list[int] = []

    def later_arrival(call: Any) -> None:
        passes.append(1)
        if len(passes) > 1:  # the first pass saw nothing: the body came after it
            first_pass(call)

    monkeypatch.setattr(webhooks, "_translate_waiting_first", later_arrival)
    locked, go = threading.Event(), threading.Event()
    translation = inbox._translation

    def slow(row: Any) -> Any:
        locked.set()
        go.wait(timeout=20)
        return translation(row)

    monkeypatch.setattr(inbox, "_translation", slow)
    done: dict[str, Any] = {}

    def worker_batch() -> None:
        done["translated"] = inbox.translate_waiting(runtime)

    def uninstall() -> None:
        body = fixture_bytes("shopify/app_uninstalled.json")
        done["uninstall"] = post("app/uninstalled", body).status_code

    worker = threading.Thread(target=worker_batch)
    worker.start()
    assert locked.wait(timeout=20)
    web = threading.Thread(target=uninstall)
    web.start()
    web.join(
        timeout=1.5
    )  # past PostgreSQL's deadlock_timeout (1 s) were it to deadlock
    go.set()
    worker.join(timeout=30)
    web.join(timeout=30)
    assert {"translated": 1, "uninstall": 200} == done
    assert len(passes) >= 2
    assert [EventStatus.HELD] == [e.status for e in events(runtime)]
