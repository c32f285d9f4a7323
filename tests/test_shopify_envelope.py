"""What the adapter reads from a Shopify delivery's headers, prefixed or not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.shopify import adapter
from connector.config import Settings
from connector.errors import SignatureError
from connector.platform import WebhookRequest

HEADERS = {
    "x-shopify-hmac-sha256": "c2lnbmF0dXJl",
    "x-shopify-topic": "orders/paid",
    "x-shopify-shop-domain": "jsmith.myshopify.com",
    "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
    "x-shopify-api-version": "2026-07",
    "x-shopify-triggered-at": "2023-03-29T18:00:27.877041743Z",
}


def request(headers: dict[str, str], body: bytes = b"{}") -> WebhookRequest:
    return WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, body=body)


def test_envelope_reads_every_documented_header() -> None:
    """Topic, webhook id, shop, event id, API version and trigger time come from headers."""
    env = adapter.envelope(request(HEADERS))
    assert "orders/paid" == env.topic
    assert "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043" == env.delivery_id
    assert "jsmith.myshopify.com" == env.store
    assert "98880550-7158-44d4-b7cd-2c97c8a091b5" == env.event_ref
    assert "2026-07" == env.api_version
    # Shopify writes nanoseconds; the microseconds survive.
    assert datetime(2023, 3, 29, 18, 0, 27, 877041, tzinfo=UTC) == env.triggered_at


def test_unprefixed_header_names_of_newer_deliveries_are_read() -> None:
    """Events deliveries name the same headers without the X- prefix."""
    unprefixed = {k.removeprefix("x-"): v for k, v in HEADERS.items()}
    assert adapter.envelope(request(HEADERS)) == adapter.envelope(request(unprefixed))


def test_header_case_does_not_matter() -> None:
    """HTTP/2 lower-cases header names; HTTP/1.1 senders may not."""
    shouting = {k.upper(): v for k, v in HEADERS.items()}
    shouting["X-SHOPIFY-SHOP-DOMAIN"] = "JSmith.MyShopify.com"
    assert adapter.envelope(request(HEADERS)) == adapter.envelope(request(shouting))


def test_delivery_id_is_the_webhook_id() -> None:
    """The webhook id, repeated on retries, is the idempotency key."""
    env = adapter.envelope(request(HEADERS))
    assert "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043" == adapter.delivery_id(env, {})


def test_without_a_webhook_id_the_same_bytes_make_the_same_delivery_id() -> None:
    """A delivery lacking the id is keyed by its topic and body, so a resend is a no-op."""
    headers = {k: v for k, v in HEADERS.items() if k != "x-shopify-webhook-id"}
    first = adapter.envelope(request(headers, b'{"id": 1}'))
    again = adapter.envelope(request(headers, b'{"id": 1}'))
    other = adapter.envelope(request(headers, b'{"id": 2}'))
    assert first.delivery_id == again.delivery_id
    assert first.delivery_id != other.delivery_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"x-shopify-hmac-sha256": None}, "no HMAC", id="no-hmac"),
        pytest.param({"x-shopify-topic": None}, "no topic", id="no-topic"),
        pytest.param({"x-shopify-topic": "  "}, "no topic", id="blank-topic"),
        pytest.param(
            {"x-shopify-topic": "orders"}, "topic header", id="topic-no-slash"
        ),
        pytest.param(
            {"x-shopify-topic": "orders/" + "x" * 130}, "topic header", id="long-topic"
        ),
        pytest.param({"x-shopify-shop-domain": None}, "no shop", id="no-shop"),
        pytest.param(
            {"x-shopify-shop-domain": "evil.example.com"},
            "myshopify",
            id="foreign-shop",
        ),
        pytest.param(
            {"x-shopify-webhook-id": "a b"}, "webhook id", id="webhook-id-with-space"
        ),
        pytest.param(
            {"x-shopify-webhook-id": "x" * 256}, "webhook id", id="webhook-id-too-long"
        ),
    ],
)
def test_missing_or_malformed_headers_are_refused(
    change: dict[str, Any], reason: str
) -> None:
    """A delivery without what every genuine one carries is a 401, before any lookup."""
    headers = {**HEADERS, **change}
    headers = {k: v for k, v in headers.items() if v is not None}
    with pytest.raises(SignatureError, match=reason):
        adapter.envelope(request(headers))


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("x-shopify-api-version", "v" * 40, id="long-version"),
        pytest.param("x-shopify-event-id", "has space", id="odd-event-id"),
        pytest.param("x-shopify-triggered-at", "yesterday", id="unreadable-time"),
        pytest.param("x-shopify-triggered-at", "2023-03-29T18:00:27", id="no-offset"),
    ],
)
def test_odd_informational_headers_are_dropped_not_fatal(
    header: str, value: str
) -> None:
    """API version, event id and trigger time are kept when readable, else left out."""
    env = adapter.envelope(request({**HEADERS, header: value}))
    assert (
        None
        is {
            "x-shopify-api-version": env.api_version,
            "x-shopify-event-id": env.event_ref,
            "x-shopify-triggered-at": env.triggered_at,
        }[header]
    )


def test_webhook_secrets_are_the_current_and_previous_app_secrets() -> None:
    """Both configured secrets are tried; unset ones are not."""
    assert [b"new", b"old"] == list(
        adapter.webhook_secrets(
            Settings(shopify_api_secret="new", shopify_api_secret_previous="old")
        )
    )
    assert [b"new"] == list(adapter.webhook_secrets(Settings(shopify_api_secret="new")))
    assert [] == list(adapter.webhook_secrets(Settings()))


@pytest.mark.parametrize(
    ("topic", "accepted"),
    [
        pytest.param("app/uninstalled", True, id="uninstalled"),
        pytest.param("shop/redact", True, id="shop-redact"),
        pytest.param("customers/redact", True, id="customer-redact"),
        pytest.param("customers/data_request", True, id="data-request"),
        pytest.param("orders/paid", False, id="orders"),
        pytest.param("checkouts/create", False, id="checkouts"),
    ],
)
def test_lifecycle_topics_are_accepted_for_unknown_shops(
    topic: str, accepted: bool
) -> None:
    """Uninstall and compliance deliveries still count after the app is gone."""
    assert accepted == adapter.accepts_unknown_store(topic)


def test_shopify_never_pings() -> None:
    """Every Shopify delivery is signed; none is a ping."""
    assert not adapter.is_ping(request(HEADERS))
