"""Every customer identifier a WooCommerce order offers, raw, in Meta's keys (pure).

``connector.matching`` owns every rule of validity, normalization and hashing; this module
only gathers raw values with their context:

| Meta key             | WooCommerce order fields                                             |
|----------------------|----------------------------------------------------------------------|
| ``em``               | ``billing.email``                                                    |
| ``ph``               | ``billing.phone``, ``shipping.phone``, each with its address's       |
|                      | ``country`` (a shipping phone is read in the shipping country)       |
| ``fn`` / ``ln``      | ``first_name`` / ``last_name`` of billing, then shipping             |
| ``ct``               | ``city`` of billing, then shipping                                   |
| ``st`` / ``zp``      | ``state`` / ``postcode``, each with its address's ``country``        |
| ``country``          | ``country`` of billing, then shipping                                |
| ``external_id``      | ``customer_id`` when the shopper has an account (> 0)                |
| ``client_ip_address``| ``customer_ip_address`` as the store recorded it; the core keeps it  |
|                      | only when public (behind a proxy the store records the proxy's)      |
| ``client_user_agent``| ``customer_user_agent``, else ``_wc_order_attribution_user_agent``   |
| ``fbp``              | the ``_fbp`` order meta value                                        |
| ``fbc``              | the ``_fbc`` order meta value as it is, else built from an ``fbclid``|
|                      | in ``_wc_order_attribution_session_entry``                           |

Order fields: https://woocommerce.github.io/woocommerce-rest-api-docs/#order-properties
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from adapters.woocommerce.fields import as_gmt as _gmt
from adapters.woocommerce.fields import as_int as _int
from adapters.woocommerce.fields import as_mapping as _mapping
from adapters.woocommerce.fields import as_str as _str
from adapters.woocommerce.fields import meta_value as _meta_value
from connector.matching import FromAddress, build_fbc, fbclid_from_url


def raw_user_data(order: Mapping[str, Any], event_time: datetime) -> dict[str, Any]:
    """The order's customer information under Meta's keys, raw, with each address's country.

    ``order`` is a wc/v3-shaped order; ``event_time`` (aware) bounds a built ``fbc``'s click
    time. The result goes to ``connector.matching.user_data``.
    """
    billing = _mapping(order.get("billing"))
    shipping = _mapping(order.get("shipping"))
    addresses = (billing, shipping)

    def both(key: str) -> list[str]:
        return list(dict.fromkeys(v for a in addresses if (v := _str(a.get(key)))))

    def located(key: str) -> list[FromAddress]:
        rv: list[FromAddress] = []
        for address in addresses:
            value = _str(address.get(key))
            if value is not None:
                item = FromAddress(value, _str(address.get("country")))
                if item not in rv:
                    rv.append(item)
        return rv

    raw: dict[str, Any] = {
        "em": both("email")[:1],
        "ph": located("phone"),
        "fn": both("first_name"),
        "ln": both("last_name"),
        "ct": both("city"),
        "st": located("state"),
        "zp": located("postcode"),
        "country": both("country"),
    }
    customer_id = _int(order.get("customer_id"))
    if customer_id and customer_id > 0:
        raw["external_id"] = [str(customer_id)]
    ip = _str(order.get("customer_ip_address"))
    agent = _str(order.get("customer_user_agent")) or _str(
        _meta_value(order, "_wc_order_attribution_user_agent")
    )
    fbp = _str(_meta_value(order, "_fbp"))
    fbc = _str(_meta_value(order, "_fbc")) or _fbc_from_attribution(order, event_time)
    for key, value in (
        ("client_ip_address", ip),
        ("client_user_agent", agent),
        ("fbp", fbp),
        ("fbc", fbc),
    ):
        if value:
            raw[key] = value
    return {k: v for k, v in raw.items() if v}


def _fbc_from_attribution(order: Mapping[str, Any], event_time: datetime) -> str | None:
    # WooCommerce's order attribution records the landing page; an ad click leaves its fbclid there.
    entry = _str(_meta_value(order, "_wc_order_attribution_session_entry"))
    if entry is None:
        return None
    fbclid = fbclid_from_url(entry)
    if not fbclid:
        return None
    clicked = (
        _gmt(_meta_value(order, "_wc_order_attribution_session_start_time"))
        or _gmt(order.get("date_created_gmt"))
        or event_time
    )
    return build_fbc(fbclid, min(clicked, event_time))


# -- lenient readers (translate has its own; importing them from there would be circular) --
