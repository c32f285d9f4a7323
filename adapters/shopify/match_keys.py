"""Every customer identifier a Shopify order or checkout offers, raw, in Meta's keys (pure).

``connector.matching`` normalizes and hashes what this gathers. Sources, in order (the
first country is the default region for phone numbers, so billing comes first):

| Meta key            | Shopify fields                                                        |
|---------------------|-----------------------------------------------------------------------|
| ``em``              | ``email``, ``contact_email``, ``customer.email``                      |
| ``ph``              | ``phone``, ``customer.phone``, ``sms_marketing_phone``, billing,      |
|                     | shipping and the customer's default address ``phone`` (each read with |
|                     | its own address's ``country_code`` as the region)                     |
| ``fn`` / ``ln``     | billing, shipping, ``customer`` and default address first/last names |
| ``ct``/``st``/``zp``| ``city``, ``province_code``, ``zip`` of those addresses               |
| ``country``         | ``country_code`` of those addresses                                   |
| ``external_id``     | ``customer.id``                                                       |
| ``client_ip_address``| ``browser_ip``, ``client_details.browser_ip`` (the shopper's, never  |
|                     | the webhook sender's); only a public address counts                   |
| ``client_user_agent``| ``client_details.user_agent``                                        |
| ``fbc``             | an ``_fbc`` note/cart attribute as it is, else built from an          |
|                     | ``fbclid`` in ``landing_site``                                        |
| ``fbp``             | an ``_fbp`` note/cart attribute                                       |

Without Shopify's protected-customer-data approval names, emails, phones and addresses
arrive as null or are left out: whatever remains still makes the best event it can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from adapters.shopify.fields import attribute, mapping, text
from adapters.shopify.topics import shopify_id
from connector.matching import build_fbc, fbclid_from_url, normalize


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
        "st": _unique(*(a.get("province_code") for a in addresses)),
        "zp": _unique(*(a.get("zip") for a in addresses)),
        "country": _unique(*(a.get("country_code") for a in addresses)),
    }
    customer_id = shopify_id(customer.get("id"))
    if customer_id:
        raw["external_id"] = [customer_id]
    details = mapping(resource.get("client_details"))
    ip = _public_ip(resource.get("browser_ip")) or _public_ip(details.get("browser_ip"))
    if ip:
        raw["client_ip_address"] = ip
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


def _phones(resource: Mapping[str, Any]) -> list[str]:
    customer = mapping(resource.get("customer"))
    return _unique(
        resource.get("phone"),
        customer.get("phone"),
        resource.get("sms_marketing_phone"),
        _address_phone(resource.get("billing_address")),
        _address_phone(resource.get("shipping_address")),
        _address_phone(customer.get("default_address")),
    )


def _address_phone(value: Any) -> str | None:
    """An address's phone, read with that address's country as its region.

    An order may bill to one country and ship to another; a national number on the
    shipping address belongs to the shipping country. Left to ``connector.matching``
    alone, it would be read with the first country of the order, and a US number would
    pass as a valid German one. The number goes on in international form (``+`` and
    Meta's digits), which reads the same whatever the default region.
    """
    address = mapping(value)
    phone = text(address.get("phone"))
    country = text(address.get("country_code"))
    if phone is None or country is None:
        return phone
    normalized = normalize("ph", phone, country=country)
    if normalized is not None and normalized.isascii() and normalized.isdigit():
        return f"+{normalized}"
    return phone


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


def _public_ip(value: Any) -> str | None:
    raw = text(value)
    if raw is None:
        return None
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    # 0.0.0.0, private and loopback addresses are placeholders or proxies, not a shopper.
    return str(address) if address.is_global else None
