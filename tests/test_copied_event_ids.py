"""An event id copied between orders never merges two orders (the outbox's guard).

Translation already refuses ``_meta_event_id`` on orders no browser placed; this is the rule
for what is left: when an event id is already taken by another order, the new order's event
uses its own order id, so both orders reach Meta.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from connector.config import Settings
from connector.events import CanonicalEvent, UserData
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Event
from tests.lifecycle_orders import woo_order
from tests.test_growing_checkouts import SECRET, make_connections, post_woo

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def purchase(event_id: str, order_ref: str) -> CanonicalEvent:
    return CanonicalEvent(
        event_name="Purchase",
        event_id=event_id,
        event_time=NOW,
        action_source="website",
        event_source_url="https://woo.example",
        user_data=UserData(em=("b" * 64,), client_user_agent="UA"),
        order_ref=order_ref,
        customer_ref="c1",
    )


def receipt(connection_id: str, delivery_id: str) -> queries.ReceiptIn:
    return queries.ReceiptIn(
        platform="woocommerce",
        connection_id=connection_id,
        delivery_id=delivery_id,
        topic="order.updated",
    )


@pytest.fixture
def connection_id(runtime: Runtime) -> str:
    with runtime.sessions.begin() as session:
        return queries.upsert_connection(
            session, "woocommerce", "https://woo.example"
        ).id


def record(
    runtime: Runtime, connection_id: str, delivery: str, ev: CanonicalEvent
) -> Any:
    with runtime.engine.begin() as conn:
        return queries.record_delivery(
            conn, receipt(connection_id, delivery), [ev], now=NOW
        )


def rows(runtime: Runtime) -> list[tuple[str, str | None, str]]:
    with runtime.sessions() as session:
        return [
            (e.event_id, e.order_ref, e.payload["event_id"])
            for e in session.scalars(select(Event).order_by(Event.id))
        ]


def test_an_id_taken_by_another_order_gives_way_to_the_order_id(
    runtime: Runtime, connection_id: str
) -> None:
    first = record(runtime, connection_id, "a", purchase("wc-pixel-5001-ab12", "5001"))
    assert [("Purchase", "wc-pixel-5001-ab12")] == first.new_events
    second = record(runtime, connection_id, "b", purchase("wc-pixel-5001-ab12", "5102"))
    assert [("Purchase", "5102")] == second.new_events
    assert [
        ("wc-pixel-5001-ab12", "5001", "wc-pixel-5001-ab12"),
        ("5102", "5102", "5102"),
    ] == rows(runtime)


def test_the_same_order_again_is_still_one_event(
    runtime: Runtime, connection_id: str
) -> None:
    record(runtime, connection_id, "a", purchase("wc-pixel-5001-ab12", "5001"))
    again = record(runtime, connection_id, "b", purchase("wc-pixel-5001-ab12", "5001"))
    later_id = record(runtime, connection_id, "c", purchase("5001", "5001"))
    assert [] == again.new_events
    assert [] == later_id.new_events
    assert [("wc-pixel-5001-ab12", "5001", "wc-pixel-5001-ab12")] == rows(runtime)


def test_a_redelivered_copy_is_still_one_event(
    runtime: Runtime, connection_id: str
) -> None:
    record(runtime, connection_id, "a", purchase("wc-pixel-5001-ab12", "5001"))
    record(runtime, connection_id, "b", purchase("wc-pixel-5001-ab12", "5102"))
    third = record(runtime, connection_id, "c", purchase("wc-pixel-5001-ab12", "5102"))
    assert [] == third.new_events
    assert 2 == len(rows(runtime))


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET)


def test_two_checkout_orders_carrying_one_copied_id_are_two_purchases(
    client: Any, runtime: Runtime
) -> None:
    """An "order again" plugin copies the meta of an earlier checkout order onto a new one."""
    conn_id = make_connections(runtime)["woocommerce"]
    copied = {"_meta_event_id": "wc-pixel-5001-ab12"}
    for order_id in (5001, 5400):
        order = woo_order(
            order_id, lines=[(93, 0, 1, "20.00")], total="20.00", meta=copied
        )
        assert 1 == post_woo(client, conn_id, order)["new_events"]
    assert [
        ("wc-pixel-5001-ab12", "5001", "wc-pixel-5001-ab12"),
        ("5400", "5400", "5400"),
    ] == rows(runtime)
