"""Very large orders: a webhook of a few hundred lines is over 1 MiB and must not get 413.

A 413 makes Shopify retry and finally remove the subscription; WooCommerce counts it towards
disabling the webhook. The webhook routes take up to WEBHOOK_MAX_BODY_BYTES; every other
route keeps the small MAX_BODY_BYTES.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from connector.config import Settings
from connector.runtime import Runtime
from connector.store.models import Event
from connector.web import MAX_BODY_BYTES, WEBHOOK_MAX_BODY_BYTES
from tests.lifecycle_orders import shopify_order, woo_order
from tests.test_growing_checkouts import (
    SECRET,
    make_connections,
    post_shopify,
    post_woo,
)

LINES = 400


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET)


@pytest.fixture
def connections(runtime: Runtime) -> dict[str, str]:
    return make_connections(runtime)


def pos_order() -> dict[str, Any]:
    """A 400-line POS order, each line taxed by state, county and city as POS orders are."""
    order = shopify_order(
        9001,
        lines=[(10_000 + n, 500 + n, 70_000 + n, 1, 1, "2.50") for n in range(LINES)],
        total="1000.00",
        source_name="pos",
        browser=False,
    )
    for n, line in enumerate(order["line_items"]):
        tax = line["tax_lines"][0]
        line["tax_lines"] = [
            {**copy.deepcopy(tax), "title": title}
            for title in ("State", "County", "City")
        ]
        line["discount_allocations"] *= 3
        line["title"] = f"Hand-thrown stoneware mug, glaze {n}, speckled oatmeal finish"
        line["properties"] = [
            {"name": "Gift message", "value": "Happy birthday, see you soon! " * 14}
        ]
    return order


def stored(runtime: Runtime, conn_id: str) -> list[Event]:
    with runtime.sessions() as session:
        return list(
            session.scalars(select(Event).where(Event.connection_id == conn_id))
        )


def test_a_400_line_pos_order_over_one_mebibyte_is_accepted(
    client: Any, runtime: Runtime, connections: dict[str, str]
) -> None:
    order = pos_order()
    assert len(json.dumps(order).encode()) > MAX_BODY_BYTES
    rv = post_shopify(client, "orders/paid", order)
    assert {"status": "accepted", "new_events": 1} == rv
    [event] = stored(runtime, connections["shopify"])
    custom = event.payload["custom_data"]
    assert LINES == len(custom["contents"])
    assert LINES == custom["num_items"]
    assert Decimal("1000.00") == Decimal(str(custom["value"]))
    assert "physical_store" == event.payload["action_source"]


def test_a_400_line_woocommerce_order_over_one_mebibyte_is_accepted(
    client: Any, runtime: Runtime, connections: dict[str, str]
) -> None:
    order = woo_order(
        9002, lines=[(600 + n, 0, 1, "2.50") for n in range(LINES)], total="1000.00"
    )
    for line in order["line_items"]:
        line["meta_data"] = [
            {"id": n, "key": f"_engraving_{n}", "value": "x" * 600} for n in range(4)
        ]
    assert len(json.dumps(order).encode()) > MAX_BODY_BYTES
    rv = post_woo(client, connections["woocommerce"], order)
    assert {"status": "accepted", "new_events": 1} == rv
    [event] = stored(runtime, connections["woocommerce"])
    assert LINES == len(event.payload["custom_data"]["contents"])


def test_other_routes_keep_the_small_limit(client: Any) -> None:
    assert WEBHOOK_MAX_BODY_BYTES > MAX_BODY_BYTES
    rv = client.post(
        "/woocommerce/callback",
        data=b"{" + b" " * MAX_BODY_BYTES + b"}",
        content_type="application/json",
    )
    assert 413 == rv.status_code
