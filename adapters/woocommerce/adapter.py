"""WooCommerce as the webhook path sees it: ping, headers, signature, dedup key, translation.

A store's webhooks post to ``/webhooks/woocommerce/<connection id>``: the URL names the
connection, and the connection's own secret (``Connection.webhook_secret``) signs them.
Translation and its connection settings are described in :mod:`adapters.woocommerce.translate`;
connecting a store in :mod:`adapters.woocommerce.connect`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.woocommerce import signature, translate
from connector.errors import PayloadError, SignatureError
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

SIGNATURE_HEADER = "x-wc-webhook-signature"
TOPIC_HEADER = "x-wc-webhook-topic"
DELIVERY_HEADER = "x-wc-webhook-delivery-id"

#: ``WC_Webhook::deliver_ping`` posts exactly ``webhook_id=<id>`` and nothing else
_PING_BODY = re.compile(rb"webhook_id=[0-9]{1,20}")
#: ``resource.event`` (order.updated) or a custom ``action.woocommerce_*`` topic
_TOPIC = re.compile(r"[a-z0-9_]{1,40}\.[a-z0-9_]{1,80}")


class WooCommerceAdapter:
    """The WooCommerce platform."""

    platform = "woocommerce"

    def is_ping(self, request: WebhookRequest) -> bool:
        """The unsigned ``webhook_id=N`` WooCommerce sends when a webhook is created."""
        if request.header(SIGNATURE_HEADER, TOPIC_HEADER) is not None:
            return False
        return _PING_BODY.fullmatch(request.body.strip()) is not None

    def envelope(self, request: WebhookRequest) -> Envelope:
        """Topic and WooCommerce's delivery id from the ``X-WC-Webhook-*`` headers.

        Raises:
            SignatureError: the delivery is unsigned or names no topic.
            PayloadError: the topic header is not a WooCommerce topic.
        """
        if request.header(SIGNATURE_HEADER) is None:
            raise SignatureError("the delivery carries no X-WC-Webhook-Signature")
        topic = request.header(TOPIC_HEADER)
        if topic is None:
            raise SignatureError("the delivery carries no X-WC-Webhook-Topic")
        topic = topic.lower()
        if _TOPIC.fullmatch(topic) is None:
            raise PayloadError("X-WC-Webhook-Topic is not a WooCommerce topic")
        delivery = request.header(DELIVERY_HEADER)
        return Envelope(
            topic=topic,
            delivery_id=delivery[:255] if delivery else None,
            store=None,
            # WooCommerce's delivery id is no key (see delivery_id) but it finds the store's log entry.
            event_ref=delivery[:255] if delivery else None,
        )

    def webhook_secrets(self, settings: Settings) -> Sequence[bytes]:
        """None: every WooCommerce connection has its own secret."""
        return []

    def verify(self, request: WebhookRequest, secrets: Sequence[bytes]) -> None:
        """Base64 HMAC-SHA256 of the raw body, keyed as WooCommerce keys it.

        Raises:
            SignatureError: no secret produces the signature the request carries.
        """
        signature.verify_signature(
            request.body, request.header(SIGNATURE_HEADER), secrets
        )

    def delivery_id(self, envelope: Envelope, payload: Mapping[str, Any]) -> str:
        """The order, its state and a digest of the content: a redelivery is a no-op."""
        return translate.delivery_key(payload)

    def envelope_delivery_id(self, envelope: Envelope) -> str | None:
        """None: the key is made from the order in the body (see :meth:`delivery_id`)."""
        return None

    def accepts_unknown_store(self, topic: str) -> bool:
        """False: a delivery for a connection we do not have is refused."""
        return False

    def translation_can_wait(self, topic: str) -> bool:
        """Every WooCommerce delivery makes events or a skip: none is a lifecycle action."""
        return True

    def handle(
        self, topic: str, payload: Any, conn: ConnectionInfo, now: datetime
    ) -> Outcome:
        """Translate a verified delivery (see :mod:`adapters.woocommerce.translate`).

        A signed body that is no order we can use is recorded with the reason and answered
        200: WooCommerce never retries a delivery, it only counts a non-2xx answer towards
        disabling the webhook (``WC_Webhook::failed_delivery``), which would stop every
        later order too.
        """
        try:
            return translate.translate(topic, payload, conn, now)
        except PayloadError as exc:
            order_id = payload.get("id") if isinstance(payload, Mapping) else None
            ref = str(order_id)[:64] if isinstance(order_id, int | str) else None
            return Outcome(
                skipped=f"the store sent a body no event can be made from: {exc.detail}"[
                    :500
                ],
                order_ref=ref or None,
            )

    def settings_problems(self, settings: Mapping[str, Any]) -> list[str]:
        return translate.settings_problems(settings)

    def periodic_jobs(self) -> Sequence[PeriodicJob]:
        """Finish webhook setup for stores whose first attempt failed; re-check daily."""
        from adapters.woocommerce.connect import periodic_jobs

        return periodic_jobs()

    def sweep_orders(
        self, runtime: Runtime, connection_id: str, since: datetime, until: datetime
    ) -> Iterator[FoundOrder]:
        """Orders modified in ``[since, until]`` (see :mod:`adapters.woocommerce.sweep`).

        Raises:
            PlatformError: the store cannot be read.
        """
        from adapters.woocommerce import sweep

        return sweep.sweep_orders(runtime, connection_id, since, until)

    def repair_webhooks(self, runtime: Runtime, connection_id: str) -> list[Repair]:
        """Re-activate or re-create the store's webhooks (see :mod:`adapters.woocommerce.sweep`)."""
        from adapters.woocommerce import sweep

        return sweep.repair_webhooks(runtime, connection_id)

    def blueprint(self) -> Any:
        """``/woocommerce/connect``, ``/woocommerce/callback`` and the return page."""
        from adapters.woocommerce.connect import bp

        return bp
