"""What a Shopify delivery's headers say, read before the body is trusted (pure).

Shopify's webhooks carry ``X-Shopify-*`` headers; its newer Events deliveries carry the
same names without the ``X-`` prefix. Both are accepted, the prefixed name first.

| header                           | meaning                                          |
|----------------------------------|--------------------------------------------------|
| ``X-Shopify-Hmac-Sha256``        | base64 HMAC-SHA256 of the raw body               |
| ``X-Shopify-Topic``              | e.g. ``orders/paid``                             |
| ``X-Shopify-Shop-Domain``        | the shop's ``NAME.myshopify.com`` domain         |
| ``X-Shopify-Webhook-Id``         | one delivery; repeated on retries (idempotency)  |
| ``X-Shopify-Event-Id``           | one merchant action, shared by its deliveries    |
| ``X-Shopify-API-Version``        | the version the payload was serialized with      |
| ``X-Shopify-Triggered-At``       | when Shopify triggered the delivery              |
"""

from __future__ import annotations

import hashlib
import re

from adapters.shopify.fields import timestamp
from connector.domains import normalize_shop_domain
from connector.errors import SignatureError
from connector.platform import Envelope, WebhookRequest

HMAC = ("x-shopify-hmac-sha256", "shopify-hmac-sha256")
TOPIC = ("x-shopify-topic", "shopify-topic")
SHOP = ("x-shopify-shop-domain", "shopify-shop-domain")
WEBHOOK_ID = ("x-shopify-webhook-id", "shopify-webhook-id")
EVENT_ID = ("x-shopify-event-id", "shopify-event-id")
API_VERSION = ("x-shopify-api-version", "shopify-api-version")
TRIGGERED_AT = ("x-shopify-triggered-at", "shopify-triggered-at")

# Topics are short lower-case paths (orders/paid); the receipt column holds 128.
_TOPIC = re.compile(r"^[a-z0-9_]+(?:/[a-z0-9_]+)+$")
# Webhook and event ids are UUIDs or digits; anything printable fits, up to the column size.
_REF = re.compile(r"^[\x21-\x7e]{1,255}$")
_API_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def read_envelope(request: WebhookRequest) -> Envelope:
    """Topic, delivery id, shop and provenance from the headers.

    Raises:
        SignatureError: the signature, topic or shop header is missing or malformed.
    """
    if request.header(*HMAC) is None:
        raise SignatureError("the delivery carries no HMAC signature")
    topic = (request.header(*TOPIC) or "").lower()
    if not topic:
        raise SignatureError("the delivery names no topic")
    if len(topic) > 128 or not _TOPIC.fullmatch(topic):
        raise SignatureError("the topic header is malformed")
    shop = request.header(*SHOP)
    if not shop:
        raise SignatureError("the delivery names no shop")
    try:
        store = normalize_shop_domain(shop)
    except ValueError as exc:
        raise SignatureError("the shop header is not a myshopify.com domain") from exc
    webhook_id = request.header(*WEBHOOK_ID)
    if webhook_id is not None and not _REF.fullmatch(webhook_id):
        raise SignatureError("the webhook id header is malformed")
    if webhook_id is None:
        # Every genuine delivery has one; without it, the same bytes on the same topic
        # are the best idempotency key there is.
        digest = hashlib.sha256(topic.encode() + b"\n" + request.body).hexdigest()
        webhook_id = f"sha256:{digest}"
    return Envelope(
        topic=topic,
        delivery_id=webhook_id,
        store=store,
        event_ref=_optional(request.header(*EVENT_ID), _REF),
        api_version=_optional(request.header(*API_VERSION), _API_VERSION),
        # Shopify writes nanoseconds; fields.timestamp keeps the microseconds
        triggered_at=timestamp(request.header(*TRIGGERED_AT)),
    )


def _optional(value: str | None, pattern: re.Pattern[str]) -> str | None:
    # Informational headers: a malformed one is dropped rather than failing the delivery.
    if value is None or not pattern.fullmatch(value):
        return None
    return value
