"""Shopify's webhook topics, and what the lifecycle and compliance topics ask for (pure).

| topic                     | what the connector does                                      |
|---------------------------|--------------------------------------------------------------|
| ``orders/create``         | a Purchase, when the order is paid (or per ``purchase_on``)  |
| ``orders/paid``           | a Purchase                                                   |
| ``checkouts/create``      | an InitiateCheckout                                          |
| ``checkouts/update``      | an InitiateCheckout once the checkout has an email or phone  |
| ``app/uninstalled``       | Uninstalled: forget the shop's token, stop sending           |
| ``app/scopes_update``     | ScopesUpdated: record the scopes the shop now grants         |
| ``customers/data_request``| DataRequest: report what is held for the customer            |
| ``customers/redact``      | RedactCustomer: delete the customer's events and receipts    |
| ``shop/redact``           | RedactStore: delete everything held for the shop             |
| anything else             | acknowledged, nothing stored but the receipt                 |

The compliance payloads are the ones Shopify documents on its privacy-law-compliance
page: ``{"shop_id", "shop_domain", "customer": {"id", "email", "phone"},
"orders_to_redact" | "orders_requested", "data_request": {"id"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from connector.errors import PayloadError
from connector.platform import (
    DataRequest,
    Outcome,
    RedactCustomer,
    RedactStore,
    ScopesUpdated,
    Uninstalled,
)

ORDERS_CREATE: Final = "orders/create"
ORDERS_PAID: Final = "orders/paid"
CHECKOUTS_CREATE: Final = "checkouts/create"
CHECKOUTS_UPDATE: Final = "checkouts/update"
APP_UNINSTALLED: Final = "app/uninstalled"
APP_SCOPES_UPDATE: Final = "app/scopes_update"
CUSTOMERS_DATA_REQUEST: Final = "customers/data_request"
CUSTOMERS_REDACT: Final = "customers/redact"
SHOP_REDACT: Final = "shop/redact"

ORDER_TOPICS: Final = frozenset({ORDERS_CREATE, ORDERS_PAID})
CHECKOUT_TOPICS: Final = frozenset({CHECKOUTS_CREATE, CHECKOUTS_UPDATE})
COMPLIANCE_TOPICS: Final = frozenset(
    {CUSTOMERS_DATA_REQUEST, CUSTOMERS_REDACT, SHOP_REDACT}
)
#: topics that must be honoured even for a shop that has uninstalled the app
#: (shop/redact arrives 48 hours after the uninstall)
LIFECYCLE_TOPICS: Final = frozenset({APP_UNINSTALLED, *COMPLIANCE_TOPICS})

#: Shopify ids are 64-bit integers
_MAX_ID = 2**63 - 1


def shopify_id(value: Any) -> str | None:
    """A Shopify numeric id as an exact decimal string, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if 0 < value <= _MAX_ID else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
        return str(number) if 0 < number <= _MAX_ID else None
    return None


def handle_lifecycle(topic: str, payload: Any) -> Outcome:
    """The action an uninstall or compliance delivery asks for.

    Raises:
        PayloadError: a compliance payload that is not a JSON object.
    """
    if topic == APP_UNINSTALLED:
        return Outcome(action=Uninstalled())
    if not isinstance(payload, Mapping):
        raise PayloadError(f"a {topic} payload must be a JSON object")
    if topic == SHOP_REDACT:
        return Outcome(action=RedactStore())
    customer = payload.get("customer")
    customer_ref = (
        shopify_id(customer.get("id")) if isinstance(customer, Mapping) else None
    )
    if topic == CUSTOMERS_REDACT:
        orders = _ids(payload.get("orders_to_redact"))
        return Outcome(
            action=RedactCustomer(customer_ref=customer_ref, order_refs=orders),
            # No customer_ref on this receipt: the redaction would delete its own record,
            # and a redelivery would no longer be recognised as one.
            skipped=None if customer_ref or orders else "names no customer or order",
        )
    if topic == CUSTOMERS_DATA_REQUEST:
        request = payload.get("data_request")
        request_ref = (
            shopify_id(request.get("id")) if isinstance(request, Mapping) else None
        )
        return Outcome(
            action=DataRequest(
                customer_ref=customer_ref,
                order_refs=_ids(payload.get("orders_requested")),
                request_ref=request_ref,
            ),
            customer_ref=customer_ref,
        )
    raise ValueError(f"{topic} is not a lifecycle topic")


def scopes_update(payload: Any) -> Outcome:
    """``app/scopes_update``: ``{"previous": [...], "current": [...]}``, the scopes now granted.

    Raises:
        PayloadError: the payload is not an object with a ``current`` list of scopes.
    """
    current = payload.get("current") if isinstance(payload, Mapping) else None
    if not isinstance(current, list) or not all(isinstance(s, str) for s in current):
        raise PayloadError(
            "an app/scopes_update payload carries a current list of scopes"
        )
    return Outcome(
        action=ScopesUpdated(scopes=tuple(dict.fromkeys(s.strip() for s in current)))
    )


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    rv: list[str] = []
    for item in value:
        ref = shopify_id(item)
        if ref is not None and ref not in rv:
            rv.append(ref)
    return tuple(rv)
