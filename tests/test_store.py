"""The outbox: one transaction per delivery, duplicates settled by unique keys."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from connector.errors import OAuthStateError
from connector.events import CanonicalEvent, UserData
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, Event, EventStatus, WebhookReceipt

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def purchase(event_id: str) -> CanonicalEvent:
    return CanonicalEvent(
        event_name="Purchase",
        event_id=event_id,
        event_time=NOW,
        action_source="website",
        event_source_url="https://shop.example",
        user_data=UserData(em=("b" * 64,), client_user_agent="UA"),
        order_ref=event_id,
        customer_ref="c1",
    )


def receipt(connection_id: str, delivery_id: str = "d1") -> queries.ReceiptIn:
    return queries.ReceiptIn(
        platform="shopify",
        connection_id=connection_id,
        delivery_id=delivery_id,
        topic="orders/paid",
    )


@pytest.fixture
def connection_id(runtime: Runtime) -> str:
    with runtime.sessions.begin() as session:
        return queries.upsert_connection(session, "shopify", "a.myshopify.com").id


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_delivery_and_its_events_are_recorded_together(
    runtime: Runtime, connection_id: str
) -> None:
    """A new delivery reports the events it added to the outbox, pending and due now."""
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(
            session, receipt(connection_id), [purchase("1"), purchase("2")], now=NOW
        )
    assert not rv.duplicate_delivery
    assert [("Purchase", "1"), ("Purchase", "2")] == rv.new_events
    with runtime.sessions() as session:
        rows = session.scalars(select(Event).order_by(Event.event_id)).all()
        assert [EventStatus.PENDING] * 2 == [r.status for r in rows]
        assert rows[0].payload == purchase("1").to_meta()
        assert rows[0].next_attempt_at == NOW


def guard_of(runtime: Runtime, connection_id: str) -> queries.ConnectionGuard:
    """The connection's columns as stored now, as the webhook path reads them."""
    with runtime.sessions() as session:
        row = session.execute(
            text(
                "SELECT status, store, CAST(settings AS text), test_event_code,"
                " webhook_secret FROM connections WHERE id = :id"
            ),
            {"id": connection_id},
        ).one()
    return queries.ConnectionGuard(
        status=row[0],
        store=row[1],
        settings=row[2],
        test_event_code=row[3],
        webhook_secret=row[4],
    )


def test_a_guard_that_still_holds_records_the_delivery(
    runtime: Runtime, connection_id: str
) -> None:
    """The columns a delivery was checked with are unchanged: it is recorded as usual."""
    guard = guard_of(runtime, connection_id)
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(
            session, receipt(connection_id), [purchase("1")], now=NOW, guard=guard
        )
    assert (False, [("Purchase", "1")]) == (rv.connection_changed, rv.new_events)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"status": "uninstalled"}, id="uninstalled"),
        pytest.param({"webhook_secret": "new-secret"}, id="new-secret"),
        pytest.param({"settings": {"content_id": "sku"}}, id="new-settings"),
        pytest.param({"test_event_code": "TEST1"}, id="test-mode"),
    ],
)
def test_a_guard_that_no_longer_holds_records_nothing(
    runtime: Runtime, connection_id: str, change: dict[str, object]
) -> None:
    """A connection changed since it was read: nothing recorded, and the answer says so."""
    guard = guard_of(runtime, connection_id)
    with runtime.sessions.begin() as session:
        conn = session.get(Connection, connection_id)
        assert conn is not None
        for name, value in change.items():
            setattr(conn, name, value)
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(
            session, receipt(connection_id), [purchase("1")], now=NOW, guard=guard
        )
    assert (True, []) == (rv.connection_changed, rv.new_events)
    assert (0, 0) == (count(runtime, WebhookReceipt), count(runtime, Event))


def test_a_deleted_connection_records_nothing_and_raises_nothing(
    runtime: Runtime, connection_id: str
) -> None:
    """A delivery for a connection deleted meanwhile is no foreign-key violation."""
    with runtime.sessions.begin() as session:
        queries.redact_store(session, connection_id)
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(
            session, receipt(connection_id), [purchase("1")], now=NOW
        )
    assert rv.connection_changed
    assert (0, 0) == (count(runtime, WebhookReceipt), count(runtime, Event))


def test_a_redelivery_changes_nothing(runtime: Runtime, connection_id: str) -> None:
    """The same delivery id again is a duplicate and adds no event."""
    for _ in range(2):
        with runtime.sessions.begin() as session:
            rv = queries.record_delivery(
                session, receipt(connection_id), [purchase("1")], now=NOW
            )
    assert rv.duplicate_delivery
    assert 1 == count(runtime, WebhookReceipt)
    assert 1 == count(runtime, Event)


def test_another_delivery_of_the_same_order_adds_no_event(
    runtime: Runtime, connection_id: str
) -> None:
    """orders/create then orders/paid: two receipts, one Purchase."""
    with runtime.sessions.begin() as session:
        queries.record_delivery(
            session, receipt(connection_id, "create"), [purchase("1")]
        )
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(
            session, receipt(connection_id, "paid"), [purchase("1")]
        )
    assert not rv.duplicate_delivery
    assert [] == rv.new_events
    assert 2 == count(runtime, WebhookReceipt)
    assert 1 == count(runtime, Event)


def test_a_changed_event_id_for_the_same_order_adds_no_event(
    runtime: Runtime, connection_id: str
) -> None:
    """One Purchase per order even when a later delivery carries another event_id."""
    with runtime.sessions.begin() as session:
        queries.record_delivery(session, receipt(connection_id, "a"), [purchase("1")])
    later = purchase("pixel-event-9").replace(order_ref="1")
    with runtime.sessions.begin() as session:
        rv = queries.record_delivery(session, receipt(connection_id, "b"), [later])
    assert [] == rv.new_events
    assert 1 == count(runtime, Event)


def test_fifty_concurrent_identical_deliveries(
    runtime: Runtime, connection_id: str
) -> None:
    """Fifty threads recording the same delivery at once leave one receipt and one row per event."""
    barrier = threading.Barrier(50)
    results: list[queries.Accepted] = []
    errors: list[BaseException] = []

    def record() -> None:
        try:
            barrier.wait()
            with runtime.sessions.begin() as session:
                results.append(
                    queries.record_delivery(
                        session, receipt(connection_id), [purchase("1"), purchase("2")]
                    )
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [] == errors
    assert 1 == sum(not r.duplicate_delivery for r in results)
    assert 1 == count(runtime, WebhookReceipt)
    assert 2 == count(runtime, Event)


def test_redaction_deletes_one_customer_only(
    runtime: Runtime, connection_id: str
) -> None:
    """customers/redact removes that customer's events and receipts, nobody else's."""
    other = purchase("9").replace(customer_ref="c2", order_ref="9")
    with runtime.sessions.begin() as session:
        queries.record_delivery(
            session,
            queries.ReceiptIn(
                platform="shopify",
                connection_id=connection_id,
                delivery_id="a",
                topic="t",
                customer_ref="c1",
            ),
            [purchase("1")],
        )
        queries.record_delivery(session, receipt(connection_id, "b"), [other])
    with runtime.sessions.begin() as session:
        events, receipts = queries.redact_customer(session, connection_id, "c1", ["1"])
    assert (1, 1) == (events, receipts)
    with runtime.sessions() as session:
        assert ["9"] == list(session.scalars(select(Event.event_id)))


class TestOAuthState:
    def test_a_state_is_spent_once(self, runtime: Runtime, connection_id: str) -> None:
        """The second use of a state is refused."""
        with runtime.sessions.begin() as session:
            nonce = queries.issue_state(
                session, "meta", connection_id=connection_id, now=NOW
            )
        with runtime.sessions.begin() as session:
            state = queries.consume_state(
                session, nonce, "meta", connection_id=connection_id, now=NOW
            )
            assert state.connection_id == connection_id
        with (
            runtime.sessions.begin() as session,
            pytest.raises(OAuthStateError, match="used"),
        ):
            queries.consume_state(session, nonce, "meta", now=NOW)

    @pytest.mark.parametrize(
        ("purpose", "delay", "conn", "fragment"),
        [
            pytest.param(
                "shopify", timedelta(0), None, "not valid", id="other-purpose"
            ),
            pytest.param("meta", timedelta(minutes=11), None, "expired", id="expired"),
            pytest.param(
                "meta", timedelta(0), "someone-else", "another connection", id="foreign"
            ),
        ],
    )
    def test_a_wrong_state_is_refused(
        self,
        runtime: Runtime,
        connection_id: str,
        purpose: str,
        delay: timedelta,
        conn: str | None,
        fragment: str,
    ) -> None:
        """States are bound to purpose, time and connection."""
        with runtime.sessions.begin() as session:
            nonce = queries.issue_state(
                session, "meta", connection_id=connection_id, now=NOW
            )
        with (
            runtime.sessions.begin() as session,
            pytest.raises(OAuthStateError, match=fragment),
        ):
            queries.consume_state(
                session, nonce, purpose, connection_id=conn, now=NOW + delay
            )

    def test_only_the_hash_is_stored(self, runtime: Runtime) -> None:
        """A database reader cannot replay a state."""
        with runtime.sessions.begin() as session:
            nonce = queries.issue_state(session, "meta")
        with runtime.sessions() as session:
            stored = session.scalars(select(queries.OAuthState.nonce_hash)).all()
        assert nonce not in stored
