"""A checkout that grows: a pending InitiateCheckout takes a later delivery's richer data.

Through POST /webhooks/*: the first checkouts/update carries only an email, the second adds
name, address and phone. Until the event is sent (or leased, or tried) the stored event takes
the richer one; once sent, nothing changes and nothing is sent again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from adapters.shopify.signature import sign_body
from adapters.woocommerce.signature import sign as woo_sign
from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Event, EventStatus
from tests.conftest import fixture_bytes

SECRET = "shpss_growing"
SHOP = "grow.myshopify.com"
WOO_SECRET = "wc-growing-secret"
TOKEN = "2a1ace52255252df566af0faaedfbfa7"


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET)


@pytest.fixture
def connections(runtime: Runtime) -> dict[str, str]:
    return make_connections(runtime)


def make_connections(runtime: Runtime) -> dict[str, str]:
    """A Shopify shop and a WooCommerce store, both connected to a pixel: their ids."""
    with runtime.sessions.begin() as session:
        shop = queries.upsert_connection(
            session,
            "shopify",
            SHOP,
            platform_token="shpat_token",
            pixel_id="1234567890",
            meta_token="EAAB-token",
        )
        woo = queries.upsert_connection(
            session,
            "woocommerce",
            "https://grow.example",
            webhook_secret=WOO_SECRET,
            pixel_id="1234567891",
            meta_token="EAAB-token",
        )
        return {"shopify": shop.id, "woocommerce": woo.id}


def post_shopify(client: Any, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    rv = client.post(
        "/webhooks/shopify",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Hmac-Sha256": sign_body(body, SECRET.encode()),
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        },
    )
    assert 200 == rv.status_code, rv.get_data(as_text=True)
    result: dict[str, Any] = rv.get_json()
    return result


def post_woo(client: Any, conn_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    rv = client.post(
        f"/webhooks/woocommerce/{conn_id}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-WC-Webhook-Topic": "order.updated",
            "X-WC-Webhook-Signature": woo_sign(body, WOO_SECRET.encode()),
            "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex,
        },
    )
    assert 200 == rv.status_code, rv.get_data(as_text=True)
    result: dict[str, Any] = rv.get_json()
    return result


def shopify_checkout(*, rich: bool) -> dict[str, Any]:
    checkout: dict[str, Any] = json.loads(fixture_bytes("shopify/checkout.json"))
    if not rich:  # checkouts/update #1: the shopper has typed an email, nothing else
        checkout.update(
            billing_address=None, shipping_address=None, phone=None, customer=None
        )
    return checkout


def woo_draft(*, rich: bool) -> dict[str, Any]:
    draft: dict[str, Any] = json.loads(fixture_bytes("woocommerce/checkout-draft.json"))
    if not rich:
        draft["billing"] = {"email": draft["billing"]["email"]}
        draft["shipping"] = {}
        draft["customer_id"] = 0
    return draft


def stored(runtime: Runtime, conn_id: str) -> list[Event]:
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(Event).where(Event.connection_id == conn_id).order_by(Event.id)
            )
        )


def keys(event: Event) -> set[str]:
    return set(event.payload["user_data"])


def set_state(runtime: Runtime, conn_id: str, **values: Any) -> None:
    with runtime.sessions.begin() as session:
        session.execute(
            update(Event).where(Event.connection_id == conn_id).values(**values)
        )


def test_a_shopify_checkout_that_grows_is_stored_with_its_richer_data(
    client: Any, runtime: Runtime, connections: dict[str, str]
) -> None:
    conn_id = connections["shopify"]
    first = post_shopify(client, "checkouts/update", shopify_checkout(rich=False))
    assert 1 == first["new_events"]
    [poor] = stored(runtime, conn_id)
    assert {"em"} <= keys(poor)
    assert "ph" not in keys(poor)

    second = post_shopify(client, "checkouts/update", shopify_checkout(rich=True))
    assert 0 == second["new_events"]
    [rich] = stored(runtime, conn_id)
    assert rich.id == poor.id
    assert TOKEN == rich.event_id
    assert {"em", "ph", "fn", "ln", "ct", "zp", "country"} <= keys(rich)
    assert EventStatus.PENDING == rich.status

    # a later, poorer delivery (out of order) does not take the data away again
    post_shopify(client, "checkouts/update", shopify_checkout(rich=False))
    [still] = stored(runtime, conn_id)
    assert keys(rich) == keys(still)


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"status": EventStatus.SENT}, id="sent"),
        pytest.param({"status": EventStatus.SENDING, "lease_owner": "w1"}, id="leased"),
        pytest.param({"attempts": 1}, id="tried-and-waiting-to-retry"),
        pytest.param({"status": EventStatus.DEAD}, id="dead-lettered"),
    ],
)
def test_an_event_sent_or_on_its_way_is_never_changed(
    client: Any, runtime: Runtime, connections: dict[str, str], state: dict[str, Any]
) -> None:
    conn_id = connections["shopify"]
    post_shopify(client, "checkouts/update", shopify_checkout(rich=False))
    [before] = stored(runtime, conn_id)
    set_state(runtime, conn_id, **state)
    rv = post_shopify(client, "checkouts/update", shopify_checkout(rich=True))
    assert 0 == rv["new_events"]
    [after] = stored(runtime, conn_id)
    assert before.payload == after.payload


def test_a_woocommerce_block_checkout_draft_that_grows_is_stored_with_its_richer_data(
    client: Any, runtime: Runtime, connections: dict[str, str]
) -> None:
    conn_id = connections["woocommerce"]
    assert 1 == post_woo(client, conn_id, woo_draft(rich=False))["new_events"]
    [poor] = stored(runtime, conn_id)
    assert "ph" not in keys(poor)
    assert 0 == post_woo(client, conn_id, woo_draft(rich=True))["new_events"]
    [rich] = stored(runtime, conn_id)
    assert "wc_checkout_727" == rich.event_id
    assert {"em", "ph", "fn", "ln", "ct", "zp", "external_id"} <= keys(rich)
    assert "12" == rich.customer_ref


def test_a_purchase_is_not_refreshed(
    client: Any, runtime: Runtime, connections: dict[str, str]
) -> None:
    """A Purchase is made from the paid state; a later delivery of the order changes nothing."""
    conn_id = connections["shopify"]
    order = json.loads(fixture_bytes("shopify/order_storefront.json"))
    post_shopify(client, "orders/paid", order)
    [before] = stored(runtime, conn_id)
    order["email"] = "someone.else@example.com"
    post_shopify(client, "orders/paid", order)
    [after] = stored(runtime, conn_id)
    assert before.payload == after.payload
