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
| ``subscription_contract``                | ``system_generated`` (a renewal)         |
| anything else (a sales channel's app id) | ``website`` when the order came through  |
|                                          | a browser checkout (it has a landing     |
|                                          | site or a user agent), else ``other``    |

A ``website`` event needs the shopper's user agent (``client_details.user_agent``): Meta
refuses website events without one, so such an order or checkout is sent as ``other``.

``event_source_url`` (website events only): the page where the pixel fires the same
event. For a Purchase that is the order status ("thank you") page, ``order_status_url``
without its query (which carries an access key); for an InitiateCheckout the checkout
page, ``abandoned_checkout_url`` without its query and ``/recover`` suffix. Without
them, the shop's storefront ``https://<shop>/``.

Skipped with a reason: test orders unless the connection is in test mode, orders
cancelled before they were paid, unpaid orders at ``orders/create`` (by default),
``checkouts/update`` before the checkout has an email or phone, and anything without a
single customer identifier.
"""

from __future__ import annotations

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

PURCHASE_ON_VALUES: Final = ("paid", "created")
CONTENT_ID_VALUES: Final = ("variant", "product", "sku", "catalog")

PAID_STATUSES: Final = frozenset({"paid", "partially_refunded", "refunded"})

_ACTION_SOURCES: Final[Mapping[str, ActionSource]] = {
    "web": "website",
    "pos": "physical_store",
    "shopify_draft_order": "other",
    "iphone": "other",
    "android": "other",
    "subscription_contract": "system_generated",
}


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
    return problems


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
    status = (text(order.get("financial_status")) or "unknown").lower()
    paid = status in PAID_STATUSES or topic == topics.ORDERS_PAID
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
    source = _deliverable(_action_source(order), user)
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
            content_type="product",
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
    source = _deliverable(_action_source(checkout), user)
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
            content_type="product",
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
        bag = mapping(mapping(resource.get("total_price_set")).get("presentment_money"))
        amount = money(bag.get("amount"))
        currency = _currency(bag.get("currency_code"))
        if amount is not None and currency is not None:
            return cls(
                which="presentment_money",
                currency=currency,
                total=amount,
                plain_currency=shop_currency,
            )
        if "total_price_set" in resource:
            # An order without presentment amounts: stay in the shop currency throughout.
            return cls(
                which="shop_money",
                currency=shop_currency,
                total=money(resource.get("total_price")),
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
    for line in items(resource.get("line_items")):
        line = mapping(line)
        count = quantity(line.get("quantity"))
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


def _action_source(resource: Mapping[str, Any]) -> ActionSource:
    source = (text(resource.get("source_name")) or "").lower()
    if source in _ACTION_SOURCES:
        return _ACTION_SOURCES[source]
    if not source and "abandoned_checkout_url" in resource:
        return "website"  # checkouts happen on the storefront
    browser = text(resource.get("landing_site")) or text(
        mapping(resource.get("client_details")).get("user_agent")
    )
    return "website" if browser else "other"


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
