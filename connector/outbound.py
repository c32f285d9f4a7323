"""Outgoing requests to stores: only to public addresses, checked on the address connected to.

A store's address comes from a merchant (a WooCommerce store URL) or from a shop's name
(``{shop}`` in ``SHOPIFY_ADMIN_URL_TEMPLATE``). A name can resolve to anything, ``127.0.0.1``,
``10.0.0.5``, the cloud metadata service ``169.254.169.254`` or ``::1`` (public wildcard DNS
services hand such names out), and it can resolve differently between a check and the
connection (DNS rebinding). So the check lives in the connection itself: every new socket
resolves the name once, refuses unless every address is public (global unicast), and then
connects to an address it checked. TLS keeps the name: urllib3 wraps the socket with the
host name for SNI and certificate verification, and the ``Host`` header is unchanged. A
redirect, when followed, opens its connection through the same check.

This is the approach of advocate (a requests adapter that validates the address it
connects to) and of Baseplate's outbound-request guard, reduced to what the connector needs.

What "public" means: :meth:`ipaddress.IPv4Address.is_global` (the IANA special-purpose
registries: private, loopback, link-local, shared 100.64/10, benchmarking, reserved...),
and not multicast; an IPv6 address that embeds an IPv4 one (mapped ``::ffff:a.b.c.d``,
6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) is judged by the IPv4 address it leads to.
``allow_loopback`` (development only, see :func:`store_policy`) admits loopback addresses
and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from connector.config import Settings
from connector.errors import PlatformError

#: ``(host, port) -> addresses``; tests inject one that maps names to chosen addresses
Resolver = Callable[[str, int], Sequence[str]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeAddressError(PlatformError):
    """The store's address does not lead to the public internet; nothing was sent."""

    http_status = 400

    def __init__(self, host: str) -> None:
        super().__init__(
            f"{host} does not lead to a public internet address, so the connector will not "
            "connect to it; check the store's address (it must be the address shoppers use)"
        )
        self.host = host


class UnresolvableHostError(PlatformError):
    """The store's name does not resolve; nothing was sent."""

    http_status = 400

    def __init__(self, host: str) -> None:
        super().__init__(
            f"{host} cannot be found on the internet (its name does not resolve); "
            "check the store's address"
        )
        self.host = host


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for ``host`` (A and AAAA records).

    Raises:
        UnresolvableHostError: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHostError(host) from exc
    return [str(info[4][0]) for info in infos]


def is_public_address(address: Address) -> bool:
    """True for a global unicast address (IANA special-purpose registries), embedded IPv4 judged."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, kw_only=True)
class AddressPolicy:
    """Which addresses a store request may connect to."""

    #: development only: a store (or fake) on this machine
    allow_loopback: bool = False

    def permits(self, address: Address) -> bool:
        """True when a store request may connect to ``address``."""
        if is_public_address(address):
            return True
        return self.allow_loopback and _loopback(address)


def _loopback(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def checked_addresses(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver
) -> list[str]:
    """The addresses to connect to for ``host``: all of them permitted, or an error.

    One address that is not permitted refuses the name: a name answering both a public and
    a private address would otherwise reach the private one whenever the public one fails.

    Raises:
        UnresolvableHostError: the name gives no address.
        UnsafeAddressError: an address is not public (and not admitted by ``policy``).
    """
    host = host.strip("[]")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    raw = [host] if literal is not None else list(resolver(host, port))
    if not raw:
        raise UnresolvableHostError(host)
    addresses: list[str] = []
    for value in raw:
        try:
            # a scope id ("fe80::1%eth0") is link-local anyway: judge the address alone
            address = ipaddress.ip_address(value.split("%", 1)[0])
        except ValueError as exc:
            raise UnsafeAddressError(host) from exc
        if not policy.permits(address):
            raise UnsafeAddressError(host)
        addresses.append(str(address))
    return addresses


def check_url(
    url: str, policy: AddressPolicy, resolver: Resolver | None = None
) -> None:
    """Refuse early a URL whose host does not lead to permitted addresses (a form's feedback).

    Only advice: the address is checked again on every connection, since a name can
    resolve differently by then.

    Raises:
        UnresolvableHostError, UnsafeAddressError: as :func:`checked_addresses`.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    checked_addresses(parts.hostname or "", port, policy, resolver or system_resolver)


class _PinnedConnection(HTTPConnection):
    """Resolves, checks, then connects to a checked address; everything else is urllib3's."""

    policy: ClassVar[AddressPolicy] = AddressPolicy()
    resolver: ClassVar[Resolver] = staticmethod(system_resolver)

    def _new_conn(self) -> socket.socket:
        port = int(self.port or 0)
        addresses = checked_addresses(
            self._dns_host, port, type(self).policy, type(self).resolver
        )
        last: OSError | None = None
        for address in addresses:
            try:
                # an IP literal: no second lookup happens, so no rebinding between check and use
                return urllib3_connection.create_connection(
                    (address, port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                last = exc
                if address == addresses[-1]:
                    raise ConnectTimeoutError(
                        self, f"Connection to {self.host} timed out"
                    ) from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(
            self, f"Failed to establish a new connection: {last}"
        ) from last


class _PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    """HTTPS over a checked address: SNI and certificate checks use the host name."""


class PinnedAdapter(HTTPAdapter):
    """A requests transport adapter whose every connection goes through the address check."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        **kwargs: Any,
    ) -> None:
        http_conn = type(
            "StoreHTTPConnection",
            (_PinnedConnection,),
            {"policy": policy, "resolver": staticmethod(resolver)},
        )
        https_conn = type(
            "StoreHTTPSConnection",
            (_PinnedHTTPSConnection,),
            {"policy": policy, "resolver": staticmethod(resolver)},
        )
        self._pools: dict[str, type[HTTPConnectionPool]] = {
            "http": type(
                "StoreHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}
            ),
            "https": type(
                "StoreHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        manager: PoolManager = self.poolmanager
        manager.pool_classes_by_scheme = dict(self._pools)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a proxy the proxy would pick the address: nothing here could check it.
        raise UnsafeAddressError(urlsplit(proxy).hostname or "the proxy")


def store_session(
    policy: AddressPolicy, resolver: Resolver | None = None
) -> requests.Session:
    """A requests Session for one store client: every connection checked, no proxy from the environment."""
    http = requests.Session()
    http.trust_env = False  # HTTPS_PROXY would route around the check
    adapter = PinnedAdapter(policy, resolver or system_resolver)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def woocommerce_policy(settings: Settings) -> AddressPolicy:
    """WooCommerce stores: public addresses; loopback too under ``WOOCOMMERCE_ALLOW_INSECURE_URLS``.

    That switch is refused in production (``Settings.from_env``), so production never
    admits loopback.
    """
    return AddressPolicy(allow_loopback=settings.woocommerce_allow_insecure)


def shopify_policy(settings: Settings) -> AddressPolicy:
    """Shopify Admin hosts: public addresses.

    A ``SHOPIFY_ADMIN_URL_TEMPLATE`` whose host the operator fixed (``{shop}`` only in the
    path, as a local fake uses) may be loopback outside production; a host derived from
    the shop's name is always checked as public.
    """
    host = urlsplit(settings.shopify_admin_url_template).netloc
    fixed_host = "{shop}" not in host
    return AddressPolicy(allow_loopback=fixed_host and not settings.is_production)
