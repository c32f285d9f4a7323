"""Requests from the internet that once reached a 500: each now gets a clear 4xx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Base
from connector.web import create_app
from tests.fakes.woocommerce import woocommerce_signature


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Every app configured, so each route runs its real checks."""
    return make_settings(
        shopify_api_key="k",
        shopify_api_secret="s" * 32,
        shopify_admin_url_template="http://127.0.0.1:9/{shop}",
        meta_app_id="1",
        meta_app_secret="m",
    )


def row_count(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return sum(
            len(conn.execute(table.select()).all())
            for table in Base.metadata.sorted_tables
        )


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("%C2%B2.abc", id="superscript-digit"),
        pytest.param("9" * 5000 + ".abc", id="huge-number"),
    ],
)
@pytest.mark.parametrize("method", ["GET /meta/connect", "POST /meta/disconnect"])
def test_an_odd_admin_link_token_is_a_401(client: Any, method: str, token: str) -> None:
    """A token whose expiry is not a plain timestamp is simply not valid."""
    verb, path = method.split()
    rv = client.open(f"{path}?connection=abc&token={token}", method=verb)
    assert 401 == rv.status_code


def test_a_deeply_nested_key_callback_is_a_400(client: Any, runtime: Runtime) -> None:
    """WooCommerce never sends 200,000 nested brackets; nothing is stored."""
    rv = client.post(
        "/woocommerce/callback", data=b"[" * 200_000, content_type="application/json"
    )
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


def test_a_nul_in_the_connection_id_is_an_unknown_connection(client: Any) -> None:
    """PostgreSQL refuses NUL in text: such an id is refused before any query."""
    rv = client.post(
        "/webhooks/woocommerce/%00abc",
        data=b"{}",
        headers={"X-WC-Webhook-Signature": "x", "X-WC-Webhook-Topic": "order.updated"},
    )
    assert 401 == rv.status_code


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://shop.example/%00x", id="encoded-nul"),
        pytest.param("https://shop.example/" + "a" * 300, id="too-long"),
    ],
)
def test_a_store_url_the_database_cannot_keep_is_a_400(
    client: Any, runtime: Runtime, url: str
) -> None:
    """Control characters and over-long URLs are refused before a state is stored."""
    from urllib.parse import urlencode

    rv = client.get(f"/woocommerce/connect?{urlencode({'store_url': url})}")
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


def test_a_shop_name_longer_than_a_dns_label_is_a_400(
    client: Any, runtime: Runtime
) -> None:
    """A DNS label has at most 63 characters; a longer 'shop' is not one."""
    rv = client.get("/shopify/install?shop=" + "a" * 300 + ".myshopify.com")
    assert 400 == rv.status_code
    assert 0 == row_count(runtime)


@pytest.fixture
def unconfigured_client(make_settings: Callable[..., Settings]) -> Iterator[Any]:
    """An app without Shopify credentials (a WooCommerce-only deployment)."""
    rt = Runtime.from_settings(make_settings())
    try:
        yield create_app(runtime=rt).test_client()
    finally:
        rt.close()


@pytest.mark.parametrize(
    "path",
    [
        "/shopify/install?shop=a.myshopify.com",
        "/shopify/app?id_token=x",
        "/shopify/callback?hmac=x&shop=a.myshopify.com",
    ],
)
def test_an_unconfigured_app_route_is_a_404(
    unconfigured_client: Any, path: str
) -> None:
    """Without the Shopify app's credentials its routes are not there, not broken."""
    rv = unconfigured_client.get(path)
    assert 404 == rv.status_code
    assert "SHOPIFY_API_KEY" in rv.get_json()["detail"]


def test_a_405_names_the_allowed_methods(client: Any) -> None:
    """RFC 9110 requires Allow on a 405."""
    rv = client.put("/healthz")
    assert 405 == rv.status_code
    assert "GET" in rv.headers["Allow"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(
            b'{"id": 1, "status": "\\ud800"}', "surrogate", id="lone-surrogate"
        ),
        pytest.param(b'{"id": "\\u0000", "status": "processing"}', "NUL", id="nul"),
    ],
)
def test_a_signed_body_with_text_no_database_keeps_is_a_400(
    client: Any, runtime: Runtime, body: bytes, detail: str
) -> None:
    """Unpaired surrogates and NUL characters are refused as bad payloads, not stored."""
    with runtime.sessions.begin() as s:
        cid = queries.upsert_connection(
            s, "woocommerce", "https://example.com", webhook_secret="sek"
        ).id
    before = row_count(runtime)
    rv = client.post(
        f"/webhooks/woocommerce/{cid}",
        data=body,
        headers={
            "X-WC-Webhook-Signature": woocommerce_signature(body, "sek"),
            "X-WC-Webhook-Topic": "order.updated",
            "Content-Type": "application/json",
        },
    )
    assert 400 == rv.status_code
    assert detail in rv.get_json()["detail"]
    assert before == row_count(runtime)
