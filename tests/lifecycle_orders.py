"""Orders at points of their lifecycle (renewals, sub-orders, edits), built from recorded ones.

Every builder starts from a recorded payload in tests/fixtures and changes only the fields
the lifecycle is about, so the rest of the order stays real. People and stores are made up.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from tests.conftest import fixture_bytes

#: (line id, product id, variant id, quantity, current quantity, unit price)
ShopifyLine = tuple[int, int, int, int, int, str]
#: (product id, variation id, quantity, unit price)
WooLine = tuple[int, int, int, str]


def _money(amount: str, currency: str = "USD") -> dict[str, Any]:
    return {
        "shop_money": {"amount": amount, "currency_code": currency},
        "presentment_money": {"amount": amount, "currency_code": currency},
    }


def shopify_order(
    order_id: int,
    *,
    lines: Sequence[ShopifyLine],
    total: str,
    current_total: str | None = None,
    source_name: str = "web",
    financial_status: str = "paid",
    browser: bool = True,
    cancelled_at: str | None = None,
) -> dict[str, Any]:
    """The recorded storefront order as order ``order_id``, without its refunds."""
    base = json.loads(fixture_bytes("shopify/order_storefront.json"))
    template = base["line_items"][0]
    order: dict[str, Any] = copy.deepcopy(base)
    order.update(
        id=order_id,
        name=f"#{order_id}",
        refunds=[],
        source_name=source_name,
        financial_status=financial_status,
        cancelled_at=cancelled_at,
        total_price=total,
        total_price_set=_money(total),
        current_total_price=current_total or total,
        current_total_price_set=_money(current_total or total),
    )
    if not browser:
        order.update(
            landing_site=None,
            referring_site=None,
            browser_ip=None,
            client_details={"user_agent": None, "browser_ip": None},
        )
    order["line_items"] = [
        {
            **copy.deepcopy(template),
            "id": line_id,
            "product_id": product,
            "variant_id": variant,
            "quantity": count,
            "current_quantity": current,
            "price": price,
            "price_set": _money(price),
        }
        for line_id, product, variant, count, current, price in lines
    ]
    return order


def woo_order(
    order_id: int,
    *,
    lines: Sequence[WooLine],
    total: str,
    created_via: str = "checkout",
    status: str = "processing",
    parent_id: int = 0,
    meta: dict[str, Any] | None = None,
    paid: bool = True,
) -> dict[str, Any]:
    """The recorded processing order (wc/v3) as order ``order_id``."""
    order: dict[str, Any] = json.loads(
        fixture_bytes("woocommerce/order-processing.json")
    )
    template = order["line_items"][0]
    order.update(
        id=order_id,
        number=str(order_id),
        parent_id=parent_id,
        created_via=created_via,
        status=status,
        total=total,
        meta_data=[
            {"id": 20000 + n, "key": key, "value": value}
            for n, (key, value) in enumerate((meta or {}).items())
        ],
    )
    if not paid:
        order.update(date_paid=None, date_paid_gmt=None)
    order["line_items"] = [
        {
            **copy.deepcopy(template),
            "id": 900 + n,
            "product_id": product,
            "variation_id": variation,
            "quantity": count,
            "price": float(price),
            "subtotal": f"{float(price) * count:.2f}",
            "total": f"{float(price) * count:.2f}",
        }
        for n, (product, variation, count, price) in enumerate(lines)
    ]
    return order
