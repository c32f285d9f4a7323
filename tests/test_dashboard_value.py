"""The value_basis setting: Purchase value with or without tax and shipping, on both platforms."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from adapters.shopify import adapter as shopify
from adapters.woocommerce.translate import settings_problems as woo_problems
from adapters.woocommerce.translate import translate as woo_translate
from connector.platform import ConnectionInfo
from tests.conftest import fixture_bytes

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
WOO_NOW = datetime(2017, 3, 25, 12, 0, tzinfo=UTC)


def shopify_order(*, taxes_included: bool) -> dict[str, Any]:
    """The recorded order (598.94 paid, 11.94 tax) with 10.00 shipping carrying 0.80 tax."""
    order: dict[str, Any] = json.loads(fixture_bytes("shopify/order.json"))
    money = {"amount": "10.00", "currency_code": "USD"}
    tax = {"amount": "0.80", "currency_code": "USD"}
    order["taxes_included"] = taxes_included
    order["shipping_lines"][0].update(
        price="10.00",
        price_set={"shop_money": money, "presentment_money": money},
        tax_lines=[
            {
                "price": "0.80",
                "price_set": {"shop_money": tax, "presentment_money": tax},
            }
        ],
    )
    return order


def shopify_value(order: dict[str, Any], **settings: Any) -> Decimal | None:
    info = ConnectionInfo(
        id="c1", platform="shopify", store="jsmith.myshopify.com", settings=settings
    )
    outcome = shopify.handle("orders/paid", order, info, NOW)
    [event] = outcome.events
    return event.custom_data.value


@pytest.mark.parametrize(
    ("taxes_included", "basis", "expected"),
    [
        pytest.param(False, None, "598.94", id="default-total"),
        pytest.param(False, "total", "598.94", id="total"),
        pytest.param(False, "excl_tax", "587.00", id="excl-tax"),
        # tax-exclusive prices: shipping 10.00 plus its 0.80 tax leave the total
        pytest.param(False, "excl_shipping", "588.14", id="excl-shipping"),
        # total_tax (11.94) already holds the shipping tax: take the 10.00 once
        pytest.param(False, "excl_tax_and_shipping", "577.00", id="net"),
        # tax-inclusive prices: the 10.00 shipping holds its 0.80 tax
        pytest.param(True, "excl_shipping", "588.94", id="incl-excl-shipping"),
        pytest.param(True, "excl_tax_and_shipping", "577.80", id="incl-net"),
    ],
)
def test_shopify_value_basis(
    taxes_included: bool, basis: str | None, expected: str
) -> None:
    """Shopify's value follows the setting, counting tax on shipping exactly once."""
    settings = {} if basis is None else {"value_basis": basis}
    order = shopify_order(taxes_included=taxes_included)
    assert Decimal(expected) == shopify_value(order, **settings)


@pytest.mark.parametrize(
    ("basis", "expected"),
    [
        pytest.param("total", "39.35", id="total"),
        pytest.param("excl_tax", "36.05", id="excl-tax"),
        # shipping_total 10.00 without tax, plus its 1.50 shipping_tax
        pytest.param("excl_shipping", "27.85", id="excl-shipping"),
        # total_tax (3.30) counts the shipping tax: shipping_total comes off alone
        pytest.param("excl_tax_and_shipping", "26.05", id="net"),
    ],
)
def test_woocommerce_value_basis(basis: str, expected: str) -> None:
    """WooCommerce's value follows the setting; shipping_tax sits inside total_tax."""
    order = json.loads(fixture_bytes("woocommerce/order-processing.json"))
    order.update(
        total="39.35", total_tax="3.30", shipping_total="10.00", shipping_tax="1.50"
    )
    info = ConnectionInfo(
        id="c1",
        platform="woocommerce",
        store="https://example.com",
        settings={"value_basis": basis},
    )
    outcome = woo_translate("order.updated", order, info, WOO_NOW)
    purchases = [e for e in outcome.events if e.event_name == "Purchase"]
    assert [Decimal(expected)] == [e.custom_data.value for e in purchases]


@pytest.mark.parametrize(
    "problems",
    [
        pytest.param(shopify.settings_problems, id="shopify"),
        pytest.param(woo_problems, id="woocommerce"),
    ],
)
def test_an_unknown_value_basis_is_a_settings_problem(problems: Any) -> None:
    """Both platforms refuse a value_basis they do not know, and accept the four they do."""
    assert any("value_basis" in p for p in problems({"value_basis": "gross"}))
    for basis in ("total", "excl_tax", "excl_shipping", "excl_tax_and_shipping"):
        assert [] == problems({"value_basis": basis})
