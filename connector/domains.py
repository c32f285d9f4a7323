"""Store identities: Shopify shop domains and WooCommerce store URLs, validated (pure)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit, urlunsplit

#: a DNS label is at most 63 characters
SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.myshopify\.com$")
#: what the database keeps of a store's identity
MAX_STORE_LENGTH = 255
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_shop_domain(shop: str) -> str:
    """``NAME.myshopify.com``, lower-cased; anything else raises ValueError (no SSRF)."""
    shop = shop.strip().lower()
    if not SHOP_DOMAIN.fullmatch(shop):
        raise ValueError(f"{shop!r} is not a NAME.myshopify.com shop domain")
    return shop


def normalize_store_url(url: str, *, require_https: bool = True) -> str:
    """A store's base URL: http(s), a public host name, no credentials, query or odd port."""
    url = url.strip()
    if len(url) > MAX_STORE_LENGTH or not url.isprintable():
        raise ValueError("the store URL is too long or holds control characters")
    parts = urlsplit(url)
    allowed = {"https"} if require_https else {"https", "http"}
    if parts.scheme.lower() not in allowed:
        raise ValueError("the store URL must start with https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the store URL must not carry credentials")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("the store URL has an invalid port") from exc
    default_port = 443 if parts.scheme.lower() == "https" else 80
    if port is not None and port != default_port:
        raise ValueError("the store URL must use the standard port")
    host = (parts.hostname or "").rstrip(".").lower()
    if not is_public_hostname(host):
        raise ValueError("the store URL must name a public host")
    if parts.query or parts.fragment:
        raise ValueError("the store URL must not have a query or fragment")
    path = parts.path.rstrip("/")
    if not unquote(path).isprintable():
        raise ValueError("the store URL's path holds control characters")
    return urlunsplit((parts.scheme.lower(), host, path, "", ""))


def is_public_hostname(host: str) -> bool:
    """A DNS name with a dot, not an IP literal and not a local-only name."""
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return False  # IP literals invite requests to internal services
    labels = host.split(".")
    if len(labels) < 2 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    return (
        labels[-1]
        not in {"localhost", "local", "internal", "localdomain", "test", "invalid"}
        and not labels[-1].isdigit()
    )


def normalize_local_store_url(url: str) -> str:
    """A store URL for development (``WOOCOMMERCE_ALLOW_INSECURE_URLS=1``): http, local hosts, any port.

    Still no credentials, query or fragment, and a host is required.

    Raises:
        ValueError: with a sentence a person can act on.
    """
    url = url.strip()
    if len(url) > MAX_STORE_LENGTH or not url.isprintable():
        raise ValueError("the store URL is too long or holds control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise ValueError("the store URL must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the store URL must not carry credentials")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError("the store URL has an invalid port") from exc
    if not parts.hostname:
        raise ValueError("the store URL must name a host")
    if parts.query or parts.fragment:
        raise ValueError("the store URL must not have a query or fragment")
    if not unquote(parts.path).isprintable():
        raise ValueError("the store URL's path holds control characters")
    return urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))
