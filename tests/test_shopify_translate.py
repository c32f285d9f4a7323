"""Shopify orders and checkouts become Meta events: the rules of adapters.shopify.translate."""

from __future__ import annotations

import copy
import hashlib
import json
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.shopify import adapter
from connector.errors import PayloadError
from connector.events import CanonicalEvent
from connector.platform import ConnectionInfo, Outcome
from tests.conftest import fixture_bytes

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SHOP = "jsmith.myshopify.com"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(fixture_bytes(f"shopify/{name}.json"))
    return payload


def conn(test_mode: bool = False, **settings: Any) -> ConnectionInfo:
    return ConnectionInfo(
        id="c1", platform="shopify", store=SHOP, settings=settings, test_mode=test_mode
    )


def handle(
    topic: str, payload: Any, connection: ConnectionInfo | None = None
) -> Outcome:
    return adapter.handle(topic, payload, connection or conn(), NOW)


def only_event(outcome: Outcome) -> CanonicalEvent:
    assert outcome.skipped is None, outcome.skipped
    assert 1 == len(outcome.events)
    return outcome.events[0]


# The storefront order's customer, normalized by hand from Meta's rules.
BOB = {
    "em": [sha("bob.norman@mail.example.com")],
    "ph": [
        sha("557734881234"),  # order phone, already international
        sha("16136120707"),  # customer phone
        sha("15024592181"),  # billing and shipping "+1(502)-459-2181"
        sha("15556251199"),  # default address "555-625-1199", US by the first country
    ],
    "fn": [sha("bob")],
    "ln": [sha("norman")],
    "ct": [sha("louisville")],
    "st": [sha("ky")],
    "zp": [sha("40202")],
    "country": [sha("us")],
    "external_id": [sha("207119551")],
}
LINES = [
    {"id": "39072856", "quantity": 1, "item_price": 199.0},
    {"id": "49148385", "quantity": 1, "item_price": 199.0},
    {"id": "457924702", "quantity": 1, "item_price": 199.0},
]


def test_a_storefront_order_makes_this_purchase() -> None:
    """The paid storefront order becomes exactly this Meta event."""
    event = only_event(handle("orders/paid", load("order_storefront")))
    assert {
        "event_name": "Purchase",
        "event_id": "5012345678901234567",
        # processed_at 2008-01-10T11:00:00-05:00
        "event_time": 1199980800,
        "action_source": "website",
        "event_source_url": (
            "https://jsmith.myshopify.com/548380009/orders/b1946ac92492d2347c6235b4d2611184"
        ),
        "user_data": {
            **BOB,
            "client_ip_address": "81.2.69.142",
            "client_user_agent": (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
            ),
            # fb.1.<created_at in ms>.<fbclid from landing_site, case kept>
            "fbc": "fb.1.1199980800000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
            "fbp": "fb.1.1596403881668.1116446470",
        },
        "custom_data": {
            "value": 598.94,
            "currency": "USD",
            "contents": LINES,
            "content_ids": ["39072856", "49148385", "457924702"],
            "content_type": "product",
            "num_items": 3,
            "order_id": "5012345678901234567",
        },
    } == event.to_meta()
    assert ("5012345678901234567", "207119551") == (event.order_ref, event.customer_ref)


def test_order_ids_past_two_to_the_53_stay_exact() -> None:
    """The 64-bit order id never passes through a float."""
    body = fixture_bytes("shopify/order_storefront.json")
    assert b'"id": 5012345678901234567' in body
    assert float(5012345678901234567) != 5012345678901234567
    event = only_event(handle("orders/paid", json.loads(body)))
    assert "5012345678901234567" == event.event_id == event.custom_data.order_id


@pytest.mark.parametrize(
    ("fixture", "topic", "connection", "skipped"),
    [
        # default: an unpaid order waits for orders/paid
        pytest.param(
            "order_pending",
            "orders/create",
            conn(),
            "not paid yet",
            id="pending-at-create",
        ),
        pytest.param(
            "order_pending", "orders/paid", conn(), None, id="pending-then-paid"
        ),
        pytest.param(
            "order_pending",
            "orders/create",
            conn(purchase_on="created"),
            None,
            id="count-on-create",
        ),
        pytest.param(
            "order", "orders/create", conn(), None, id="partially-refunded-was-paid"
        ),
        pytest.param(
            "order_storefront", "orders/create", conn(), None, id="paid-at-create"
        ),
        pytest.param(
            "order_test", "orders/paid", conn(), "test order", id="test-order"
        ),
        pytest.param(
            "order_test", "orders/paid", conn(test_mode=True), None, id="test-mode"
        ),
        pytest.param(
            "order_cancelled",
            "orders/create",
            conn(),
            "cancelled before it was paid",
            id="cancelled",
        ),
        pytest.param(
            "order_cancelled",
            "orders/create",
            conn(purchase_on="created"),
            "cancelled before it was paid",
            id="cancelled-count-on-create",
        ),
        pytest.param(
            "order_anonymous",
            "orders/paid",
            conn(),
            "no customer identifier",
            id="no-identifier",
        ),
        pytest.param("order_redacted", "orders/paid", conn(), None, id="redacted"),
    ],
)
def test_which_orders_make_a_purchase(
    fixture: str, topic: str, connection: ConnectionInfo, skipped: str | None
) -> None:
    """Paid orders count; test, cancelled, unpaid and anonymous ones say why they don't."""
    outcome = handle(topic, load(fixture), connection)
    if skipped is None:
        assert "Purchase" == only_event(outcome).event_name
    else:
        assert () == tuple(outcome.events)
        assert outcome.skipped is not None
        assert skipped in outcome.skipped
    assert str(load(fixture)["id"]) == outcome.order_ref


def test_redacted_orders_still_match_on_what_is_left() -> None:
    """Without protected customer data the customer id still identifies the shopper."""
    event = only_event(handle("orders/paid", load("order_redacted")))
    assert {"external_id": [sha("207119551")]} == event.to_meta()["user_data"]


@pytest.mark.parametrize(
    ("source_name", "landing_site", "expected"),
    [
        pytest.param("web", None, "website", id="online-store"),
        pytest.param("pos", None, "physical_store", id="pos"),
        pytest.param("shopify_draft_order", None, "other", id="draft-order"),
        pytest.param("iphone", None, "other", id="admin-app"),
        pytest.param("subscription_contract", None, "system_generated", id="renewal"),
        pytest.param("1520611", "/products/x", "website", id="channel-with-browser"),
        pytest.param("1520611", None, "website", id="channel-with-user-agent"),
    ],
)
def test_action_source_follows_the_documented_table(
    source_name: str, landing_site: str | None, expected: str
) -> None:
    """source_name decides action_source; website events carry a page URL."""
    order = load("order_pos")
    order["source_name"] = source_name
    order["landing_site"] = landing_site
    order["client_details"] = {"user_agent": "Mozilla/5.0 (iPhone)"}
    event = only_event(handle("orders/paid", order))
    assert expected == event.action_source
    assert (expected == "website") == (event.event_source_url is not None)


@pytest.mark.parametrize("source_name", ["web", "1520611"])
def test_a_web_order_without_a_user_agent_is_sent_as_other(source_name: str) -> None:
    """Meta refuses website events without client_user_agent: the event goes as other."""
    order = load("order_pos")
    order["source_name"] = source_name
    order["landing_site"] = "/products/x"
    order["client_details"] = {"user_agent": None}
    event = only_event(handle("orders/paid", order))
    assert "other" == event.action_source
    assert event.event_source_url is None


def test_website_event_without_a_status_url_points_at_the_storefront() -> None:
    """Lacking order_status_url, the shop's storefront is the page."""
    order = load("order_storefront")
    del order["order_status_url"]
    assert (
        f"https://{SHOP}/" == only_event(handle("orders/paid", order)).event_source_url
    )


@pytest.mark.parametrize(
    ("settings_", "ids"),
    [
        pytest.param({}, ["39072856", "49148385", "457924702"], id="variant-default"),
        pytest.param(
            {"content_id": "variant"},
            ["39072856", "49148385", "457924702"],
            id="variant",
        ),
        pytest.param({"content_id": "product"}, ["632910392"], id="product"),
        pytest.param(
            {"content_id": "sku"},
            ["IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK"],
            id="sku",
        ),
        pytest.param(
            {"content_id": "catalog", "catalog_country": "us"},
            [
                "shopify_US_632910392_39072856",
                "shopify_US_632910392_49148385",
                "shopify_US_632910392_457924702",
            ],
            id="catalog",
        ),
        pytest.param(
            {"content_id": "catalog"},
            ["39072856", "49148385", "457924702"],
            id="catalog-without-country-falls-back",
        ),
    ],
)
def test_content_id_format_is_a_setting(
    settings_: dict[str, str], ids: list[str]
) -> None:
    """Content ids match the merchant's catalog: variant, product, SKU or Shopify's format."""
    event = only_event(
        handle("orders/paid", load("order_storefront"), conn(**settings_))
    )
    assert ids == list(event.custom_data.content_ids)
    assert ids == [c.id for c in event.custom_data.contents]
    assert 3 == event.custom_data.num_items


def test_same_product_lines_merge_into_one_content() -> None:
    """Two variants of one product at one price are one content with their quantities."""
    event = only_event(
        handle("orders/paid", load("order_storefront"), conn(content_id="product"))
    )
    assert [{"id": "632910392", "quantity": 3, "item_price": 199.0}] == [
        c.to_meta() for c in event.custom_data.contents
    ]


def test_presentment_currency_is_used_throughout() -> None:
    """Value, currency and item prices are all in the currency the shopper paid."""
    custom = only_event(
        handle("orders/paid", load("order_presentment_eur"))
    ).custom_data
    assert (Decimal("551.02"), "EUR") == (custom.value, custom.currency)
    assert {Decimal("183.08")} == {c.item_price for c in custom.contents}


def test_without_presentment_amounts_the_shop_currency_is_used_throughout() -> None:
    """An order lacking presentment money stays in the shop currency, never a mix."""
    order = load("order_presentment_eur")
    del order["total_price_set"]["presentment_money"]
    custom = only_event(handle("orders/paid", order)).custom_data
    assert (Decimal("598.94"), "USD") == (custom.value, custom.currency)
    # the line's shop money agrees with the value's currency
    assert {Decimal("199.00")} == {c.item_price for c in custom.contents}


def test_an_fbc_attribute_is_passed_on_as_it_is() -> None:
    """An _fbc cookie saved on the cart wins over rebuilding one from landing_site."""
    order = load("order_storefront")
    order["note_attributes"].append(
        {
            "name": "_fbc",
            "value": "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
        }
    )
    user = only_event(handle("orders/paid", order)).user_data
    assert "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890" == user.fbc


@pytest.mark.parametrize(
    ("browser_ip", "expected"),
    [
        pytest.param("81.2.69.142", "81.2.69.142", id="public-v4"),
        pytest.param(
            "2a03:2880:f12c:83:face:b00c:0:25de",
            "2a03:2880:f12c:83:face:b00c:0:25de",
            id="public-v6",
        ),
        pytest.param("0.0.0.0", None, id="placeholder"),  # noqa: S104 - an address, not a bind
        pytest.param("10.1.2.3", None, id="private"),
        pytest.param("not an ip", None, id="garbage"),
    ],
)
def test_only_a_public_shopper_ip_is_sent(
    browser_ip: str, expected: str | None
) -> None:
    """The shopper's browser_ip counts only when it is a public address."""
    order = load("order_storefront")
    order["browser_ip"] = browser_ip
    order["client_details"]["browser_ip"] = browser_ip
    assert (
        expected == only_event(handle("orders/paid", order)).user_data.client_ip_address
    )


def test_decomposed_unicode_names_hash_like_composed_ones() -> None:
    """An NFD "Léon" matches the NFC one the shopper's other channels send."""
    composed, decomposed = load("order_storefront"), load("order_storefront")
    for order, form in ((composed, "NFC"), (decomposed, "NFD")):
        for key in ("billing_address", "shipping_address", "customer"):
            order[key]["first_name"] = unicodedata.normalize(form, "Léon")
    first = only_event(handle("orders/paid", composed)).user_data.fn
    second = only_event(handle("orders/paid", decomposed)).user_data.fn
    assert (sha("léon"),) == first == second


def test_each_address_phone_is_read_in_its_own_country() -> None:
    """Billed to Germany, shipped to New York, customer at home in France: three countries.

    "(212) 555-0123" would also pass as a German number and "06 12 34 56 78" as a US one:
    each must get the country code of the address it was written on.
    """
    order = load("order_storefront")
    order["phone"] = None
    order["customer"]["phone"] = None
    order["billing_address"].update(country_code="DE", phone="030 12345678")
    order["shipping_address"].update(country_code="US", phone="(212) 555-0123")
    order["customer"]["default_address"].update(
        country_code="FR", phone="06 12 34 56 78"
    )
    event = only_event(handle("orders/paid", order))
    assert [sha("493012345678"), sha("12125550123"), sha("33612345678")] == list(
        event.user_data.ph
    )


def test_an_order_time_ahead_of_ours_is_clamped_to_now() -> None:
    """Meta refuses future events: a clock ahead of ours reads as now."""
    order = load("order_storefront")
    order["processed_at"] = "2026-07-01T13:00:00+00:00"
    assert NOW == only_event(handle("orders/paid", order)).event_time


def test_a_checkout_makes_this_initiate_checkout() -> None:
    """The recorded checkout becomes exactly this Meta event, keyed by its token."""
    event = only_event(handle("checkouts/create", load("checkout")))
    assert {
        "event_name": "InitiateCheckout",
        "event_id": "2a1ace52255252df566af0faaedfbfa7",
        # created_at 2012-10-12T07:05:27-04:00
        "event_time": 1350039927,
        # the recorded checkout has no user agent: Meta would refuse it as a website event
        "action_source": "other",
        "user_data": {**BOB, "ph": BOB["ph"][1:]},  # a checkout has no order phone
        "custom_data": {
            "value": 379.69,
            "currency": "USD",
            "contents": [
                {"id": "49148385", "quantity": 1, "item_price": 199.0},
                {"id": "808950810", "quantity": 1, "item_price": 199.0},
            ],
            "content_ids": ["49148385", "808950810"],
            "content_type": "product",
            "num_items": 2,
        },
    } == event.to_meta()


@pytest.mark.parametrize(
    ("fixture", "topic", "skipped"),
    [
        pytest.param("checkout", "checkouts/create", None, id="create"),
        pytest.param("checkout", "checkouts/update", None, id="update-with-email"),
        pytest.param(
            "checkout_no_contact",
            "checkouts/update",
            "no email or phone",
            id="update-without",
        ),
    ],
)
def test_checkout_updates_count_once_they_have_an_email_or_phone(
    fixture: str, topic: str, skipped: str | None
) -> None:
    """checkouts/update makes the InitiateCheckout only when it can reach the shopper."""
    outcome = handle(topic, load(fixture))
    if skipped is None:
        assert "2a1ace52255252df566af0faaedfbfa7" == only_event(outcome).event_id
    else:
        assert outcome.skipped is not None
        assert skipped in outcome.skipped


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        pytest.param("orders/paid", [], "JSON object", id="order-array"),
        pytest.param("orders/paid", {"id": None}, "numeric id", id="order-no-id"),
        pytest.param("orders/paid", {"id": True}, "numeric id", id="order-bool-id"),
        pytest.param(
            "orders/paid", {"id": 2**64}, "numeric id", id="order-id-past-64-bits"
        ),
        pytest.param("orders/paid", {"id": 1.5}, "numeric id", id="order-float-id"),
        pytest.param(
            "orders/paid",
            {"id": 1, "financial_status": "paid"},
            "processed_at",
            id="order-no-time",
        ),
        pytest.param("checkouts/create", "x", "JSON object", id="checkout-string"),
        pytest.param(
            "checkouts/create", {"token": ""}, "token", id="checkout-no-token"
        ),
        pytest.param("customers/redact", [1], "JSON object", id="redact-array"),
    ],
)
def test_payloads_that_are_not_the_resource_are_refused(
    topic: str, payload: Any, reason: str
) -> None:
    """A body that is not an order, checkout or compliance request is a PayloadError."""
    with pytest.raises(PayloadError, match=reason):
        handle(topic, payload)


def test_unknown_topics_are_acknowledged_and_ignored() -> None:
    """A topic the connector does not use is skipped, with the topic in the reason."""
    outcome = handle("products/update", {"id": 1})
    assert (None, (), "unhandled topic products/update") == (
        outcome.action,
        tuple(outcome.events),
        outcome.skipped,
    )


# -- fuzzing ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
ORDER = load("order_storefront")
CHECKOUT = load("checkout")


def mutate(resource: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """The real payload with a few fields, at any depth, replaced by arbitrary JSON."""
    rv = copy.deepcopy(resource)
    for _ in range(data.draw(st.integers(1, 6))):
        node: Any = rv
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and data.draw(st.booleans()):
                node = child
                continue
            node[key] = data.draw(json_values)
            break
    return rv


def assert_translates_or_refuses(topic: str, payload: Any) -> None:
    try:
        outcome = handle(topic, payload, conn(test_mode=True))
    except PayloadError:
        return
    for event in outcome.events:
        # what is stored must be strict JSON (no NaN) and survive a round trip
        json.dumps(event.to_meta(), allow_nan=False).encode("utf-8")
        assert event == CanonicalEvent.from_json(
            json.loads(json.dumps(event.to_json()))
        )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(["orders/create", "orders/paid"]),
    data=st.data(),
)
def test_mutated_orders_translate_or_are_refused(
    topic: str, data: st.DataObject
) -> None:
    """Whatever a field holds, an order translates cleanly or raises PayloadError."""
    assert_translates_or_refuses(topic, mutate(ORDER, data))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(["checkouts/create", "checkouts/update"]), data=st.data())
def test_mutated_checkouts_translate_or_are_refused(
    topic: str, data: st.DataObject
) -> None:
    """Whatever a field holds, a checkout translates cleanly or raises PayloadError."""
    assert_translates_or_refuses(topic, mutate(CHECKOUT, data))


@given(
    topic=st.sampled_from(
        [
            "orders/paid",
            "checkouts/create",
            "customers/redact",
            "customers/data_request",
            "shop/redact",
            "app/uninstalled",
        ]
    ),
    payload=json_values,
)
def test_arbitrary_json_translates_or_is_refused(topic: str, payload: Any) -> None:
    """Arbitrary JSON on any handled topic never raises anything but PayloadError."""
    assert_translates_or_refuses(topic, payload)
