"""Order lifecycles as Meta should see them: renewals, sub-orders, edits, channels, refunds.

Each table row is one input of the lifecycle rules the README's translation section states.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from adapters.shopify import translate as shopify_translate
from adapters.shopify.adapter import ShopifyAdapter
from adapters.woocommerce.adapter import WooCommerceAdapter
from connector.events import CanonicalEvent
from connector.platform import ConnectionInfo, Outcome
from tests.lifecycle_orders import shopify_order, woo_order

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
WOO_NOW = datetime(2017, 3, 25, 12, 0, tzinfo=UTC)


def shopify(topic: str, order: Any, **settings: Any) -> Outcome:
    info = ConnectionInfo(
        id="c1", platform="shopify", store="jsmith.myshopify.com", settings=settings
    )
    return ShopifyAdapter().handle(topic, order, info, NOW)


def woo(order: Any, topic: str = "order.updated", **settings: Any) -> Outcome:
    info = ConnectionInfo(
        id="c2", platform="woocommerce", store="https://example.com", settings=settings
    )
    return WooCommerceAdapter().handle(topic, order, info, WOO_NOW)


def purchase(outcome: Outcome) -> CanonicalEvent:
    assert outcome.skipped is None, outcome.skipped
    (event,) = outcome.events
    assert "Purchase" == event.event_name
    return event


def contents(event: CanonicalEvent) -> list[dict[str, Any]]:
    rv: list[dict[str, Any]] = event.to_meta()["custom_data"]["contents"]
    return rv


# -- 1. renewals that inherit an event id ------------------------------------------------

INHERITED = {"_meta_event_id": "wc-pixel-5001-ab12"}


@pytest.mark.parametrize(
    ("order", "event_id"),
    [
        pytest.param(
            woo_order(5001, lines=[(93, 0, 1, "20")], total="20", meta=INHERITED),
            "wc-pixel-5001-ab12",
            id="parent-checkout-keeps-the-pixel-id",
        ),
        pytest.param(
            woo_order(
                5102,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="subscription",
                meta=INHERITED,
            ),
            "5102",
            id="renewal-gets-its-own-id",
        ),
        pytest.param(
            woo_order(
                5103,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="subscription",
                meta=INHERITED,
            ),
            "5103",
            id="every-later-renewal-too",
        ),
        pytest.param(
            woo_order(
                5104,
                lines=[(93, 0, 1, "20")],
                total="20",
                meta={**INHERITED, "_subscription_renewal": "5000"},
            ),
            "5104",
            id="renewal-paid-through-the-checkout",
        ),
        pytest.param(
            woo_order(
                5105,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="admin",
                meta=INHERITED,
            ),
            "5105",
            id="staff-order-with-copied-meta",
        ),
        pytest.param(
            woo_order(
                5106,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="rest-api",
                meta=INHERITED,
            ),
            "5106",
            id="rest-api-order-with-copied-meta",
        ),
        pytest.param(
            woo_order(
                5107,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="store-api",
                meta={"_meta_event_id": "wc-pixel-5107-cd34"},
            ),
            "wc-pixel-5107-cd34",
            id="block-checkout-keeps-the-pixel-id",
        ),
    ],
)
def test_an_event_id_from_order_meta_is_used_only_where_a_browser_saw_it(
    order: dict[str, Any], event_id: str
) -> None:
    """A copied _meta_event_id never merges two orders: each order is its own conversion."""
    event = purchase(woo(order))
    assert event_id == event.event_id
    assert str(order["id"]) == event.order_ref


def test_a_parent_and_its_renewals_are_three_purchases() -> None:
    orders = [
        woo_order(5001, lines=[(93, 0, 1, "20")], total="20", meta=INHERITED),
        *(
            woo_order(
                n,
                lines=[(93, 0, 1, "20")],
                total="20",
                created_via="subscription",
                meta=INHERITED,
            )
            for n in (5102, 5203)
        ),
    ]
    ids = [purchase(woo(order)).event_id for order in orders]
    assert ["wc-pixel-5001-ab12", "5102", "5203"] == ids


# -- 2. multi-vendor sub-orders ------------------------------------------------------------


def test_a_dokan_checkout_is_one_purchase_of_the_parent_total() -> None:
    parent = woo_order(
        7000, lines=[(301, 0, 1, "45.00"), (302, 0, 1, "50.00")], total="95.00"
    )
    subs = [
        woo_order(
            7001,
            lines=[(301, 0, 1, "45.00")],
            total="45.00",
            created_via="dokan",
            parent_id=7000,
        ),
        woo_order(
            7002,
            lines=[(302, 0, 1, "50.00")],
            total="50.00",
            created_via="dokan",
            parent_id=7000,
        ),
    ]
    event = purchase(woo(parent))
    assert Decimal("95.00") == event.custom_data.value
    for sub in subs:
        outcome = woo(sub)
        assert () == tuple(outcome.events)
        assert outcome.skipped is not None
        assert "sub-order of order 7000" in outcome.skipped
        assert str(sub["id"]) == outcome.order_ref


# -- 3. Shopify source names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_name", "browser", "expected"),
    [
        pytest.param("web", True, "website", id="online-store"),
        pytest.param("pos", False, "physical_store", id="pos"),
        pytest.param("shopify_draft_order", False, "other", id="draft-order"),
        pytest.param("iphone", False, "other", id="ios-admin"),
        pytest.param("android", False, "other", id="android-admin"),
        pytest.param("subscription_contract", False, "system_generated", id="renewal"),
        pytest.param(
            "subscription_contract_checkout_one",
            False,
            "system_generated",
            id="renewal-checkout-one",
        ),
        pytest.param(
            "SUBSCRIPTION_CONTRACT_CHECKOUT_ONE",
            False,
            "system_generated",
            id="renewal-any-case",
        ),
        pytest.param(
            "subscription_contract_something_new",
            False,
            "system_generated",
            id="renewal-family",
        ),
        pytest.param(
            "recharge_subscription", False, "system_generated", id="app-renewal"
        ),
        pytest.param("1520611", True, "website", id="channel-app-with-browser"),
        pytest.param("1520611", False, "other", id="channel-app-without-browser"),
        pytest.param("some_new_source", False, "other", id="unknown-without-browser"),
        pytest.param("some_new_source", True, "website", id="unknown-with-browser"),
    ],
)
def test_source_names_are_matched_by_family_and_by_what_the_order_shows(
    source_name: str, browser: bool, expected: str
) -> None:
    order = shopify_order(
        8001,
        lines=[(1, 11, 111, 1, 1, "30.00")],
        total="30.00",
        source_name=source_name,
        browser=browser,
    )
    order["client_details"] = {
        "user_agent": "Mozilla/5.0 (iPhone)" if browser else None
    }
    assert expected == purchase(shopify("orders/paid", order)).action_source


def test_an_unknown_source_name_is_logged_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "brand_new_channel_7f3a"
    order = shopify_order(
        8002, lines=[(1, 11, 111, 1, 1, "30.00")], total="30.00", source_name=name
    )
    with caplog.at_level(logging.WARNING, logger=shopify_translate.__name__):
        for _ in range(3):
            purchase(shopify("orders/paid", order))
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert 1 == len(lines)


# -- 4. orders edited before payment -------------------------------------------------------


def test_a_cod_order_edited_before_payment_counts_what_is_paid() -> None:
    """Mug 60 + tee 40; staff remove the tee, then mark the order paid."""
    order = shopify_order(
        8100,
        lines=[(1, 11, 111, 1, 1, "60.00"), (2, 22, 222, 1, 0, "40.00")],
        total="100.00",
        current_total="60.00",
        financial_status="paid",
    )
    order["payment_gateway_names"] = ["Cash on Delivery (COD)"]
    event = purchase(shopify("orders/paid", order))
    assert Decimal("60.00") == event.custom_data.value
    assert [{"id": "111", "quantity": 1, "item_price": 60.0}] == contents(event)
    assert 1 == event.custom_data.num_items
    assert ("111",) == event.custom_data.content_ids


def test_a_shopify_refund_after_payment_does_not_lower_the_purchase() -> None:
    order = shopify_order(
        8101,
        lines=[(1, 11, 111, 2, 1, "60.00")],
        total="120.00",
        current_total="60.00",
        financial_status="partially_refunded",
    )
    order["refunds"] = [
        {"id": 5, "refund_line_items": [{"line_item_id": 1, "quantity": 1}]}
    ]
    event = purchase(shopify("orders/paid", order))
    assert Decimal("120.00") == event.custom_data.value
    assert [{"id": "111", "quantity": 2, "item_price": 60.0}] == contents(event)


def test_a_shopify_order_cancelled_after_payment_counts_what_was_paid() -> None:
    """Cancelling removes every line (current_quantity 0, current total 0): read as created."""
    order = shopify_order(
        8102,
        lines=[(1, 11, 111, 2, 0, "60.00")],
        total="120.00",
        current_total="0.00",
        financial_status="paid",
        cancelled_at="2026-07-01T10:00:00Z",
    )
    event = purchase(shopify("orders/paid", order))
    assert Decimal("120.00") == event.custom_data.value
    assert [{"id": "111", "quantity": 2, "item_price": 60.0}] == contents(event)


def test_a_woocommerce_order_edited_before_payment_counts_what_is_paid() -> None:
    """WooCommerce rewrites the lines and total of an edited order: they are read as they are."""
    order = woo_order(8200, lines=[(11, 0, 1, "60.00")], total="60.00")
    event = purchase(woo(order))
    assert Decimal("60.00") == event.custom_data.value
    assert [{"id": "11", "quantity": 1, "item_price": 60.0}] == contents(event)
    assert 1 == event.custom_data.num_items


# -- 6. content_type follows the id style --------------------------------------------------


@pytest.mark.parametrize(
    ("content_id", "content_type"),
    [
        ("variant", "product"),
        ("product", "product_group"),
        ("sku", "product"),
    ],
)
def test_shopify_content_type_follows_the_id_style(
    content_id: str, content_type: str
) -> None:
    order = shopify_order(8300, lines=[(1, 11, 111, 1, 1, "30.00")], total="30.00")
    event = purchase(shopify("orders/paid", order, content_id=content_id))
    assert content_type == event.to_meta()["custom_data"]["content_type"]


@pytest.mark.parametrize(
    ("content_id", "content_type", "expected"),
    [
        pytest.param(
            "id",
            "product",
            [
                {"id": "501", "quantity": 1, "item_price": 25.0},
                {"id": "502", "quantity": 2, "item_price": 25.0},
            ],
            id="variations",
        ),
        pytest.param(
            "product",
            "product_group",
            [{"id": "500", "quantity": 3, "item_price": 25.0}],
            id="parents-merged",
        ),
    ],
)
def test_woocommerce_content_type_follows_the_id_style_and_parents_merge(
    content_id: str, content_type: str, expected: list[dict[str, Any]]
) -> None:
    order = woo_order(
        8400, lines=[(500, 501, 1, "25"), (500, 502, 2, "25")], total="75"
    )
    event = purchase(woo(order, content_id=content_id))
    custom = event.to_meta()["custom_data"]
    assert content_type == custom["content_type"]
    assert expected == custom["contents"]
    assert 3 == custom["num_items"]


# -- 7. orders Meta already knows ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source_name", "settings", "sent"),
    [
        pytest.param("2329312", {}, False, id="meta-channel-excluded-by-default"),
        pytest.param("2329312", {"excluded_channels": []}, True, id="none-excluded"),
        pytest.param("web", {}, True, id="online-store"),
        pytest.param(
            "580111", {"excluded_channels": ["580111"]}, False, id="merchant-list"
        ),
        pytest.param(
            "2329312",
            {"excluded_channels": ["580111"]},
            True,
            id="list-replaces-default",
        ),
    ],
)
def test_orders_from_excluded_channels_are_not_sent(
    source_name: str, settings: dict[str, Any], sent: bool
) -> None:
    order = shopify_order(
        8500,
        lines=[(1, 11, 111, 1, 1, "30.00")],
        total="30.00",
        source_name=source_name,
    )
    outcome = shopify("orders/paid", order, **settings)
    assert sent == bool(outcome.events)
    if not sent:
        assert outcome.skipped is not None
        assert "excluded_channels" in outcome.skipped


# -- 8. refunded or cancelled right after payment -------------------------------------------


@pytest.mark.parametrize(
    ("financial_status", "cancelled_at", "topic", "setting", "sent"),
    [
        pytest.param("refunded", None, "orders/paid", None, True, id="refunded-counts"),
        pytest.param(
            "refunded",
            None,
            "orders/create",
            None,
            True,
            id="refunded-first-seen-at-create",
        ),
        pytest.param(
            "paid",
            "2026-07-01T10:00:00Z",
            "orders/paid",
            None,
            True,
            id="cancelled-counts",
        ),
        pytest.param(
            "refunded", None, "orders/paid", "skip", False, id="refunded-skip"
        ),
        pytest.param(
            "voided",
            "2026-07-01T10:00:00Z",
            "orders/paid",
            "skip",
            False,
            id="voided-skip",
        ),
        pytest.param(
            "paid",
            "2026-07-01T10:00:00Z",
            "orders/paid",
            "skip",
            False,
            id="cancelled-skip",
        ),
        pytest.param(
            "partially_refunded",
            None,
            "orders/paid",
            "skip",
            True,
            id="partial-still-counts",
        ),
        pytest.param("paid", None, "orders/paid", "skip", True, id="paid-skip-setting"),
        pytest.param(
            "pending",
            "2026-07-01T10:00:00Z",
            "orders/create",
            None,
            False,
            id="cancelled-before-payment",
        ),
    ],
)
def test_shopify_refund_rule(
    financial_status: str,
    cancelled_at: str | None,
    topic: str,
    setting: str | None,
    sent: bool,
) -> None:
    order = shopify_order(
        8600,
        lines=[(1, 11, 111, 1, 1, "30.00")],
        total="30.00",
        financial_status=financial_status,
        cancelled_at=cancelled_at,
    )
    settings = {} if setting is None else {"refunded_orders": setting}
    assert sent == bool(shopify(topic, order, **settings).events)


@pytest.mark.parametrize(
    ("status", "paid", "setting", "sent"),
    [
        pytest.param("refunded", True, None, True, id="refunded-counts"),
        pytest.param(
            "cancelled", True, None, True, id="cancelled-after-payment-counts"
        ),
        pytest.param("cancelled", False, None, False, id="cancelled-unpaid"),
        pytest.param("refunded", True, "skip", False, id="refunded-skip"),
        pytest.param("cancelled", True, "skip", False, id="cancelled-skip"),
        pytest.param("completed", True, "skip", True, id="completed-skip-setting"),
        pytest.param("refunded", True, "count", True, id="refunded-count"),
    ],
)
def test_woocommerce_refund_rule(
    status: str, paid: bool, setting: str | None, sent: bool
) -> None:
    order = woo_order(
        8700, lines=[(11, 0, 1, "30")], total="30", status=status, paid=paid
    )
    settings = {} if setting is None else {"refunded_orders": setting}
    assert sent == bool(woo(order, **settings).events)


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "settings", "problem"),
    [
        (ShopifyAdapter(), {"refunded_orders": "maybe"}, "refunded_orders"),
        (ShopifyAdapter(), {"excluded_channels": "2329312"}, "excluded_channels"),
        (ShopifyAdapter(), {"excluded_channels": [7]}, "excluded_channels"),
        (WooCommerceAdapter(), {"refunded_orders": True}, "refunded_orders"),
    ],
)
def test_wrong_lifecycle_settings_are_reported(
    adapter: Any, settings: dict[str, Any], problem: str
) -> None:
    problems = adapter.settings_problems(settings)
    assert 1 == len(problems)
    assert problem in problems[0]


@pytest.mark.parametrize(
    ("adapter", "settings"),
    [
        (ShopifyAdapter(), {"refunded_orders": "skip", "excluded_channels": []}),
        (ShopifyAdapter(), {"excluded_channels": ["2329312", "580111"]}),
        (WooCommerceAdapter(), {"refunded_orders": "count"}),
    ],
)
def test_right_lifecycle_settings_are_accepted(
    adapter: Any, settings: dict[str, Any]
) -> None:
    assert [] == adapter.settings_problems(settings)
