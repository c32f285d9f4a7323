"""Every customer identifier a Shopify order or checkout offers, raw, in Meta's keys (pure).

``connector.matching`` owns every rule of validity, normalization and hashing; this module
only gathers raw values with their context. Sources, in order (billing first):

| Meta key            | Shopify fields                                                        |
|---------------------|-----------------------------------------------------------------------|
| ``em``              | ``email``, ``contact_email``, ``customer.email``                      |
| ``ph``              | ``phone``, ``customer.phone``, ``sms_marketing_phone``, billing,      |
|                     | shipping and the customer's default address ``phone`` (each handed on |
|                     | with its own address's ``country_code``)                              |
| ``fn`` / ``ln``     | billing, shipping, ``customer`` and default address first/last names |
| ``ct``/``st``/``zp``| ``city``, ``province_code``, ``zip`` of those addresses (``st`` and   |
|                     | ``zp`` with their address's ``country_code``)                         |
| ``country``         | ``country_code`` of those addresses                                   |
| ``external_id``     | ``customer.id``                                                       |
| ``client_ip_address``| ``browser_ip``, ``client_details.browser_ip`` (the shopper's, never  |
|                     | the webhook sender's); the core keeps only a public address           |
| ``client_user_agent``| ``client_details.user_agent``                                        |
| ``fbc``             | an ``_fbc`` note/cart attribute as it is, else built from an          |
|                     | ``fbclid`` in ``landing_site``                                        |
| ``fbp``             | an ``_fbp`` note/cart attribute                                       |

Without Shopify's protected-customer-data approval names, emails, phones and addresses
arrive as null or are left out: whatever remains still makes the best event it can.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from adapters.shopify.fields import attribute, mapping, text
from adapters.shopify.topics import shopify_id
from connector.matching import FromAddress, build_fbc, fbclid_from_url


def raw_match_keys(resource: Mapping[str, Any], created_at: datetime) -> dict[str, Any]:
    """Meta's user_data keys mapped to the raw values found in ``resource``."""
    customer = mapping(resource.get("customer"))
    addresses = [
        mapping(resource.get("billing_address")),
        mapping(resource.get("shipping_address")),
        mapping(customer.get("default_address")),
    ]
    people = [*addresses[:2], customer, addresses[2]]
    raw: dict[str, Any] = {
        "em": _emails(resource),
        "ph": _phones(resource),
        "fn": _unique(*(p.get("first_name") for p in people)),
        "ln": _unique(*(p.get("last_name") for p in people)),
        "ct": _unique(*(a.get("city") for a in addresses)),
        "st": _located(addresses, "province_code"),
        "zp": _located(addresses, "zip"),
        "country": _unique(*(a.get("country_code") for a in addresses)),
    }
    customer_id = shopify_id(customer.get("id"))
    if customer_id:
        raw["external_id"] = [customer_id]
    details = mapping(resource.get("client_details"))
    ips = _unique(resource.get("browser_ip"), details.get("browser_ip"))
    if ips:
        raw["client_ip_address"] = ips
    agent = text(details.get("user_agent"))
    if agent:
        raw["client_user_agent"] = agent
    fbc = attribute(resource, "_fbc")
    if fbc is None:
        landing = text(resource.get("landing_site"))
        fbclid = fbclid_from_url(landing) if landing else None
        if fbclid:
            fbc = build_fbc(fbclid, created_at)
    if fbc:
        raw["fbc"] = fbc
    fbp = attribute(resource, "_fbp")
    if fbp:
        raw["fbp"] = fbp
    return {key: value for key, value in raw.items() if value}


def has_email_or_phone(resource: Mapping[str, Any]) -> bool:
    """True once a checkout carries a way to reach the shopper."""
    return bool(_emails(resource) or _phones(resource))


def _emails(resource: Mapping[str, Any]) -> list[str]:
    customer = mapping(resource.get("customer"))
    return _unique(
        resource.get("email"), resource.get("contact_email"), customer.get("email")
    )


def _phones(resource: Mapping[str, Any]) -> list[str | FromAddress]:
    customer = mapping(resource.get("customer"))
    addresses = [
        mapping(resource.get("billing_address")),
        mapping(resource.get("shipping_address")),
        mapping(customer.get("default_address")),
    ]
    located = _located(addresses, "phone")
    # The same number on an address is handed on with that address's country instead.
    on_addresses = {p.value for p in located}
    own: list[str | FromAddress] = [
        p
        for p in _unique(
            resource.get("phone"),
            customer.get("phone"),
            resource.get("sms_marketing_phone"),
        )
        if p not in on_addresses
    ]
    return own + list(located)


def _located(addresses: Iterable[Mapping[str, Any]], field: str) -> list[FromAddress]:
    """Each address's ``field`` with the address's own country, distinct, in order."""
    rv: list[FromAddress] = []
    for address in addresses:
        value = text(address.get(field))
        if value is None:
            continue
        located = FromAddress(value, text(address.get("country_code")))
        if located not in rv:
            rv.append(located)
    return rv


def _unique(*values: Any) -> list[str]:
    rv: list[str] = []
    for value in _texts(values):
        if value not in rv:
            rv.append(value)
    return rv


def _texts(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        found = text(value)
        if found is not None:
            yield found
