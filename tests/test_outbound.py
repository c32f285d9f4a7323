"""Store requests reach only public addresses, checked on the address actually connected to."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.woocommerce.rest import WooCommerceClient
from connector.errors import PlatformError
from connector.outbound import (
    AddressPolicy,
    UnresolvableHostError,
    UnsafeAddressError,
    is_public_address,
    shopify_policy,
    store_session,
    system_resolver,
    woocommerce_policy,
)
from tests.sockets import counting_listener, watch_connects

STRICT = AddressPolicy()
DEV = AddressPolicy(allow_loopback=True)
#: what a page or a log line must never show of a refused connection
LOW_LEVEL = ("Errno", "refused", "HTTPConnectionPool", "Max retries", "NewConnection")


def resolving(mapping: dict[str, Sequence[str]]) -> Callable[[str, int], list[str]]:
    """A resolver answering from ``mapping``; any other name does not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise UnresolvableHostError(host)
        return list(mapping[host])

    return resolve


@pytest.mark.parametrize(
    ("address", "public"),
    [
        pytest.param("8.8.8.8", True, id="public-v4"),
        pytest.param("2606:4700:4700::1111", True, id="public-v6"),
        pytest.param("2002:808:808::1", True, id="6to4-of-public"),
        pytest.param("127.0.0.1", False, id="loopback"),
        pytest.param("127.8.9.10", False, id="loopback-range"),
        pytest.param("10.0.0.5", False, id="private-10"),
        pytest.param("172.16.3.4", False, id="private-172"),
        pytest.param("192.168.1.1", False, id="private-192"),
        pytest.param("169.254.169.254", False, id="cloud-metadata"),
        pytest.param("100.64.0.1", False, id="carrier-grade-nat"),
        pytest.param("0.0.0.0", False, id="unspecified"),  # noqa: S104 - a value, not a bind
        pytest.param("198.18.0.1", False, id="benchmarking"),
        pytest.param("240.0.0.1", False, id="reserved"),
        pytest.param("224.0.1.1", False, id="multicast"),
        pytest.param("255.255.255.255", False, id="broadcast"),
        pytest.param("::1", False, id="loopback-v6"),
        pytest.param("::", False, id="unspecified-v6"),
        pytest.param("fc00::1", False, id="unique-local"),
        pytest.param("fe80::1", False, id="link-local-v6"),
        pytest.param("ff02::1", False, id="multicast-v6"),
        pytest.param("::ffff:127.0.0.1", False, id="mapped-loopback"),
        pytest.param("::ffff:10.0.0.5", False, id="mapped-private"),
        pytest.param("2002:a00:5::", False, id="6to4-of-private"),
        pytest.param("64:ff9b::a9fe:a9fe", False, id="nat64-of-metadata"),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    """The IANA special-purpose ranges are refused, embedded IPv4 judged by what it leads to."""
    assert public == is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "::ffff:127.0.0.1"]
)
def test_a_name_resolving_to_an_internal_address_opens_no_connection(
    address: str,
) -> None:
    """victim.example -> an internal address: refused before any socket connects, readably."""
    with counting_listener() as listener, watch_connects() as connects:
        http = store_session(STRICT, resolving({"victim.example": [address]}))
        with pytest.raises(UnsafeAddressError) as info:
            http.get(f"http://victim.example:{listener.port}/wp-json/", timeout=5)
    assert 0 == listener.accepted
    assert [] == connects
    message = str(info.value)
    assert "victim.example does not lead to a public internet address" in message
    assert address not in message
    assert not any(word in message for word in LOW_LEVEL)


def test_one_internal_address_among_public_ones_refuses_the_name() -> None:
    """A name answering a public and a private address is refused whole."""
    with watch_connects() as connects:
        http = store_session(
            STRICT, resolving({"mixed.example": ["8.8.8.8", "10.0.0.5"]})
        )
        with pytest.raises(UnsafeAddressError):
            http.get("https://mixed.example/", timeout=5)
    assert [] == connects


def test_the_development_switch_admits_loopback_and_keeps_the_host_header() -> None:
    """Under the development policy a loopback store answers, asked by its name."""
    with counting_listener() as listener:
        http = store_session(DEV, resolving({"shop.example": ["127.0.0.1"]}))
        rv = http.get(f"http://shop.example:{listener.port}/wp-json/", timeout=5)
    assert 200 == rv.status_code
    assert 1 == listener.accepted
    assert f"Host: shop.example:{listener.port}\r\n".encode() in listener.requests[0]


@pytest.mark.parametrize("address", ["10.0.0.5", "169.254.169.254", "192.168.0.10"])
def test_the_development_switch_admits_loopback_only(address: str) -> None:
    """Private and link-local addresses stay refused even in development."""
    with watch_connects() as connects:
        http = store_session(DEV, resolving({"shop.example": [address]}))
        with pytest.raises(UnsafeAddressError):
            http.get("http://shop.example/", timeout=5)
    assert [] == connects


def test_dns_rebinding_between_two_connections_is_refused_on_the_second() -> None:
    """First resolution allowed, second internal: the second connection is never opened."""
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])
    seen: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        rv = next(answers)
        seen.extend(rv)
        return rv

    with counting_listener() as listener, watch_connects() as connects:
        http = store_session(DEV, rebinding)
        url = f"http://rebind.example:{listener.port}/"
        assert 200 == http.get(url, timeout=5).status_code
        with pytest.raises(UnsafeAddressError):
            http.get(url, timeout=5)  # the listener closed the first connection
    assert ["127.0.0.1", "10.0.0.5"] == seen
    assert 1 == listener.accepted
    assert [("127.0.0.1", listener.port)] == connects


def test_a_redirect_is_followed_only_through_the_same_check() -> None:
    """A store redirecting to an internal name: the redirect's connection is refused."""
    with counting_listener() as target:
        moved = (
            f"HTTP/1.1 302 Found\r\nLocation: http://internal.example:{target.port}/\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
        with counting_listener(moved) as store:
            http = store_session(
                DEV,
                resolving(
                    {"shop.example": ["127.0.0.1"], "internal.example": ["10.0.0.5"]}
                ),
            )
            with pytest.raises(UnsafeAddressError):
                http.get(f"http://shop.example:{store.port}/", timeout=5)
        assert 1 == store.accepted
        assert 0 == target.accepted


def test_a_proxy_from_the_environment_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY would pick the address itself: store sessions ignore it."""
    with counting_listener() as store, counting_listener() as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        http = store_session(DEV, resolving({"shop.example": ["127.0.0.1"]}))
        assert (
            200 == http.get(f"http://shop.example:{store.port}/", timeout=5).status_code
        )
    assert (1, 0) == (store.accepted, proxy.accepted)


def test_a_name_that_does_not_resolve_is_a_readable_refusal() -> None:
    """``.invalid`` never resolves (RFC 6761): the merchant reads that, not a socket error."""
    with pytest.raises(UnresolvableHostError) as info:
        system_resolver("connector-test.invalid", 443)
    assert "connector-test.invalid cannot be found" in str(info.value)


def test_the_woocommerce_client_refuses_an_internal_store_readably() -> None:
    """The REST client's error for an internal store is the merchant's sentence."""
    client = WooCommerceClient(
        "https://victim.example",
        "ck_x",
        "cs_x",
        resolver=resolving({"victim.example": ["169.254.169.254"]}),
    )
    with watch_connects() as connects, pytest.raises(PlatformError) as info:
        client.list_webhooks()
    assert [] == connects
    assert "public internet address" in str(info.value)


def test_an_unreachable_store_is_described_without_the_socket_error() -> None:
    """A connection refused by the store reads as 'cannot be reached', nothing lower."""
    with counting_listener() as listener:
        port = listener.port
    client = WooCommerceClient(
        f"http://shop.example:{port}",
        "ck_x",
        "cs_x",
        policy=DEV,
        resolver=resolving({"shop.example": ["127.0.0.1"]}),
    )
    with pytest.raises(PlatformError) as info:
        client.list_webhooks()
    message = str(info.value)
    assert "cannot be reached" in message
    assert not any(word in message for word in LOW_LEVEL)


@pytest.mark.parametrize(
    ("template", "env", "allow_insecure", "shop_loopback", "woo_loopback"),
    [
        pytest.param("https://{shop}", "production", False, False, False, id="prod"),
        pytest.param("https://{shop}", "test", True, False, True, id="shop-host-dev"),
        pytest.param(
            "http://127.0.0.1:9/{shop}",
            "test",
            False,
            True,
            False,
            id="fixed-host-test",
        ),
        pytest.param(
            "http://127.0.0.1:9/{shop}",
            "production",
            False,
            False,
            False,
            id="fixed-host-prod",
        ),
    ],
)
def test_which_settings_admit_loopback(
    make_settings: Callable[..., object],
    template: str,
    env: str,
    allow_insecure: bool,
    shop_loopback: bool,
    woo_loopback: bool,
) -> None:
    """Loopback: WooCommerce under the development switch; Shopify only for an operator's fixed host outside production."""
    settings = make_settings(
        env=env,
        shopify_admin_url_template=template,
        woocommerce_allow_insecure=allow_insecure,
    )
    assert shop_loopback == shopify_policy(settings).allow_loopback  # type: ignore[arg-type]
    assert woo_loopback == woocommerce_policy(settings).allow_loopback  # type: ignore[arg-type]


# -- TLS keeps the name ------------------------------------------------------------------


def _certificates(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for ``name``: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[tuple[int, list[str | None]]]:
    """A one-answer-per-connection HTTPS server on loopback; yields its port and the SNI names seen."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve() -> None:
        while True:
            try:
                raw, _ = sock.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(4096)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
            except (OSError, ssl.SSLError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], names
    finally:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("cert_name", "ok"),
    [
        pytest.param("victim.example", True, id="certificate-for-the-name"),
        pytest.param("other.example", False, id="certificate-for-another-name"),
    ],
)
def test_https_to_the_checked_address_verifies_the_name(
    tmp_path: Path, cert_name: str, ok: bool
) -> None:
    """Connected to the checked IP, TLS still sends the name (SNI) and verifies the certificate for it."""
    ca, cert, key = _certificates(tmp_path, cert_name)
    with tls_server(cert, key) as (port, names):
        http = store_session(DEV, resolving({"victim.example": ["127.0.0.1"]}))
        url = f"https://victim.example:{port}/"
        if ok:
            assert "ok" == http.get(url, timeout=5, verify=str(ca)).text
        else:
            with pytest.raises(requests.exceptions.SSLError):
                http.get(url, timeout=5, verify=str(ca))
    assert names
    assert {"victim.example"} == set(names)
