"""The Shopify adapter: how the webhook path and the worker see Shopify."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.shopify import envelope, signature, topics, translate
from adapters.shopify.translate import translate_checkout, translate_order
from connector.platform import (
    ConnectionInfo,
    Envelope,
    Outcome,
    PeriodicJob,
    WebhookRequest,
)

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.runtime import Runtime
    from connector.sweep import FoundOrder, Repair


class ShopifyAdapter:
    """Shopify webhooks: HMAC-verified, deduplicated on the webhook id, translated."""

    platform = "shopify"

    def is_ping(self, request: WebhookRequest) -> bool:
        """Shopify sends no unsigned pings."""
        return False

    def envelope(self, request: WebhookRequest) -> Envelope:
        """Topic, webhook id, shop and provenance from the ``X-Shopify-*`` headers.

        Raises:
            SignatureError: the signature, topic or shop header is missing or malformed.
        """
        return envelope.read_envelope(request)

    def webhook_secrets(self, settings: Settings) -> Sequence[bytes]:
        """The app's client secret, and the previous one during a rotation."""
        return [
            secret.encode()
            for secret in (
                settings.shopify_api_secret,
                settings.shopify_api_secret_previous,
            )
            if secret
        ]

    def verify(self, request: WebhookRequest, secrets: Sequence[bytes]) -> None:
        """Check ``X-Shopify-Hmac-Sha256`` against the raw body.

        Raises:
            SignatureError: no secret produces the signature the request carries.
        """
        signature.verify_body(
            request.body, request.header(*envelope.HMAC), list(secrets)
        )

    def delivery_id(self, envelope: Envelope, payload: Mapping[str, Any]) -> str:
        """``X-Shopify-Webhook-Id``: repeated on every retry of the same delivery."""
        if envelope.delivery_id is None:  # read_envelope always sets one
            raise ValueError("the envelope has no delivery id")
        return envelope.delivery_id

    def envelope_delivery_id(self, envelope: Envelope) -> str | None:
        """``X-Shopify-Webhook-Id``, as :meth:`delivery_id`: the body is not needed."""
        return envelope.delivery_id

    def accepts_unknown_store(self, topic: str) -> bool:
        """Uninstall and compliance deliveries are honoured after the app is gone."""
        return topic in topics.LIFECYCLE_TOPICS

    def translation_can_wait(self, topic: str) -> bool:
        """Order and checkout deliveries make events or a skip, never an action."""
        return topic in topics.ORDER_TOPICS or topic in topics.CHECKOUT_TOPICS

    def handle(
        self, topic: str, payload: Any, conn: ConnectionInfo, now: datetime
    ) -> Outcome:
        """Translate a verified delivery (pure).

        Raises:
            PayloadError: the body is not a payload this topic can carry.
        """
        if topic in topics.ORDER_TOPICS:
            return translate_order(topic, payload, conn, now)
        if topic in topics.CHECKOUT_TOPICS:
            return translate_checkout(topic, payload, conn, now)
        if topic in topics.LIFECYCLE_TOPICS:
            return topics.handle_lifecycle(topic, payload)
        if topic == topics.APP_SCOPES_UPDATE:
            return topics.scopes_update(payload)
        return Outcome(skipped=f"unhandled topic {topic}")

    def settings_problems(self, settings: Mapping[str, Any]) -> list[str]:
        return translate.settings_problems(settings)

    def periodic_jobs(self) -> Sequence[PeriodicJob]:
        """The install module's jobs (webhook reconciliation, token refresh)."""
        from adapters.shopify import install

        return install.periodic_jobs()

    def sweep_orders(
        self, runtime: Runtime, connection_id: str, since: datetime, until: datetime
    ) -> Iterator[FoundOrder]:
        """Orders updated in ``[since, until]`` (see :mod:`adapters.shopify.sweep`).

        Raises:
            PlatformError: the shop cannot be read.
        """
        from adapters.shopify import sweep

        return sweep.sweep_orders(runtime, connection_id, since, until)

    def repair_webhooks(self, runtime: Runtime, connection_id: str) -> list[Repair]:
        """Re-create subscriptions Shopify removed (see :mod:`adapters.shopify.sweep`)."""
        from adapters.shopify import sweep

        return sweep.repair_webhooks(runtime, connection_id)

    def blueprint(self) -> Any:
        """The install routes (``/shopify/install``, ``/shopify/callback``)."""
        from adapters.shopify import install

        return install.blueprint
