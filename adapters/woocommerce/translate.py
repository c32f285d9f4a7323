"""WooCommerce order webhooks -> Meta events (pure: no I/O, no clock).

What a merchant should know (and what a pixel has to repeat for Meta to deduplicate):

``Purchase``
    One per order, made the first time a delivery shows the order paid: ``date_paid_gmt`` is
    set, or the status is ``processing`` or ``completed``. ``on-hold`` (bank transfer,
    cheque) counts only when the connection setting ``on_hold_is_paid`` is true.
    ``checkout-draft``, ``pending``, ``failed``, ``cancelled`` and trashed orders never make a
    Purchase. Every later delivery of the same order (completed, refunded, edited) makes the
    same event again, which the outbox's unique key turns into nothing.

    A paid order stays a conversion when it is refunded or cancelled afterwards, whichever
    delivery the connector sees first: ``refunded``, and ``cancelled`` with a
    ``date_paid_gmt``, count. The connection setting ``refunded_orders: "skip"`` makes an
    order that is already refunded or cancelled when the connector first sees it paid make
    no Purchase (one already sent stays sent: Meta cannot take an event back).

    A sub-order (``parent_id`` set: Dokan and other marketplaces split one checkout into a
    parent order and one child order per vendor) is no conversion of its own: the parent
    order, with the whole checkout's total, is the Purchase.

    ``event_id`` is the order's ``_meta_event_id`` meta value when the store records one (the
    Facebook for WooCommerce plugin's pixel uses it) and the order is one the shopper's
    browser placed (``created_via`` ``checkout`` or ``store-api``, not a renewal, not a
    sub-order); otherwise the order id, e.g. ``"727"``. Plugins copy order meta between
    orders (WooCommerce Subscriptions copies it from the parent to every renewal), so an id
    read from meta is never trusted on an order no browser saw: each order is its own
    conversion.

    Amounts are the order's current ones (``total``, the line items as they are now): an
    order edited before payment counts what the shopper pays.

``InitiateCheckout``
    From a block-checkout draft order (status ``checkout-draft``) once it carries an email or
    a phone number. ``event_id`` is :data:`INITIATE_CHECKOUT_PREFIX` + the draft order id,
    e.g. ``"wc_checkout_727"``: a browser pixel firing InitiateCheckout should use the same.

``action_source`` by the order's ``created_via`` (:data:`DEFAULT_ACTION_SOURCES`):

    ============== ==================  =========================================
    created_via    action_source       why
    ============== ==================  =========================================
    checkout       website             the classic checkout page
    store-api      website             the block checkout (Store API)
    admin          other               keyed in by staff (phone, e-mail orders)
    rest-api       system_generated    created by another system through REST
    subscription   system_generated    a renewal WooCommerce Subscriptions made
    pos-rest-api   physical_store      WooCommerce's point of sale
    anything else  other
    ============== ==================  =========================================

    A ``website`` event carries ``event_source_url`` = the store's URL. Meta refuses website
    events without ``client_user_agent``; an order that recorded none is sent as ``other``.

Connection settings read here (``Connection.settings``; all optional):

``content_id`` (also read as ``content_id_format``)
    How a line item becomes a ``contents[].id``: ``"id"`` (default: the variation id when
    there is one, else the product id; ``"variant"`` and ``"variation"`` mean the same),
    ``"product"`` (always the parent product's id; ``content_type`` is then
    ``product_group``, Meta's name for ids that name a product and all its variations),
    ``"sku"`` (the SKU, the id when it has
    none), or ``"facebook_retailer_id"`` (``{sku}_{id}``, or ``wc_post_id_{id}`` without a
    SKU: the ids the Facebook for WooCommerce plugin gives catalog items).
``on_hold_is_paid``
    ``true`` when the store's offline gateways mean "paid" by ``on-hold``.
``refunded_orders``
    ``"count"`` (default: a paid order is a conversion even if refunded or cancelled later)
    or ``"skip"`` (an order already refunded or cancelled when first seen paid is not sent).
``action_sources``
    An object ``{created_via: action_source}`` that overrides rows of the table above.
``value_basis``
    The Purchase ``value``: ``"total"`` (default: what the shopper paid), ``"excl_tax"``
    (``total - total_tax``), ``"excl_shipping"`` (``total - shipping_total - shipping_tax``)
    or ``"excl_tax_and_shipping"`` (``total - total_tax - shipping_total``). WooCommerce keeps
    ``shipping_total`` without tax and counts ``shipping_tax`` inside ``total_tax``
    (https://woocommerce.github.io/woocommerce-rest-api-docs/#order-properties).

Payload versions: a webhook's "API version" decides the body's shape. wc/v3 and wc/v2 carry
``*_gmt`` dates; wc/v1 (WooCommerce 2.6) has none, but its ``date_created`` and
``date_modified`` are UTC; the Legacy REST API (``legacy_v3``, still chosen by webhooks made
before WooCommerce 3.0) wraps the order as ``{"order": {...}}`` with ``created_at`` and
``billing_address``. All three are read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, get_args

from adapters.woocommerce import match_keys
from adapters.woocommerce.fields import as_gmt as _gmt
from adapters.woocommerce.fields import as_int as _int
from adapters.woocommerce.fields import as_list as _list
from adapters.woocommerce.fields import as_mapping as _mapping
from adapters.woocommerce.fields import as_str as _str
from adapters.woocommerce.fields import meta_value
from connector import matching
from connector.errors import PayloadError
from connector.events import (
    INITIATE_CHECKOUT,
    PURCHASE,
    ActionSource,
    CanonicalEvent,
    Content,
    CustomData,
)
from connector.platform import ConnectionInfo, Outcome

#: prefixed to a draft order's id to make its InitiateCheckout event_id
INITIATE_CHECKOUT_PREFIX: Final = "wc_checkout_"
VALUE_BASIS: Final = "value_basis"
VALUE_BASIS_VALUES: Final = (
    "total",
    "excl_tax",
    "excl_shipping",
    "excl_tax_and_shipping",
)

#: the order meta key whose value, when present, is the Purchase event_id
META_EVENT_ID_KEY: Final = "_meta_event_id"

PAID_STATUSES: Final = frozenset({"processing", "completed", "refunded"})
NEVER_PAID_STATUSES: Final = frozenset(
    {"checkout-draft", "pending", "failed", "trash", "draft", "auto-draft"}
)
ON_HOLD: Final = "on-hold"
CANCELLED: Final = "cancelled"
#: statuses of an order whose money went back (or never stayed): see ``refunded_orders``
REVERSED_STATUSES: Final = frozenset({"refunded", CANCELLED})
REFUNDED_ORDERS: Final = "refunded_orders"
REFUNDED_ORDERS_VALUES: Final = ("count", "skip")
#: ``created_via`` of an order the shopper's browser placed: the only orders whose
#: ``_meta_event_id`` a pixel can have fired with
BROWSER_CREATED_VIA: Final = frozenset({"checkout", "store-api"})
#: order meta WooCommerce Subscriptions puts on an order it made for an existing subscription
SUBSCRIPTION_ORDER_META: Final = (
    "_subscription_renewal",
    "_subscription_resubscribe",
    "_subscription_switch",
)
CHECKOUT_DRAFT: Final = "checkout-draft"

DEFAULT_ACTION_SOURCES: Final[Mapping[str, ActionSource]] = {
    "checkout": "website",
    "store-api": "website",
    "admin": "other",
    "rest-api": "system_generated",
    "subscription": "system_generated",
    "pos-rest-api": "physical_store",
}
CONTENT_ID_FORMATS: Final = ("id", "product", "sku", "facebook_retailer_id")
#: the setting's name, and the name it had first; the same name as Shopify's setting wins
CONTENT_ID_SETTINGS: Final = ("content_id", "content_id_format")
_CONTENT_ID_ALIASES: Final = {"variant": "id", "variation": "id"}
_ACTION_SOURCES: Final = frozenset(get_args(ActionSource))
#: order topics that carry the full order; order.deleted carries only {"id": N}
_ORDER_EVENTS: Final = frozenset({"created", "updated", "restored"})
#: receipts keep refs in 64-character columns
_REF_MAX = 64


def translate(topic: str, payload: Any, conn: ConnectionInfo, now: datetime) -> Outcome:
    """What one verified delivery means for Meta.

    Raises:
        PayloadError: the body is not an object, or an order lacks what every order has.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("the body is not a JSON object")
    error = rest_error(payload)
    if error is not None:
        return Outcome(skipped=error)
    payload = normalize_order(payload)
    resource, _, event = topic.partition(".")
    if resource != "order":
        return Outcome(skipped=f"topic {topic} carries no conversion")
    order_id = _int(payload.get("id"))
    if order_id is None or order_id <= 0:
        raise PayloadError("the order has no numeric id")
    order_ref = str(order_id)
    customer_id = _int(payload.get("customer_id"))
    customer_ref = str(customer_id) if customer_id and customer_id > 0 else None
    if event == "deleted":
        return Outcome(
            skipped=f"order {order_ref} was deleted in the store; nothing to send",
            order_ref=order_ref,
            customer_ref=customer_ref,
        )
    if event not in _ORDER_EVENTS:
        return Outcome(
            skipped=f"topic {topic} carries no conversion", order_ref=order_ref
        )
    status = _str(payload.get("status")) or ""
    if status == CHECKOUT_DRAFT:
        events = _initiate_checkout(payload, order_id, conn, now)
        reason = (
            None if events else f"checkout draft {order_ref} has no email or phone yet"
        )
    elif (parent := parent_order(payload)) is not None:
        events = []
        reason = (
            f"order {order_ref} is a sub-order of order {parent}, "
            "which is the conversion"
        )
    elif is_paid(payload, conn.settings):
        if (
            status in REVERSED_STATUSES
            and conn.settings.get(REFUNDED_ORDERS, "count") == "skip"
        ):
            events = []
            reason = f"order {order_ref} is {status} and {REFUNDED_ORDERS} is skip"
        else:
            events = [_purchase(payload, order_id, conn, now)]
            reason = None
    else:
        events = []
        reason = f"order {order_ref} is {status[:32] or 'without a status'}: not paid"
    return Outcome(
        events=events, skipped=reason, order_ref=order_ref, customer_ref=customer_ref
    )


def rest_error(payload: Mapping[str, Any]) -> str | None:
    """A readable reason when the body is a WP REST error object instead of a resource."""
    code, message = payload.get("code"), payload.get("message")
    if "id" in payload or not isinstance(code, str) or not isinstance(message, str):
        return None
    data = payload.get("data")
    status = data.get("status") if isinstance(data, Mapping) else None
    hint = (
        " (the user who owns the webhook may lack the rights to read orders)"
        if code.startswith("woocommerce_rest_cannot_")
        else ""
    )
    return f"WooCommerce sent an error instead of the resource: {code[:80]} {status or ''}: {message[:200]}{hint}"


def is_paid(order: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """True when this state of the order should count as a Purchase."""
    status = _str(order.get("status")) or ""
    if status in NEVER_PAID_STATUSES:
        return False
    if status == ON_HOLD:
        return settings.get("on_hold_is_paid") is True
    if status == CANCELLED:
        # Cancelled after payment (a paid order the store gave up on) was paid; cancelled
        # from pending or on-hold never was.
        return _gmt(order.get("date_paid_gmt")) is not None
    return status in PAID_STATUSES or _gmt(order.get("date_paid_gmt")) is not None


def parent_order(order: Mapping[str, Any]) -> str | None:
    """The parent order's id when this order is a sub-order (Dokan's per-vendor orders)."""
    parent = _int(order.get("parent_id"))
    return str(parent) if parent is not None and parent > 0 else None


def purchase_event_id(order: Mapping[str, Any], order_id: int) -> str:
    """``_meta_event_id`` for an order the shopper's browser placed, else the order id.

    Order meta is copied between orders by other plugins (WooCommerce Subscriptions copies
    the parent order's meta to each renewal: https://woocommerce.com/document/subscriptions/develop/data-structure/),
    so an id from meta is used only where a pixel can have fired it: an order made by the
    checkout (``created_via`` ``checkout`` or ``store-api``) that is neither a sub-order nor
    an order made for an existing subscription.
    """
    value = _str(meta_value(order, META_EVENT_ID_KEY))
    if (
        value is not None
        and len(value) <= 255
        and (_str(order.get("created_via")) or "") in BROWSER_CREATED_VIA
        and parent_order(order) is None
        and not any(meta_value(order, key) for key in SUBSCRIPTION_ORDER_META)
    ):
        return value
    return str(order_id)


def action_source_for(
    created_via: str | None, settings: Mapping[str, Any]
) -> ActionSource:
    """The documented table, with the connection's ``action_sources`` overrides."""
    key = created_via or ""
    overrides = settings.get("action_sources")
    if isinstance(overrides, Mapping):
        chosen = overrides.get(key)
        if isinstance(chosen, str) and chosen in _ACTION_SOURCES:
            return chosen  # type: ignore[return-value]  # checked against the Literal's values
    return DEFAULT_ACTION_SOURCES.get(key, "other")


def delivery_key(payload: Any) -> str:
    """Identical content gives the same key, so a redelivery is a no-op.

    Raises:
        PayloadError: the body cannot be serialized again (absurd nesting).

    WooCommerce's own delivery id is a hash of the webhook id and the second, so two real
    deliveries can share it and a redelivery never does; the order's state is what counts.
    """
    try:
        canonical = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), default=str
        )
    except (RecursionError, ValueError) as exc:
        raise PayloadError("the body nests too deeply to be an order") from exc
    digest = hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()[:32]
    if not isinstance(payload, Mapping):
        return f"body:{digest}"
    order_id = _int(payload.get("id"))
    if order_id is None:
        return f"body:{digest}"
    status = (_str(payload.get("status")) or "-")[:32]
    modified = (_str(payload.get("date_modified_gmt")) or "-")[:32]
    return f"{order_id}:{status}:{modified}:{digest}"[:255]


def settings_problems(settings: Mapping[str, Any]) -> list[str]:
    """What is wrong with a connection's translation settings, for people to fix."""
    problems: list[str] = []
    for name in CONTENT_ID_SETTINGS:
        value = settings.get(name)
        if value is None:
            continue
        known = isinstance(value, str) and (
            _CONTENT_ID_ALIASES.get(value.strip().lower(), value.strip().lower())
            in CONTENT_ID_FORMATS
        )
        if not known:
            problems.append(
                f"{name} must be one of {', '.join(CONTENT_ID_FORMATS)} (or variant)"
            )
    if settings.get(VALUE_BASIS, "total") not in VALUE_BASIS_VALUES:
        problems.append(f"{VALUE_BASIS} must be one of {', '.join(VALUE_BASIS_VALUES)}")
    if "on_hold_is_paid" in settings and not isinstance(
        settings["on_hold_is_paid"], bool
    ):
        problems.append("on_hold_is_paid must be true or false")
    refunded = settings.get(REFUNDED_ORDERS)
    if refunded is not None and refunded not in REFUNDED_ORDERS_VALUES:
        problems.append(
            f"{REFUNDED_ORDERS} must be one of {', '.join(REFUNDED_ORDERS_VALUES)}"
        )
    overrides = settings.get("action_sources")
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            problems.append(
                "action_sources must be an object {created_via: action_source}"
            )
        else:
            wrong = sorted(
                str(k) for k, v in overrides.items() if v not in _ACTION_SOURCES
            )
            if wrong:
                problems.append(
                    f"action_sources for {', '.join(wrong)} must be one of "
                    f"{', '.join(sorted(_ACTION_SOURCES))}"
                )
    return problems


def content_id_format(settings: Mapping[str, Any]) -> str:
    """The connection's ``content_id`` setting, ``"id"`` when unset or unknown."""
    for name in CONTENT_ID_SETTINGS:
        value = settings.get(name)
        if isinstance(value, str):
            value = _CONTENT_ID_ALIASES.get(
                value.strip().lower(), value.strip().lower()
            )
            if value in CONTENT_ID_FORMATS:
                return value
    return "id"


def normalize_order(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """A wc/v1 or Legacy REST API order in the wc/v3 shape; a v2/v3 order as it is."""
    legacy = payload.get("order")
    if "id" not in payload and isinstance(legacy, Mapping):
        return _from_legacy(legacy)
    if "date_created_gmt" in payload or "date_created" not in payload:
        return payload
    # wc/v1: no *_gmt fields, but its date_created and date_modified are UTC
    # ("v1 API used UTC"); its date_paid is the store's local time, so it is left out.
    return {
        **payload,
        "date_created_gmt": payload.get("date_created"),
        "date_modified_gmt": payload.get("date_modified"),
    }


def _from_legacy(order: Mapping[str, Any]) -> dict[str, Any]:
    # WC_API_Orders::get_order (Legacy REST API v3): dates are UTC with a "Z"; a variation's
    # id is the line's product_id; "paid" is a flag without a date.
    payment = _mapping(order.get("payment_details"))
    paid_at = order.get("updated_at") if payment.get("paid") is True else None
    lines = [
        {**line, "variation_id": 0}
        for line in _list(order.get("line_items"))
        if isinstance(line, Mapping)
    ]
    return {
        "id": order.get("id"),
        "status": order.get("status"),
        "currency": order.get("currency"),
        "total": order.get("total"),
        "total_tax": order.get("total_tax"),
        "shipping_total": order.get("total_shipping"),
        "shipping_tax": order.get("shipping_tax"),
        "date_created_gmt": order.get("created_at"),
        "date_modified_gmt": order.get("updated_at"),
        "date_paid_gmt": paid_at,
        "customer_id": order.get("customer_id"),
        "customer_ip_address": order.get("customer_ip"),
        "customer_user_agent": order.get("customer_user_agent"),
        "created_via": order.get("created_via"),
        "billing": order.get("billing_address"),
        "shipping": order.get("shipping_address"),
        "line_items": lines,
        "meta_data": order.get("meta_data"),
    }


# -- events ---------------------------------------------------------------------------


def _purchase(
    order: Mapping[str, Any], order_id: int, conn: ConnectionInfo, now: datetime
) -> CanonicalEvent:
    when = (
        _gmt(order.get("date_paid_gmt"))
        or _gmt(order.get("date_created_gmt"))
        or _gmt(order.get("date_modified_gmt"))
    )
    return _event(
        PURCHASE, purchase_event_id(order, order_id), when, order, order_id, conn, now
    )


def _initiate_checkout(
    order: Mapping[str, Any], order_id: int, conn: ConnectionInfo, now: datetime
) -> list[CanonicalEvent]:
    billing = _mapping(order.get("billing"))
    shipping = _mapping(order.get("shipping"))
    if not (
        _str(billing.get("email"))
        or _str(billing.get("phone"))
        or _str(shipping.get("phone"))
    ):
        return []
    when = _gmt(order.get("date_modified_gmt")) or _gmt(order.get("date_created_gmt"))
    event_id = f"{INITIATE_CHECKOUT_PREFIX}{order_id}"
    return [_event(INITIATE_CHECKOUT, event_id, when, order, order_id, conn, now)]


def _event(
    name: str,
    event_id: str,
    when: datetime | None,
    order: Mapping[str, Any],
    order_id: int,
    conn: ConnectionInfo,
    now: datetime,
) -> CanonicalEvent:
    # A store clock ahead of ours must not date an event in the future: Meta refuses those.
    event_time = min(when, now) if when is not None else now
    raw = match_keys.raw_user_data(order, event_time)
    source = action_source_for(_str(order.get("created_via")), conn.settings)
    if source == "website" and not raw.get("client_user_agent"):
        source = "other"
    customer_id = _int(order.get("customer_id"))
    return CanonicalEvent(
        event_name=name,
        event_id=event_id,
        event_time=event_time,
        action_source=source,
        event_source_url=conn.store if source == "website" else None,
        user_data=matching.user_data(raw),
        custom_data=_custom_data(order, order_id, conn.settings),
        order_ref=str(order_id),
        customer_ref=str(customer_id)[:_REF_MAX]
        if customer_id and customer_id > 0
        else None,
    )


def purchase_value(
    order: Mapping[str, Any], total: Decimal, settings: Mapping[str, Any]
) -> Decimal:
    """The order's value under the ``value_basis`` setting (never below zero)."""
    basis = settings.get(VALUE_BASIS, "total")
    if basis not in VALUE_BASIS_VALUES or basis == "total":
        return total
    tax = _decimal(order.get("total_tax")) or Decimal(0)
    shipping = _decimal(order.get("shipping_total")) or Decimal(0)
    shipping_tax = _decimal(order.get("shipping_tax")) or Decimal(0)
    if basis == "excl_tax":
        value = total - tax
    elif basis == "excl_shipping":
        value = total - shipping - shipping_tax
    else:
        value = total - tax - shipping
    return max(value, Decimal(0))


def _custom_data(
    order: Mapping[str, Any], order_id: int, settings: Mapping[str, Any]
) -> CustomData:
    total = _decimal(order.get("total"))
    if total is None:
        raise PayloadError(f"order {order_id} has no valid total")
    currency = _str(order.get("currency"))
    if currency is None or len(currency) != 3 or not currency.isalpha():
        raise PayloadError(f"order {order_id} has no valid currency")
    fmt = content_id_format(settings)
    contents = _merged(_contents(_list(order.get("line_items")), str(fmt)))
    return CustomData(
        value=purchase_value(order, total, settings),
        currency=currency.upper(),
        contents=contents,
        content_ids=tuple(dict.fromkeys(c.id for c in contents)),
        # Parent products are what Meta's custom_data reference calls product groups.
        content_type="product_group" if fmt == "product" else "product",
        num_items=sum(c.quantity for c in contents) if contents else None,
        order_id=str(order_id),
    )


def _merged(contents: Iterable[Content]) -> tuple[Content, ...]:
    """One entry per (id, item_price): two variations of one parent under ``product`` ids."""
    merged: dict[tuple[str, Decimal | None], int] = {}
    for content in contents:
        key = (content.id, content.item_price)
        merged[key] = merged.get(key, 0) + content.quantity
    return tuple(
        Content(id=content_id, quantity=count, item_price=price)
        for (content_id, price), count in merged.items()
    )


def _contents(items: Iterable[Any], fmt: str) -> Iterable[Content]:
    for item in items:
        if not isinstance(item, Mapping):
            continue
        quantity = _int(item.get("quantity"))
        if quantity is None or quantity <= 0:
            continue
        variation = _int(item.get("variation_id")) or 0
        product = _int(item.get("product_id")) or 0
        post_id = variation if variation > 0 else product
        sku = _str(item.get("sku"))
        if fmt == "product":
            content_id = str(product) if product > 0 else None
        elif fmt == "sku":
            content_id = sku or (str(post_id) if post_id > 0 else None)
        elif fmt == "facebook_retailer_id":
            if post_id > 0:
                content_id = f"{sku}_{post_id}" if sku else f"wc_post_id_{post_id}"
            else:
                content_id = sku
        else:
            content_id = str(post_id) if post_id > 0 else None
        if content_id is None:
            continue  # a line whose product was deleted: nothing a catalog could match
        price = _decimal(item.get("price"))
        if price is None:
            subtotal = _decimal(item.get("subtotal"))
            price = subtotal / quantity if subtotal is not None else None
        yield Content(id=content_id, quantity=quantity, item_price=price)


# -- lenient readers: WooCommerce sends numbers as strings, and plugins add odd shapes --


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if not isinstance(value, str | int | float):
        return None
    try:
        rv = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return rv if rv.is_finite() and abs(rv) < Decimal("1e15") else None


def _unique(*values: str | None) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
