"""Shopify orders and checkouts as Meta events (pure: no I/O, no clock; ``now`` is given).

One order makes one ``Purchase`` whose ``event_id`` is the order id (exact: JSON
integers stay integers); one checkout makes one ``InitiateCheckout`` whose ``event_id``
is the checkout token. The browser pixel can read both on the storefront, so Meta
deduplicates pixel and server; the outbox's unique key settles repeated webhooks.

Connection settings read here (``ConnectionInfo.settings``):

| key               | values                                        | default     |
|-------------------|-----------------------------------------------|-------------|
| ``purchase_on``   | ``paid``: an unpaid order (bank transfer,     | ``paid``    |
|                   | cash on delivery) counts at ``orders/paid``;  |             |
|                   | ``created``: every order counts when created  |             |
| ``content_id``    | ``variant`` (variant id), ``product``         | ``variant`` |
|                   | (product id), ``sku``, ``catalog``            |             |
|                   | (``shopify_<COUNTRY>_<product>_<variant>``,   |             |
|                   | the ids Shopify's Facebook channel gives the  |             |
|                   | Meta catalog)                                 |             |
| ``catalog_country``| the two-letter country in ``catalog`` ids    | —           |
| ``refunded_orders``| ``count``: a paid order is a conversion even | ``count``   |
|                   | if refunded or cancelled later; ``skip``: an |             |
|                   | order already refunded or cancelled when     |             |
|                   | first seen paid makes no Purchase            |             |
| ``excluded_channels``| ``source_name`` values (sales channels'   | ``["2329312"]``|
|                   | app ids) whose orders are not sent: Meta     | (Facebook & |
|                   | already has them                             | Instagram)  |
| ``value_basis``   | ``total``, ``excl_tax``, ``excl_shipping``,   | ``total``   |
|                   | ``excl_tax_and_shipping`` (see below)         |             |

``catalog`` needs ``catalog_country``; without it content ids fall back to variant ids
(``settings_problems`` reports it). Unknown values read as the default.

"Paid" follows Shopify's ``financial_status``: ``paid``, ``partially_refunded`` and
``refunded`` orders had their full amount captured. ``pending``, ``authorized``,
``partially_paid``, ``expired`` and ``voided`` orders have not been paid in full.

Money: the presentment currency (what the shopper saw and paid, and what the
storefront pixel reports) from the ``*_set.presentment_money`` amounts. When an order
lacks them, the whole event uses the shop currency instead, so ``value``, ``currency``
and ``item_price`` always agree. ``value`` is the order's ``total_price`` (tax and
shipping included). An order edited before it was paid counts what the shopper pays:
``current_total_price_set`` and each line's ``current_quantity`` (a removed line has
``current_quantity`` 0 and is left out). A refund after payment does not lower the
Purchase: for an order with refunds, refunded quantities are added back and the total is
``total_price_set``. A cancelled order (counted when it was paid, see ``refunded_orders``)
is read as created: cancelling removes every line whether or not the money went back.

With ``content_id`` ``product`` the ids name products, which Meta's ``custom_data``
reference calls product groups: ``content_type`` is ``product_group``; otherwise
``product``.
shipping included) at the time of purchase; ``value_basis`` takes out ``total_tax`` and/or
the shipping lines' price (without the tax on shipping when prices include tax, since that
tax is already in ``total_tax``), in the event's currency
(https://shopify.dev/docs/api/admin-rest/latest/resources/order#resource-object).

``action_source`` by ``source_name``:

| ``source_name``                          | ``action_source``                        |
|------------------------------------------|------------------------------------------|
| ``web``                                  | ``website``                              |
| ``pos``                                  | ``physical_store``                       |
| ``shopify_draft_order``                  | ``other`` (staff created it in the admin)|
| ``iphone``, ``android`` (admin apps)     | ``other``                                |
| ``subscription_contract`` and every name | ``system_generated`` (a renewal: Shopify |
| that starts with it (``subscription_``   | names these ``subscription_contract``,   |
| ``contract_checkout_one``, ...)          | ``subscription_contract_checkout_one``)  |
| a sales channel's numeric app id         | ``website`` when the order came through  |
|                                          | a browser checkout (it has a landing     |
|                                          | site or a user agent), else ``other``    |
| any other name                           | as an app id; it is logged once per      |
|                                          | process so the table can grow            |

A ``website`` event needs the shopper's user agent (``client_details.user_agent``): Meta
refuses website events without one, so such an order or checkout is sent as ``other``.

``event_source_url`` (website events only): the page where the pixel fires the same
event. For a Purchase that is the order status ("thank you") page, ``order_status_url``
without its query (which carries an access key); for an InitiateCheckout the checkout
page, ``abandoned_checkout_url`` without its query and ``/recover`` suffix. Without
them, the shop's storefront ``https://<shop>/``.

Skipped with a reason: test orders unless the connection is in test mode, orders from an
excluded channel (``excluded_channels``), refunded or cancelled orders when
``refunded_orders`` is ``skip``, orders cancelled before they were paid, unpaid orders at ``orders/create`` (by default),
``checkouts/update`` before the checkout has an email or phone, and anything without a
single customer identifier.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from adapters.shopify import topics
from adapters.shopify.fields import items, mapping, money, quantity, text, timestamp
from adapters.shopify.match_keys import has_email_or_phone, raw_match_keys
from connector.errors import PayloadError
from connector.events import (
    INITIATE_CHECKOUT,
    PURCHASE,
    ActionSource,
    CanonicalEvent,
    Content,
    CustomData,
    UserData,
)
from connector.matching import user_data
from connector.platform import ConnectionInfo, Outcome

PURCHASE_ON: Final = "purchase_on"
CONTENT_ID: Final = "content_id"
CATALOG_COUNTRY: Final = "catalog_country"
VALUE_BASIS: Final = "value_basis"
VALUE_BASIS_VALUES: Final = (
    "total",
    "excl_tax",
    "excl_shipping",
    "excl_tax_and_shipping",
)

REFUNDED_ORDERS: Final = "refunded_orders"
EXCLUDED_CHANNELS: Final = "excluded_channels"

PURCHASE_ON_VALUES: Final = ("paid", "created")
CONTENT_ID_VALUES: Final = ("variant", "product", "sku", "catalog")
REFUNDED_ORDERS_VALUES: Final = ("count", "skip")
#: the Facebook & Instagram sales channel's app id, as Shopify writes it in ``source_name``
#: (its orders carry the Meta commerce order ids in ``source_identifier``)
META_CHANNEL_APP_ID: Final = "2329312"
DEFAULT_EXCLUDED_CHANNELS: Final = (META_CHANNEL_APP_ID,)

PAID_STATUSES: Final = frozenset({"paid", "partially_refunded", "refunded"})
#: a paid order whose money went back in full; with ``refunded_orders: skip`` it is not sent
REVERSED_STATUSES: Final = frozenset({"refunded", "voided"})

_ACTION_SOURCES: Final[Mapping[str, ActionSource]] = {
    "web": "website",
    "pos": "physical_store",
    "shopify_draft_order": "other",
    "iphone": "other",
    "android": "other",
    "subscription_contract": "system_generated",
}
#: ``source_name`` families: a name starting with one of these is a member
_SOURCE_FAMILIES: Final[tuple[tuple[str, ActionSource], ...]] = (
    ("subscription_contract", "system_generated"),
    ("shopify_draft_order", "other"),
)
_APP_ID: Final = re.compile(r"[0-9]{1,20}")
_LOGGABLE_SOURCE: Final = re.compile(r"[a-z0-9_.-]{1,64}")

log = logging.getLogger(__name__)
_unknown_sources: set[str] = set()
_unknown_sources_lock = threading.Lock()


def settings_problems(settings: Mapping[str, Any]) -> list[str]:
    """What is wrong with a connection's translation settings, for people to fix."""
    problems: list[str] = []
    purchase_on = settings.get(PURCHASE_ON, "paid")
    if purchase_on not in PURCHASE_ON_VALUES:
        problems.append(f"{PURCHASE_ON} must be one of {', '.join(PURCHASE_ON_VALUES)}")
    content_id = settings.get(CONTENT_ID, "variant")
    if content_id not in CONTENT_ID_VALUES:
        problems.append(f"{CONTENT_ID} must be one of {', '.join(CONTENT_ID_VALUES)}")
    if settings.get(VALUE_BASIS, "total") not in VALUE_BASIS_VALUES:
        problems.append(f"{VALUE_BASIS} must be one of {', '.join(VALUE_BASIS_VALUES)}")
    if content_id == "catalog" and _catalog_country(settings) is None:
        problems.append(
            f"{CONTENT_ID} catalog needs {CATALOG_COUNTRY}, a two-letter country code"
        )
    refunded = settings.get(REFUNDED_ORDERS, "count")
    if refunded not in REFUNDED_ORDERS_VALUES:
        problems.append(
            f"{REFUNDED_ORDERS} must be one of {', '.join(REFUNDED_ORDERS_VALUES)}"
        )
    channels = settings.get(EXCLUDED_CHANNELS, list(DEFAULT_EXCLUDED_CHANNELS))
    if not isinstance(channels, list) or not all(
        isinstance(c, str) and c.strip() for c in channels
    ):
        problems.append(
            f"{EXCLUDED_CHANNELS} must be a list of source names (sales channels' app "
            "ids), [] to exclude none"
        )
    return problems


def excluded_channels(settings: Mapping[str, Any]) -> frozenset[str]:
    """The ``source_name`` values whose orders are not sent (Meta's own channel by default)."""
    channels = settings.get(EXCLUDED_CHANNELS, DEFAULT_EXCLUDED_CHANNELS)
    if not isinstance(channels, list | tuple):
        return frozenset(DEFAULT_EXCLUDED_CHANNELS)
    return frozenset(c.strip().lower() for c in channels if isinstance(c, str))


def translate_order(
    topic: str, order: Any, conn: ConnectionInfo, now: datetime
) -> Outcome:
    """An ``orders/*`` payload as one Purchase, or the reason it makes none.

    Raises:
        PayloadError: the payload is not an order (not an object, no numeric id).
    """
    if not isinstance(order, Mapping):
        raise PayloadError(f"a {topic} payload must be a JSON object")
    order_id = topics.shopify_id(order.get("id"))
    if order_id is None:
        raise PayloadError("the order has no numeric id")
    customer_ref = topics.shopify_id(mapping(order.get("customer")).get("id"))

    def skip(reason: str) -> Outcome:
        return Outcome(skipped=reason, order_ref=order_id, customer_ref=customer_ref)

    if order.get("test") is True and not conn.test_mode:
        return skip("test order, and the connection is not in test mode")
    source_name = (text(order.get("source_name")) or "").lower()
    if source_name and source_name in excluded_channels(conn.settings):
        return skip(
            f"the order came through sales channel {source_name[:40]}, "
            f"which {EXCLUDED_CHANNELS} leaves out (Meta already has its orders)"
        )
    status = (text(order.get("financial_status")) or "unknown").lower()
    paid = status in PAID_STATUSES or topic == topics.ORDERS_PAID
    reversed_ = status in REVERSED_STATUSES or bool(order.get("cancelled_at"))
    if paid and reversed_ and conn.settings.get(REFUNDED_ORDERS, "count") == "skip":
        return skip(
            f"order refunded or cancelled (financial_status {status}) "
            f"and {REFUNDED_ORDERS} is skip"
        )
    if order.get("cancelled_at") and not paid:
        return skip(f"order cancelled before it was paid (financial_status {status})")
    if status == "voided" and not paid:
        return skip("the order's payment was voided")
    purchase_on = conn.settings.get(PURCHASE_ON, "paid")
    if topic == topics.ORDERS_CREATE and not paid and purchase_on != "created":
        return skip(
            f"order not paid yet (financial_status {status}); counted when paid"
        )
    event_time = _event_time(order, "processed_at", "created_at", now)
    if event_time is None:
        raise PayloadError("the order has no readable processed_at or created_at")
    if paid and purchase_on != "created":
        event_time = paid_time(order, topic, event_time, now)
    prices = _Prices.of(order)
    if prices.total is None or prices.currency is None:
        return skip("the order has no readable total_price and currency")
    # fbc's creation time: the order's creation is the closest to the ad click we know
    created = timestamp(order.get("created_at"))
    raw = raw_match_keys(order, min(created, now) if created else event_time)
    user = user_data(raw)
    if not user.has_identifier():
        return skip("no customer identifier in the order (all redacted or missing)")
    contents, num_items = _contents(order, prices, conn.settings)
    source = _deliverable(action_source(order), user)
    event = CanonicalEvent(
        event_name=PURCHASE,
        event_id=order_id,
        event_time=event_time,
        action_source=source,
        event_source_url=(
            _page_url(order.get("order_status_url"), conn.store)
            if source == "website"
            else None
        ),
        user_data=user,
        custom_data=CustomData(
            value=purchase_value(order, prices, conn.settings),
            currency=prices.currency,
            contents=contents,
            content_ids=_unique(c.id for c in contents),
            content_type=_content_type(conn.settings),
            num_items=num_items,
            order_id=order_id,
        ),
        order_ref=order_id,
        customer_ref=customer_ref,
    )
    return Outcome(events=(event,), order_ref=order_id, customer_ref=customer_ref)


def translate_checkout(
    topic: str, checkout: Any, conn: ConnectionInfo, now: datetime
) -> Outcome:
    """A ``checkouts/*`` payload as one InitiateCheckout, or the reason it makes none.

    Raises:
        PayloadError: the payload is not a checkout (not an object, no token).
    """
    if not isinstance(checkout, Mapping):
        raise PayloadError(f"a {topic} payload must be a JSON object")
    token = text(checkout.get("token"))
    if token is None or len(token) > 255:
        raise PayloadError("the checkout has no token")
    customer_ref = topics.shopify_id(mapping(checkout.get("customer")).get("id"))

    def skip(reason: str) -> Outcome:
        return Outcome(skipped=reason, customer_ref=customer_ref)

    if topic == topics.CHECKOUTS_UPDATE and not has_email_or_phone(checkout):
        return skip("checkout has no email or phone yet")
    event_time = _event_time(checkout, "created_at", "updated_at", now)
    if event_time is None:
        raise PayloadError("the checkout has no readable created_at")
    raw = raw_match_keys(checkout, event_time)
    user = user_data(raw)
    if not user.has_identifier():
        return skip("no customer identifier in the checkout (all redacted or missing)")
    prices = _Prices.of(checkout)
    contents, num_items = _contents(checkout, prices, conn.settings)
    source = _deliverable(action_source(checkout), user)
    event = CanonicalEvent(
        event_name=INITIATE_CHECKOUT,
        event_id=token,
        event_time=event_time,
        action_source=source,
        event_source_url=(
            _page_url(checkout.get("abandoned_checkout_url"), conn.store)
            if source == "website"
            else None
        ),
        user_data=user,
        custom_data=CustomData(
            value=purchase_value(checkout, prices, conn.settings)
            if prices.currency
            else None,
            currency=prices.currency if prices.total is not None else None,
            contents=contents,
            content_ids=_unique(c.id for c in contents),
            content_type=_content_type(conn.settings),
            num_items=num_items,
        ),
        customer_ref=customer_ref,
    )
    return Outcome(events=(event,), customer_ref=customer_ref)


@dataclass(frozen=True, kw_only=True)
class _Prices:
    """One money choice for the whole event: presentment if complete, else shop."""

    which: str  # "presentment_money" | "shop_money"
    currency: str | None
    total: Decimal | None
    #: plain amount fields (``price``) are in this currency
    plain_currency: str | None

    @classmethod
    def of(cls, resource: Mapping[str, Any]) -> _Prices:
        shop_currency = _currency(resource.get("currency"))
        presentment_currency = _currency(resource.get("presentment_currency"))
        # An order edited before payment: its current total is what the shopper pays. A
        # refund lowers the current total too, but not what the Purchase was worth.
        field = (
            "current_total_price"
            if "current_total_price_set" in resource
            and _reads_current(resource)
            and not _refunds(resource)
            else "total_price"
        )
        bag = mapping(mapping(resource.get(f"{field}_set")).get("presentment_money"))
        amount = money(bag.get("amount"))
        currency = _currency(bag.get("currency_code"))
        if amount is not None and currency is not None:
            return cls(
                which="presentment_money",
                currency=currency,
                total=amount,
                plain_currency=shop_currency,
            )
        if f"{field}_set" in resource:
            # An order without presentment amounts: stay in the shop currency throughout.
            return cls(
                which="shop_money",
                currency=shop_currency,
                total=money(resource.get(field)),
                plain_currency=shop_currency,
            )
        # Checkouts carry plain amounts in the presentment currency.
        return cls(
            which="presentment_money",
            currency=presentment_currency or shop_currency,
            total=money(resource.get("total_price")),
            plain_currency=presentment_currency or shop_currency,
        )

    def amount(self, resource: Mapping[str, Any], name: str) -> Decimal:
        """``name`` of ``resource`` in the event's currency (``name_set`` first), 0 if absent."""
        bag = mapping(mapping(resource.get(f"{name}_set")).get(self.which))
        amount = money(bag.get("amount"))
        if amount is not None and _currency(bag.get("currency_code")) == self.currency:
            return amount
        if self.plain_currency == self.currency:
            return money(resource.get(name)) or Decimal(0)
        return Decimal(0)

    def line_price(self, line: Mapping[str, Any]) -> Decimal | None:
        bag = mapping(mapping(line.get("price_set")).get(self.which))
        amount = money(bag.get("amount"))
        if amount is not None and _currency(bag.get("currency_code")) == self.currency:
            return amount
        if self.plain_currency == self.currency:
            return money(line.get("price"))
        return None


def purchase_value(
    resource: Mapping[str, Any], prices: _Prices, settings: Mapping[str, Any]
) -> Decimal | None:
    """The order's or checkout's value under the ``value_basis`` setting (never below zero)."""
    total = prices.total
    basis = settings.get(VALUE_BASIS, "total")
    if total is None or basis not in VALUE_BASIS_VALUES or basis == "total":
        return total
    tax = prices.amount(resource, "total_tax")
    shipping = Decimal(0)
    shipping_tax = Decimal(0)
    for line in map(mapping, items(resource.get("shipping_lines"))):
        shipping += prices.amount(line, "price")
        for tax_line in map(mapping, items(line.get("tax_lines"))):
            shipping_tax += prices.amount(tax_line, "price")
    if resource.get("taxes_included") is True:
        # The shipping price holds its tax, which total_tax counts too.
        shipping_net, shipping_gross = shipping - shipping_tax, shipping
    else:
        shipping_net, shipping_gross = shipping, shipping + shipping_tax
    if basis == "excl_tax":
        value = total - tax
    elif basis == "excl_shipping":
        value = total - shipping_gross
    else:
        value = total - tax - shipping_net
    return max(value, Decimal(0))


def _contents(
    resource: Mapping[str, Any], prices: _Prices, settings: Mapping[str, Any]
) -> tuple[tuple[Content, ...], int | None]:
    merged: dict[tuple[str, Decimal | None], int] = {}
    num_items = 0
    refunded = _refunded_quantities(resource)
    current = _reads_current(resource)
    for line in items(resource.get("line_items")):
        line = mapping(line)
        count = (
            _line_quantity(line, refunded)
            if current
            else quantity(line.get("quantity"))
        )
        if count is None:
            continue
        num_items += count
        content_id = _content_id(line, settings)
        if content_id is None:
            continue  # a custom line: no catalog item to point at
        key = (content_id, prices.line_price(line))
        merged[key] = merged.get(key, 0) + count
    contents = tuple(
        Content(id=content_id, quantity=count, item_price=price)
        for (content_id, price), count in merged.items()
    )
    return contents, (num_items or None)


def _line_quantity(line: Mapping[str, Any], refunded: Mapping[str, int]) -> int | None:
    """The line's quantity as paid: after edits (``current_quantity``), before refunds."""
    if "current_quantity" not in line:
        return quantity(line.get("quantity"))  # checkouts, and orders from before 2022
    current = line.get("current_quantity")
    if isinstance(current, bool) or not isinstance(current, int) or current < 0:
        return quantity(line.get("quantity"))
    line_id = topics.shopify_id(line.get("id"))
    return quantity(current + (refunded.get(line_id, 0) if line_id else 0))


def _reads_current(resource: Mapping[str, Any]) -> bool:
    """Whether the current amounts are the paid ones: not after a cancellation.

    Cancelling an order removes its lines (``current_quantity`` 0, a current total of 0)
    whether or not the money went back; the amounts at creation are then the ones paid.
    """
    return not resource.get("cancelled_at")


def _refunds(resource: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [mapping(r) for r in items(resource.get("refunds")) if mapping(r)]


def _refunded_quantities(resource: Mapping[str, Any]) -> dict[str, int]:
    """Line item id -> units refunded, from the order's ``refunds[].refund_line_items``."""
    rv: dict[str, int] = {}
    for refund in _refunds(resource):
        for entry in items(refund.get("refund_line_items")):
            entry = mapping(entry)
            line_id = topics.shopify_id(entry.get("line_item_id"))
            count = quantity(entry.get("quantity"))
            if line_id and count:
                rv[line_id] = rv.get(line_id, 0) + count
    return rv


def _content_type(settings: Mapping[str, Any]) -> str:
    # Product ids name a product with all its variants: a product group, in Meta's words
    # (https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/custom-data#content-type).
    return "product_group" if settings.get(CONTENT_ID) == "product" else "product"


def _content_id(line: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    variant = topics.shopify_id(line.get("variant_id"))
    product = topics.shopify_id(line.get("product_id"))
    style = settings.get(CONTENT_ID, "variant")
    if style == "product":
        return product
    if style == "sku":
        return text(line.get("sku"))
    if style == "catalog":
        country = _catalog_country(settings)
        if country and product and variant:
            return f"shopify_{country}_{product}_{variant}"
    return variant


def _catalog_country(settings: Mapping[str, Any]) -> str | None:
    country = text(settings.get(CATALOG_COUNTRY))
    if country and len(country) == 2 and country.isascii() and country.isalpha():
        return country.upper()
    return None


def _currency(value: Any) -> str | None:
    code = text(value)
    if code and len(code) == 3 and code.isascii() and code.isalpha():
        return code.upper()
    return None


def _event_time(
    resource: Mapping[str, Any], first: str, second: str, now: datetime
) -> datetime | None:
    for key in (first, second):
        found = timestamp(resource.get(key))
        if found is not None:
            # A clock ahead of ours must not put the event in the future, which Meta refuses.
            return min(found, now)
    return None


def paid_time(
    order: Mapping[str, Any], topic: str, placed: datetime, now: datetime
) -> datetime:
    """When the order became paid: a Purchase is dated when the state that triggers it was reached.

    An order paid later than it was placed (cash on delivery, bank transfer) is dated at
    payment, not at ``processed_at``, or Meta would refuse it as more than 7 days old.
    Signals, best first, never before ``placed`` nor after ``now``:

    - the order's successful ``sale``/``capture`` transactions (the sweep reads them from
      the GraphQL ``Order.transactions``): the latest one's ``processed_at``;
    - at ``orders/paid``, the order's ``updated_at``: marking it paid updates the order, and
      Shopify documents ``updated_at`` as the date of its last change
      (https://shopify.dev/docs/api/admin-rest/latest/resources/order);
    - otherwise ``placed`` (an order paid at checkout).
    """
    captured = [
        found
        for t in items(order.get("transactions"))
        if (text(mapping(t).get("kind")) or "").lower() in {"sale", "capture"}
        and (text(mapping(t).get("status")) or "").lower() == "success"
        and (found := timestamp(mapping(t).get("processed_at"))) is not None
    ]
    if captured:
        when = max(captured)
    elif topic == topics.ORDERS_PAID:
        when = timestamp(order.get("updated_at")) or placed
    else:
        when = placed
    return min(max(when, placed), now)


def action_source(resource: Mapping[str, Any]) -> ActionSource:
    """Meta's ``action_source`` for an order or checkout, from ``source_name`` and the order.

    ``source_name`` is a free string Shopify extends without notice
    (https://shopify.dev/docs/api/admin-rest/latest/resources/order#resource-object):
    known names and families first, then what the order shows (a browser, or none).
    """
    source = (text(resource.get("source_name")) or "").lower()
    if source in _ACTION_SOURCES:
        return _ACTION_SOURCES[source]
    for prefix, family in _SOURCE_FAMILIES:
        if source.startswith(prefix):
            return family
    if not source and "abandoned_checkout_url" in resource:
        return "website"  # checkouts happen on the storefront
    if source and not _APP_ID.fullmatch(source):
        _note_unknown_source(source)
    browser = text(resource.get("landing_site")) or text(
        mapping(resource.get("client_details")).get("user_agent")
    )
    if browser:
        return "website"
    if "subscription" in source:
        return "system_generated"  # a renewal under a name not seen yet
    return "other"


def _note_unknown_source(source: str) -> None:
    """Log a ``source_name`` outside the table once per process, so the table can grow."""
    with _unknown_sources_lock:
        if source in _unknown_sources or len(_unknown_sources) >= 1000:
            return
        _unknown_sources.add(source)
    shown = source if _LOGGABLE_SOURCE.fullmatch(source) else "(unprintable)"
    log.warning(
        "Shopify source_name %s is not in the action_source table; "
        "read from the order (browser or not)",
        shown,
    )


def _deliverable(source: ActionSource, user: UserData) -> ActionSource:
    """Meta refuses a website event without the shopper's user agent: send it as ``other``.

    Shopify leaves ``client_details.user_agent`` empty on some web orders and on checkouts;
    such an event is still worth sending, only not as a browser event.
    """
    if source == "website" and not user.client_user_agent:
        return "other"
    return source


def _page_url(value: Any, store: str) -> str:
    url = text(value)
    if url:
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts = urlsplit("")
        if parts.scheme in {"http", "https"} and parts.netloc:
            # The order status link ends in /authenticate, the checkout link in /recover:
            # both lead to the page itself, which is what the pixel saw.
            path = parts.path.removesuffix("/authenticate").removesuffix("/recover")
            return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return f"https://{store}/"


def _unique(values: Any) -> tuple[str, ...]:
    rv: list[str] = []
    for value in values:
        if value not in rv:
            rv.append(value)
    return tuple(rv)
