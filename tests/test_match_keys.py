"""Both platforms hand raw values with their context to connector.matching, which owns every rule."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.shopify import adapter as shopify
from adapters.woocommerce.translate import translate as woo_translate
from connector.events import CanonicalEvent
from connector.matching import normalize, violations
from connector.platform import ConnectionInfo
from tests.conftest import fixture_bytes

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
WOO_NOW = datetime(2017, 3, 25, 12, 0, tzinfo=UTC)
WOO = ConnectionInfo(
    id="c1", platform="woocommerce", store="https://example.com", settings={}
)
SHOP = ConnectionInfo(
    id="c2", platform="shopify", store="jsmith.myshopify.com", settings={}
)
PROXY_ADDRESSES = ("127.0.0.1", "10.0.0.5", "172.17.0.1", "192.168.1.20", "::1")


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def woo_order(**changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        fixture_bytes("woocommerce/order-processing.json")
    )
    order.update(changes)
    return order


def woo_event(order: dict[str, Any]) -> CanonicalEvent:
    (event,) = woo_translate("order.updated", order, WOO, WOO_NOW).events
    return event


def shopify_order() -> dict[str, Any]:
    order: dict[str, Any] = json.loads(fixture_bytes("shopify/order_storefront.json"))
    return order


def shopify_event(order: dict[str, Any]) -> CanonicalEvent:
    (event,) = shopify.handle("orders/paid", order, SHOP, NOW).events
    return event


# -- the failing inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billing", "shipping", "expected"),
    [
        pytest.param(
            {"country": "DE", "phone": ""},
            {"country": "US", "phone": "(212) 555-0147"},
            "12125550147",
            id="billing-de-no-phone-shipping-us",
        ),
        pytest.param(
            {"country": "GB", "phone": ""},
            {"country": "FR", "phone": "06 12 34 56 78"},
            "33612345678",  # read with GB it was 44612345678
            id="billing-gb-shipping-fr",
        ),
        pytest.param(
            {"country": "FR", "phone": "06 12 34 56 78"},
            {"country": "GB", "phone": ""},
            "33612345678",
            id="billing-fr-shipping-gb",
        ),
    ],
)
def test_woocommerce_phone_is_read_in_its_address_country(
    billing: dict[str, str], shipping: dict[str, str], expected: str
) -> None:
    """A WooCommerce phone is read with the country of the address it came from."""
    order = woo_order()
    order["billing"] = {**order["billing"], **billing}
    order["shipping"] = {**order["shipping"], **shipping}
    assert (sha(expected),) == woo_event(order).user_data.ph


@pytest.mark.parametrize(
    ("billing", "shipping", "expected"),
    [
        pytest.param(
            ("DE", None),
            ("US", "(212) 555-0147"),
            "12125550147",
            id="billing-de-no-phone-shipping-us",
        ),
        pytest.param(
            ("GB", None),
            ("FR", "06 12 34 56 78"),
            "33612345678",
            id="billing-gb-shipping-fr",
        ),
    ],
)
def test_shopify_phone_is_read_in_its_address_country(
    billing: tuple[str, str | None], shipping: tuple[str, str], expected: str
) -> None:
    """The same rule on Shopify: each address's phone with that address's country_code."""
    order = shopify_order()
    order["phone"] = None
    order["customer"] = {**order["customer"], "phone": None, "default_address": None}
    order["billing_address"] = {
        **order["billing_address"],
        "country_code": billing[0],
        "phone": billing[1],
    }
    order["shipping_address"] = {
        **order["shipping_address"],
        "country_code": shipping[0],
        "phone": shipping[1],
    }
    assert (sha(expected),) == shopify_event(order).user_data.ph


@pytest.mark.parametrize("address", PROXY_ADDRESSES)
def test_woocommerce_proxy_address_is_never_sent(address: str) -> None:
    """A store behind a proxy records the proxy's address: it is omitted, never sent."""
    event = woo_event(woo_order(customer_ip_address=address))
    assert event.user_data.client_ip_address is None
    assert "client_ip_address" not in event.to_meta()["user_data"]


def test_woocommerce_public_address_is_sent() -> None:
    """A public shopper address goes to Meta as recorded."""
    event = woo_event(woo_order(customer_ip_address="168.212.226.204"))
    assert "168.212.226.204" == event.user_data.client_ip_address


@pytest.mark.parametrize("address", PROXY_ADDRESSES)
def test_shopify_proxy_address_is_never_sent(address: str) -> None:
    """The same rule on Shopify: browser_ip must be public; a public client_details one is taken instead."""
    order = shopify_order()
    order["browser_ip"] = address
    order["client_details"] = {
        **(order.get("client_details") or {}),
        "browser_ip": address,
    }
    assert shopify_event(order).user_data.client_ip_address is None
    order["client_details"]["browser_ip"] = "2a03:2880::1"
    assert "2a03:2880::1" == shopify_event(order).user_data.client_ip_address


# -- property: every emitted key keeps the core's rules ------------------------------------

COUNTRIES = ("US", "DE", "FR", "GB", "JP", "CA", "BR", "IT")


@st.composite
def phones(draw: st.DrawFn) -> str:
    """Real numbers of several countries in every format, and junk."""
    region = draw(st.sampled_from(COUNTRIES))
    number = phonenumbers.example_number_for_type(
        region, phonenumbers.PhoneNumberType.MOBILE
    )
    fmt = draw(
        st.sampled_from(
            [
                phonenumbers.PhoneNumberFormat.NATIONAL,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                phonenumbers.PhoneNumberFormat.E164,
            ]
        )
    )
    return draw(
        st.one_of(
            st.just(phonenumbers.format_number(number, fmt)),
            st.text(alphabet="0123456789 ()+-.", max_size=16),
        )
    )


texts = st.one_of(st.none(), st.text(max_size=12))
countries = st.one_of(st.none(), st.sampled_from(COUNTRIES), st.text(max_size=4))
ips = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
    st.sampled_from(PROXY_ADDRESSES),
    st.text(max_size=8),
)
emails = st.one_of(st.none(), st.emails(), st.text(max_size=12))
cookies = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.builds(
        lambda s, t, p: f"fb.{s}.{t}.{p}",
        st.integers(0, 2),
        st.integers(10**12, 2 * 10**12),
        st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
    ),
)


@st.composite
def addresses(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "first_name": draw(texts),
        "last_name": draw(texts),
        "city": draw(texts),
        "state": draw(texts),
        "postcode": draw(st.one_of(st.none(), st.text(max_size=10))),
        "country": draw(countries),
        "phone": draw(st.one_of(st.none(), phones())),
    }


def check_event(
    event: CanonicalEvent, sources: dict[str, list[tuple[str, Any]]]
) -> None:
    """No key breaks the core's rules, and every hash is the core's for a value the order had."""
    meta = event.user_data.to_meta()
    assert [] == violations(meta)
    for key, candidates in sources.items():
        allowed = set()
        for value, country in candidates:
            if value is None:
                continue
            for region in {country, *(c for _, c in sources["country"])}:
                normalized = normalize(
                    key, str(value), country=region if isinstance(region, str) else None
                )
                if normalized is not None:
                    allowed.add(sha(normalized))
        assert set(meta.get(key, [])) <= allowed, key
    ip = meta.get("client_ip_address")
    if ip is not None:
        assert ipaddress.ip_address(ip).is_global


def located_sources(
    places: list[dict[str, Any]], country_field: str, names: dict[str, str]
) -> dict[str, list[tuple[str, Any]]]:
    rv: dict[str, list[tuple[str, Any]]] = {"country": []}
    for place in places:
        rv["country"].append((place.get(country_field), place.get(country_field)))
        for key, field in names.items():
            rv.setdefault(key, []).append((place.get(field), place.get(country_field)))
    return rv


def _own_country_phone(event: CanonicalEvent, phone: Any, country: Any) -> None:
    """A national number on an address with a known country hashes in that country only."""
    if not (isinstance(phone, str) and country in COUNTRIES):
        return
    expected = normalize("ph", phone, country=country)
    if expected is not None:
        assert sha(expected) in event.user_data.ph


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    billing=addresses(),
    shipping=addresses(),
    email=emails,
    ip=ips,
    fbp=cookies,
    fbc=cookies,
)
def test_woocommerce_orders_keep_the_core_rules(
    billing: dict[str, Any],
    shipping: dict[str, Any],
    email: str | None,
    ip: str | None,
    fbp: str | None,
    fbc: str | None,
) -> None:
    """Whatever a WooCommerce order holds, every emitted key is one the core would emit."""
    order = woo_order(customer_ip_address=ip)
    order["billing"] = {**order["billing"], **billing, "email": email}
    order["shipping"] = {**order["shipping"], **shipping}
    order["meta_data"] = [{"key": "_fbp", "value": fbp}, {"key": "_fbc", "value": fbc}]
    event = woo_event(order)
    names = {
        "ph": "phone",
        "fn": "first_name",
        "ln": "last_name",
        "ct": "city",
        "st": "state",
        "zp": "postcode",
    }
    sources = located_sources([billing, shipping], "country", names)
    sources["em"] = [(email, None)]
    check_event(event, sources)
    for place in (billing, shipping):
        _own_country_phone(event, place["phone"], place["country"])


def shopify_address(place: dict[str, Any]) -> dict[str, Any]:
    return {
        "first_name": place["first_name"],
        "last_name": place["last_name"],
        "city": place["city"],
        "province_code": place["state"],
        "zip": place["postcode"],
        "country_code": place["country"],
        "phone": place["phone"],
    }


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    billing=addresses(),
    shipping=addresses(),
    email=emails,
    ip=ips,
    details_ip=ips,
)
def test_shopify_orders_keep_the_core_rules(
    billing: dict[str, Any],
    shipping: dict[str, Any],
    email: str | None,
    ip: str | None,
    details_ip: str | None,
) -> None:
    """Whatever a Shopify order holds, every emitted key is one the core would emit."""
    order = copy.deepcopy(shopify_order())
    order.update(
        email=email,
        contact_email=None,
        phone=None,
        browser_ip=ip,
        billing_address=shopify_address(billing),
        shipping_address=shopify_address(shipping),
        client_details={
            **(order.get("client_details") or {}),
            "browser_ip": details_ip,
        },
    )
    order["customer"] = {
        **order["customer"],
        "email": None,
        "phone": None,
        "first_name": None,
        "last_name": None,
        "default_address": None,
    }
    event = shopify_event(order)
    names = {
        "ph": "phone",
        "fn": "first_name",
        "ln": "last_name",
        "ct": "city",
        "st": "state",
        "zp": "postcode",
    }
    sources = located_sources([billing, shipping], "country", names)
    sources["em"] = [(email, None)]
    check_event(event, sources)
    for place in (billing, shipping):
        _own_country_phone(event, place["phone"], place["country"])
