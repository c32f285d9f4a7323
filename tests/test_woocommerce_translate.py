"""WooCommerce order payloads -> Meta events, driven by the recorded order and its variants."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.woocommerce.translate import (
    INITIATE_CHECKOUT_PREFIX,
    delivery_key,
    translate,
)
from connector.errors import PayloadError
from connector.matching import hash_value
from connector.platform import ConnectionInfo
from tests.conftest import fixture_bytes

NOW = datetime(2017, 3, 25, 12, 0, tzinfo=UTC)
STORE = "https://example.com"


def load(name: str) -> Any:
    return json.loads(fixture_bytes(f"woocommerce/{name}"))


def conn(**settings: Any) -> ConnectionInfo:
    return ConnectionInfo(
        id="c1", platform="woocommerce", store=STORE, settings=settings
    )


@pytest.mark.parametrize(
    ("fixture", "topic", "names"),
    [
        pytest.param("order-pending.json", "order.created", [], id="pending"),
        pytest.param(
            "order-processing.json", "order.updated", ["Purchase"], id="processing"
        ),
        pytest.param(
            "order-completed.json", "order.updated", ["Purchase"], id="completed"
        ),
        pytest.param("order-on-hold.json", "order.updated", [], id="on-hold"),
        pytest.param("order-failed.json", "order.updated", [], id="failed"),
        pytest.param("order-cancelled.json", "order.updated", [], id="cancelled"),
        # paid before the refund: the same Purchase again, which the outbox ignores
        pytest.param(
            "order-refunded.json", "order.updated", ["Purchase"], id="refunded"
        ),
        pytest.param(
            "checkout-draft.json", "order.updated", ["InitiateCheckout"], id="draft"
        ),
        pytest.param(
            "checkout-draft-anonymous.json", "order.created", [], id="draft-no-contact"
        ),
        pytest.param("order-processing.json", "order.deleted", [], id="deleted-topic"),
        pytest.param("order-deleted.json", "order.deleted", [], id="deleted-body"),
        pytest.param("order-processing.json", "product.updated", [], id="other-topic"),
        pytest.param("order.json", "order.restored", ["Purchase"], id="restored"),
    ],
)
def test_each_status_makes_the_documented_events(
    fixture: str, topic: str, names: list[str]
) -> None:
    """Only paid orders make a Purchase and only contactable drafts an InitiateCheckout."""
    outcome = translate(topic, load(fixture), conn(), NOW)
    assert names == [e.event_name for e in outcome.events]
    assert (outcome.skipped is None) == bool(names)


def test_every_paid_state_of_an_order_has_one_event_id() -> None:
    """Processing, completed and refunded deliveries repeat one Purchase event_id."""
    ids = {
        translate("order.updated", load(name), conn(), NOW).events[0].event_id
        for name in (
            "order-processing.json",
            "order-completed.json",
            "order-refunded.json",
        )
    }
    assert {"727"} == ids


def test_purchase_carries_what_meta_matches_on() -> None:
    """The Purchase has the order's value, currency, contents, time and hashed customer."""
    (event,) = translate(
        "order.updated", load("order-processing.json"), conn(), NOW
    ).events
    meta = event.to_meta()
    assert "Purchase" == meta["event_name"]
    assert (
        int(datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC).timestamp())
        == meta["event_time"]
    )
    assert "website" == meta["action_source"]
    assert STORE == meta["event_source_url"]
    assert Decimal("29.35") == event.custom_data.value
    assert "USD" == meta["custom_data"]["currency"]
    assert [
        {"id": "93", "quantity": 2, "item_price": 3.0},
        {"id": "23", "quantity": 1, "item_price": 12.0},
    ] == meta["custom_data"]["contents"]
    assert 3 == meta["custom_data"]["num_items"]
    assert [hash_value("john.doe@example.com")] == meta["user_data"]["em"]
    assert [hash_value("14155550100")] == meta["user_data"]["ph"]
    assert [hash_value("12")] == meta["user_data"]["external_id"]
    # The recorded order's 203.0.113.7 is a documentation address: never a shopper's.
    assert "client_ip_address" not in meta["user_data"]
    assert meta["user_data"]["client_user_agent"].startswith("Mozilla/5.0")
    assert ("727", "12") == (event.order_ref, event.customer_ref)


def test_plugin_meta_sets_event_id_fbp_and_fbc() -> None:
    """_meta_event_id, _fbp and an fbclid in the attribution landing page reach the event."""
    (event,) = translate(
        "order.updated", load("order-plugin-meta.json"), conn(), NOW
    ).events
    assert "wc-pixel-728-9f1c" == event.event_id
    assert "fb.1.1490210000000.1234567890" == event.user_data.fbp
    started = datetime(2017, 3, 22, 19, 20, tzinfo=UTC)
    assert f"fb.1.{int(started.timestamp() * 1000)}.IwAR2xYzAbC" == event.user_data.fbc
    assert "728" == event.order_ref


def test_numbers_as_strings_and_unicode_escapes_are_read() -> None:
    """A string id and quantity and \\uXXXX-escaped names translate like native values."""
    raw = fixture_bytes("woocommerce/order-plugin-meta.json")
    assert b"\\u00eb" in raw
    assert b"\\/" in raw
    (event,) = translate("order.updated", json.loads(raw), conn(), NOW).events
    assert 2 == event.custom_data.contents[0].quantity
    # billing first, then the shipping name (the recorded order ships to John)
    assert (hash_value("zoë"), hash_value("john")) == event.user_data.fn
    assert (
        hash_value("46701234567"),
    ) == event.user_data.ph  # read in the billing country, SE


def test_initiate_checkout_has_the_documented_prefixed_id() -> None:
    """A draft's event_id is the prefix plus the draft order id."""
    (event,) = translate(
        "order.updated", load("checkout-draft.json"), conn(), NOW
    ).events
    assert f"{INITIATE_CHECKOUT_PREFIX}727" == event.event_id
    assert "wc_checkout_727" == event.event_id
    assert "website" == event.action_source


@pytest.mark.parametrize(
    ("created_via", "settings", "expected"),
    [
        pytest.param("checkout", {}, "website", id="checkout"),
        pytest.param("store-api", {}, "website", id="block-checkout"),
        pytest.param("admin", {}, "other", id="admin"),
        pytest.param("rest-api", {}, "system_generated", id="rest-api"),
        pytest.param("subscription", {}, "system_generated", id="subscription"),
        pytest.param("pos-rest-api", {}, "physical_store", id="pos"),
        pytest.param("", {}, "other", id="unknown"),
        pytest.param(
            "admin",
            {"action_sources": {"admin": "phone_call"}},
            "phone_call",
            id="override",
        ),
        pytest.param(
            "admin",
            {"action_sources": {"admin": "telepathy"}},
            "other",
            id="bad-override",
        ),
    ],
)
def test_action_source_follows_created_via(
    created_via: str, settings: dict[str, Any], expected: str
) -> None:
    """created_via picks the action_source from the documented table."""
    order = load("order-processing.json") | {"created_via": created_via}
    (event,) = translate("order.updated", order, conn(**settings), NOW).events
    assert expected == event.action_source
    assert (STORE if expected == "website" else None) == event.event_source_url


def test_a_website_order_without_user_agent_is_not_sent_as_website() -> None:
    """Meta refuses website events without client_user_agent, so such an order is 'other'."""
    order = load("order-processing.json") | {"customer_user_agent": ""}
    (event,) = translate("order.updated", order, conn(), NOW).events
    assert "other" == event.action_source


@pytest.mark.parametrize(
    ("setting", "ids"),
    [
        pytest.param({}, ["93", "23"], id="default-ids"),
        pytest.param({"content_id_format": "sku"}, ["93", "Bar3"], id="sku"),
        pytest.param(
            {"content_id_format": "facebook_retailer_id"},
            ["wc_post_id_93", "Bar3_23"],
            id="facebook-retailer-id",
        ),
        pytest.param({"content_id_format": "nonsense"}, ["93", "23"], id="bad-setting"),
    ],
)
def test_content_ids_follow_the_setting(
    setting: dict[str, Any], ids: list[str]
) -> None:
    """content_id_format picks ids, SKUs or the Facebook plugin's retailer ids."""
    (event,) = translate(
        "order.updated", load("order-processing.json"), conn(**setting), NOW
    ).events
    assert ids == [c.id for c in event.custom_data.contents]


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        pytest.param({}, [], id="default"),
        pytest.param({"on_hold_is_paid": True}, ["Purchase"], id="offline-gateways"),
        pytest.param({"on_hold_is_paid": "yes"}, [], id="only-true-counts"),
    ],
)
def test_on_hold_counts_only_when_the_store_says_so(
    setting: dict[str, Any], names: list[str]
) -> None:
    """on-hold makes a Purchase only with on_hold_is_paid set to true."""
    outcome = translate(
        "order.updated", load("order-on-hold.json"), conn(**setting), NOW
    )
    assert names == [e.event_name for e in outcome.events]


def test_event_time_never_lies_in_the_future() -> None:
    """A store clock ahead of ours is clamped to now."""
    order = load("order-processing.json") | {"date_paid_gmt": "2030-01-01T00:00:00"}
    (event,) = translate("order.updated", order, conn(), NOW).events
    assert NOW == event.event_time


def test_a_rest_error_body_is_recorded_without_an_event() -> None:
    """WooCommerce's error object instead of an order is skipped with a readable reason."""
    outcome = translate("order.updated", load("error-cannot-view.json"), conn(), NOW)
    assert [] == list(outcome.events)
    assert outcome.skipped is not None
    assert "woocommerce_rest_cannot_view" in outcome.skipped


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([1, 2], id="list"),
        pytest.param("order", id="string"),
        pytest.param({"status": "processing"}, id="no-id"),
        pytest.param({"id": "abc", "status": "processing"}, id="bad-id"),
        pytest.param(
            {"id": 5, "status": "processing", "currency": "USD"}, id="no-total"
        ),
        pytest.param(
            {"id": 5, "status": "processing", "total": "x", "currency": "USD"},
            id="bad-total",
        ),
        pytest.param(
            {"id": 5, "status": "completed", "total": "1.00", "currency": 7},
            id="bad-currency",
        ),
    ],
)
def test_malformed_orders_raise_payload_error(payload: Any) -> None:
    """A body that is not an order WooCommerce could send is a PayloadError, not a crash."""
    with pytest.raises(PayloadError):
        translate("order.updated", payload, conn(), NOW)


def test_identical_content_has_one_delivery_key_and_new_state_another() -> None:
    """A redelivery keys the same; a new status or modification keys differently."""
    processing = load("order-processing.json")
    assert delivery_key(processing) == delivery_key(json.loads(json.dumps(processing)))
    assert delivery_key(processing) != delivery_key(load("order-completed.json"))
    assert delivery_key(processing).startswith("727:processing:2017-03-22T19:28:08:")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
order_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.integers(min_value=1, max_value=10**6),
        "status": st.sampled_from(["processing", "checkout-draft", "on-hold", "x"])
        | json_values,
        "total": json_values | st.just("12.50"),
        "currency": json_values | st.just("EUR"),
        "billing": json_values,
        "shipping": json_values,
        "line_items": json_values,
        "meta_data": json_values,
        "date_paid_gmt": json_values | st.just("2017-01-01T00:00:00"),
        "customer_id": json_values,
        "created_via": json_values,
        "customer_user_agent": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(
        ["order.created", "order.updated", "order.deleted", "coupon.created"]
    ),
    payload=json_values | order_fields,
)
def test_any_json_translates_or_raises_payload_error(topic: str, payload: Any) -> None:
    """Whatever JSON arrives, translation returns an outcome or raises PayloadError."""
    try:
        outcome = translate(topic, payload, conn(), NOW)
    except PayloadError:
        return
    for event in outcome.events:
        assert event.to_meta()["event_id"]
    assert len(delivery_key(payload)) <= 255


def test_absurdly_nested_bodies_are_a_payload_error() -> None:
    """A body nested past any order's depth gets PayloadError, not a RecursionError."""
    payload: Any = {"id": 1}
    for _ in range(5000):
        payload = {"a": payload}
    with pytest.raises(PayloadError):
        delivery_key(payload)


def test_a_wc_v1_webhook_order_is_dated_by_its_utc_date_created() -> None:
    """wc/v1 bodies have no *_gmt fields; their date_created is UTC, their date_paid is not."""
    (event,) = translate("order.updated", load("order-v1.json"), conn(), NOW).events
    assert "Purchase" == event.event_name
    assert "727" == event.event_id
    assert datetime(2017, 3, 22, 19, 28, 2, tzinfo=UTC) == event.event_time
    assert ["93", "23"] == [c.id for c in event.custom_data.contents]


def test_a_legacy_api_order_is_read_from_its_envelope() -> None:
    """A Legacy REST API v3 webhook wraps the order as {"order": {...}}; it still translates."""
    (event,) = translate(
        "order.updated", load("order-legacy-v3.json"), conn(), NOW
    ).events
    assert ("Purchase", "645") == (event.event_name, event.event_id)
    assert datetime(2015, 1, 26, 20, 0, 49, tzinfo=UTC) == event.event_time
    assert (Decimal("79.87"), "USD") == (
        event.custom_data.value,
        event.custom_data.currency,
    )
    assert [("546", 2), ("613", 1)] == [
        (c.id, c.quantity) for c in event.custom_data.contents
    ]
    meta = event.to_meta()["user_data"]
    assert [hash_value("john.doe@example.com")] == meta["em"]
    assert [hash_value("2")] == meta["external_id"]
    # The recorded customer_ip 127.0.0.1 is the store's own loopback: never sent.
    assert "client_ip_address" not in meta


def test_a_legacy_api_order_not_yet_paid_makes_no_purchase() -> None:
    """A pending legacy order without the paid flag is no Purchase."""
    body = load("order-legacy-v3.json")
    body["order"] |= {"status": "pending", "payment_details": {"paid": False}}
    assert [] == list(translate("order.created", body, conn(), NOW).events)


@pytest.mark.parametrize(
    ("setting", "ids"),
    [
        pytest.param({"content_id": "sku"}, ["93", "Bar3"], id="sku"),
        pytest.param({"content_id": "product"}, ["93", "22"], id="product"),
        pytest.param({"content_id": "variant"}, ["93", "23"], id="variant"),
        pytest.param({"content_id": "SKU"}, ["93", "Bar3"], id="any-case"),
        pytest.param(
            {"content_id": "sku", "content_id_format": "facebook_retailer_id"},
            ["93", "Bar3"],
            id="content-id-wins",
        ),
    ],
)
def test_content_id_is_the_same_setting_name_as_shopify(
    setting: dict[str, Any], ids: list[str]
) -> None:
    """`connections set ID content_id=sku` works for WooCommerce as it does for Shopify."""
    (event,) = translate(
        "order.updated", load("order-processing.json"), conn(**setting), NOW
    ).events
    assert ids == [c.id for c in event.custom_data.contents]
