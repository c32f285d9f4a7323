"""Shopify's part of the order sweep: orders from the GraphQL Admin API, shaped as webhooks.

The sweep reads ``orders(query: "updated_at:>=... AND updated_at:<=...")`` page by page
(:func:`adapters.shopify.admin_api.iter_orders`, which keeps within the cost-based
throttle) and hands each order to the same translation as the ``orders/*`` webhooks. The
GraphQL ``Order`` object (https://shopify.dev/docs/api/admin-graphql/latest/objects/Order)
names its fields differently from the REST webhook body; :func:`rest_shape` maps the
fields translation reads:

| GraphQL                                   | webhook body                          |
|-------------------------------------------|---------------------------------------|
| ``legacyResourceId``                      | ``id``                                |
| ``displayFinancialStatus`` (``PAID``)     | ``financial_status`` (``paid``)       |
| ``processedAt``, ``createdAt``, ...       | ``processed_at``, ``created_at``, ... |
| ``totalPriceSet.shopMoney``               | ``total_price_set.shop_money``        |
| ``clientIp``                              | ``browser_ip``                        |
| ``statusPageUrl``                         | ``order_status_url``                  |
| ``customAttributes {key value}``          | ``note_attributes [{name value}]``    |
| ``customerJourneySummary.lastVisit``      | ``landing_site``                      |
| ``countryCodeV2``                         | ``country_code``                      |
| ``transactions {kind status processedAt}``| ``transactions`` (the paid time)      |

The GraphQL order carries no browser user agent, so a swept web order is sent with
``action_source`` ``other`` (Meta refuses a ``website`` event without one); the webhook,
when it arrived, has already sent it as a website event.

A paid order is handed over as ``orders/paid``, an unpaid one as ``orders/create``, so the
``purchase_on`` setting applies as it does to webhooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from adapters.shopify import install, topics
from adapters.shopify.admin_api import WEBHOOK_TOPICS, ShopifyAdmin, iter_orders
from adapters.shopify.translate import PAID_STATUSES
from connector import jobs
from connector.errors import PlatformError
from connector.outbound import shopify_policy
from connector.runtime import Runtime
from connector.store import queries
from connector.sweep import FoundOrder, Repair

log = logging.getLogger(__name__)


def _gid_number(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("legacyResourceId")
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _money(bag: Any) -> dict[str, Any] | None:
    if not isinstance(bag, Mapping):
        return None
    return {"amount": bag.get("amount"), "currency_code": bag.get("currencyCode")}


def _price_set(value: Any) -> dict[str, Any]:
    bag = value if isinstance(value, Mapping) else {}
    return {
        "shop_money": _money(bag.get("shopMoney")),
        "presentment_money": _money(bag.get("presentmentMoney")),
    }


def _address(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    return {
        "first_name": value.get("firstName"),
        "last_name": value.get("lastName"),
        "city": value.get("city"),
        "province_code": value.get("provinceCode"),
        "zip": value.get("zip"),
        "country_code": value.get("countryCodeV2"),
        "phone": value.get("phone"),
    }


def rest_shape(node: Mapping[str, Any]) -> dict[str, Any]:
    """A GraphQL ``Order`` node as the REST webhook body translation reads (pure)."""
    customer = (
        node.get("customer") if isinstance(node.get("customer"), Mapping) else None
    )
    total = _price_set(node.get("totalPriceSet"))
    lines = []
    for line in (node.get("lineItems") or {}).get("nodes") or []:
        if not isinstance(line, Mapping):
            continue
        prices = _price_set(line.get("originalUnitPriceSet"))
        lines.append(
            {
                "quantity": line.get("quantity"),
                "sku": line.get("sku"),
                "variant_id": _gid_number(line.get("variant")),
                "product_id": _gid_number(line.get("product")),
                "price": (prices["shop_money"] or {}).get("amount"),
                "price_set": prices,
            }
        )
    journey = node.get("customerJourneySummary") or {}
    last_visit = journey.get("lastVisit") if isinstance(journey, Mapping) else None
    status = node.get("displayFinancialStatus")
    return {
        "id": _gid_number(node.get("legacyResourceId")),
        "test": node.get("test") is True,
        "financial_status": status.lower() if isinstance(status, str) else None,
        "cancelled_at": node.get("cancelledAt"),
        "processed_at": node.get("processedAt"),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "currency": node.get("currencyCode"),
        "presentment_currency": node.get("presentmentCurrencyCode"),
        "total_price": (total["shop_money"] or {}).get("amount"),
        "total_price_set": total,
        "email": node.get("email"),
        "phone": node.get("phone"),
        "source_name": node.get("sourceName"),
        "browser_ip": node.get("clientIp"),
        "order_status_url": node.get("statusPageUrl"),
        "landing_site": (
            last_visit.get("landingPage") if isinstance(last_visit, Mapping) else None
        ),
        "note_attributes": [
            {"name": a.get("key"), "value": a.get("value")}
            for a in node.get("customAttributes") or []
            if isinstance(a, Mapping)
        ],
        "customer": (
            {
                "id": _gid_number(customer.get("legacyResourceId")),
                "email": customer.get("email"),
                "phone": customer.get("phone"),
                "first_name": customer.get("firstName"),
                "last_name": customer.get("lastName"),
            }
            if customer
            else None
        ),
        "billing_address": _address(node.get("billingAddress")),
        "shipping_address": _address(node.get("shippingAddress")),
        "line_items": lines,
        "transactions": [
            {
                "kind": str(t.get("kind") or "").lower(),
                "status": str(t.get("status") or "").lower(),
                "processed_at": t.get("processedAt"),
            }
            for t in node.get("transactions") or []
            if isinstance(t, Mapping)
        ],
    }


def _admin(runtime: Runtime) -> ShopifyAdmin:
    # A shop connected by hand (a custom app's token) is swept without the app's credentials;
    # the deployment's address policy still decides where its admin may be reached.
    settings = runtime.settings
    return ShopifyAdmin(
        api_key=settings.shopify_api_key or "",
        api_secret=settings.shopify_api_secret or "",
        url_template=settings.shopify_admin_url_template,
        timeout=settings.http_timeout,
        policy=shopify_policy(settings),
        resolver=settings.store_resolver,
    )


def _token(
    runtime: Runtime, admin: ShopifyAdmin, connection_id: str
) -> tuple[str, str, bool]:
    """(shop, access token, installed through the app)."""
    with runtime.sessions() as s:
        conn = queries.get_connection(s, connection_id)
        shop, token = conn.store, conn.platform_token
        via_app = bool((conn.settings or {}).get(install.SETTINGS_APP))
    if via_app:
        token = install.fresh_access_token(
            runtime, connection_id, now=datetime.now(UTC), admin=admin
        )
    if not token:
        raise PlatformError(f"connection {connection_id} holds no Shopify access token")
    return shop, token, via_app


def sweep_orders(
    runtime: Runtime, connection_id: str, since: datetime, until: datetime
) -> Iterator[FoundOrder]:
    """The shop's orders updated in ``[since, until]``, as ``orders/paid``/``orders/create`` bodies.

    Raises:
        PlatformError: the shop cannot be read.
    """
    with _admin(runtime) as admin:
        shop, token, _ = _token(runtime, admin, connection_id)
        for node in iter_orders(
            admin, shop, token, since, until, sleep=jobs.wait_or_stop
        ):
            order = rest_shape(node)
            if order["id"] is None:
                continue
            paid = (order["financial_status"] or "") in PAID_STATUSES
            yield FoundOrder(
                ref=str(order["id"]),
                topic=topics.ORDERS_PAID if paid else topics.ORDERS_CREATE,
                payload=order,
            )


def repair_webhooks(runtime: Runtime, connection_id: str) -> list[Repair]:
    """Re-create the app's subscriptions Shopify removed (shops installed through the app).

    Shopify removes a subscription whose deliveries keep failing
    (https://shopify.dev/docs/apps/build/webhooks/troubleshooting-webhooks).

    Raises:
        PlatformError: the shop cannot be read.
    """
    with _admin(runtime) as admin:
        shop, token, via_app = _token(runtime, admin, connection_id)
        if not via_app:
            return []  # a custom app added by hand: its owner manages its webhooks
        uri = f"{runtime.settings.app_url}{install.WEBHOOK_PATH}"
        present = {
            s.topic for s in admin.list_subscriptions(shop, token) if s.uri == uri
        }
        missing = [t for t in WEBHOOK_TOPICS if t not in present]
        if not missing:
            return []
        ids = install.register_webhooks(runtime, admin, connection_id, token)
    if ids is None:
        return [
            Repair(
                topic=t, action="failed", detail="could not re-create the subscription"
            )
            for t in missing
        ]
    return [
        Repair(
            topic=t,
            action="recreated",
            detail=f"the subscription had disappeared; re-created as {ids.get(t, '?')}",
        )
        for t in missing
    ]
