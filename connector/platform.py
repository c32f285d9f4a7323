"""The platform port: the Adapter protocol and the values adapters exchange with the core (pure).

They live in the core so that the core never imports an adapter; ``adapters.base``
re-exports them for the platforms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from connector.events import CanonicalEvent

if TYPE_CHECKING:
    from connector.config import Settings


@dataclass(frozen=True, kw_only=True)
class WebhookRequest:
    """A webhook delivery as received: signatures cover the raw bytes."""

    headers: Mapping[str, str]  # keys lower-cased once, on the way in
    body: bytes
    path: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""

    def header(self, *names: str) -> str | None:
        """The first of ``names`` present (case-insensitive), stripped, or None."""
        for name in names:
            value = self.headers.get(name.lower())
            if value is not None and value.strip():
                return value.strip()
        return None


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """What the delivery's headers say about it, read before the body is trusted."""

    topic: str
    delivery_id: str | None
    #: the store identity the sender claims (Shopify's shop domain); None when the URL names the connection
    store: str | None = None
    event_ref: str | None = None
    api_version: str | None = None
    triggered_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ConnectionInfo:
    """What translation may know about the connection; no secrets."""

    id: str
    platform: str
    store: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: the connection has a test_event_code: its events show under Test Events in Meta
    test_mode: bool = False


@dataclass(frozen=True, kw_only=True)
class Uninstalled:
    """The app was removed: forget the platform token, stop sending."""


@dataclass(frozen=True, kw_only=True)
class RedactCustomer:
    """Delete what is held about one customer (their events and receipts)."""

    customer_ref: str | None
    order_refs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RedactStore:
    """Delete everything held for the store."""


@dataclass(frozen=True, kw_only=True)
class DataRequest:
    """The customer asked what is held about them: record a report for the store owner."""

    customer_ref: str | None
    order_refs: tuple[str, ...] = ()
    request_ref: str | None = None


@dataclass(frozen=True, kw_only=True)
class ScopesUpdated:
    """The store owner changed what the app may access: record the scopes now granted."""

    scopes: tuple[str, ...]


Action = Uninstalled | RedactCustomer | RedactStore | DataRequest | ScopesUpdated


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a delivery means: events for the outbox, a lifecycle action, or a reason to skip."""

    events: Sequence[CanonicalEvent] = ()
    action: Action | None = None
    #: a readable reason when the delivery makes no event (recorded with the receipt)
    skipped: str | None = None
    #: the platform ids of the subject, kept with the receipt so redaction can find it
    order_ref: str | None = None
    customer_ref: str | None = None


@dataclass(frozen=True, kw_only=True)
class PeriodicJob:
    """Work the worker runs every ``interval_seconds`` (e.g. a daily reconciliation)."""

    name: str
    interval_seconds: float
    run: Callable[[Any], None]  # receives the connector.runtime.Runtime


class Adapter(Protocol):
    """A store platform, as the webhook path and the worker see it."""

    platform: str

    def is_ping(self, request: WebhookRequest) -> bool:
        """True for an unsigned liveness ping that must get 200 and store nothing."""

    def envelope(self, request: WebhookRequest) -> Envelope:
        """Read topic, delivery id and claimed store from the headers.

        Raises:
            SignatureError: a header every genuine delivery carries is missing.
        """

    def webhook_secrets(self, settings: Settings) -> Sequence[bytes]:
        """The app-wide secrets to try when a connection has no secret of its own."""

    def verify(self, request: WebhookRequest, secrets: Sequence[bytes]) -> None:
        """Check the signature against any of ``secrets``.

        Raises:
            SignatureError: no secret produces the signature the request carries.
        """

    def delivery_id(self, envelope: Envelope, payload: Mapping[str, Any]) -> str:
        """The key that makes a redelivery of the same delivery a no-op."""

    def envelope_delivery_id(self, envelope: Envelope) -> str | None:
        """:meth:`delivery_id` when the headers alone give it, else None (it is in the body)."""

    def accepts_unknown_store(self, topic: str) -> bool:
        """True when a delivery for an unknown or uninstalled store still gets 200."""

    def translation_can_wait(self, topic: str) -> bool:
        """True when ``topic``'s outcome is only events or a skip, never an :data:`Action`.

        Such a delivery may be recorded first and translated later by the worker
        (``CONNECTOR_WEBHOOK_TRANSLATION=worker``, :mod:`connector.inbox`); a delivery that
        may change the connection (uninstall, redaction) is always handled in its request.
        """

    def handle(
        self, topic: str, payload: Any, conn: ConnectionInfo, now: datetime
    ) -> Outcome:
        """Translate a verified, parsed delivery (pure).

        Raises:
            PayloadError: the body is not a payload this topic can carry.
        """

    def settings_problems(self, settings: Mapping[str, Any]) -> list[str]:
        """What is wrong with a connection's settings, in words a person can act on."""

    def periodic_jobs(self) -> Sequence[PeriodicJob]:
        """Background work the worker runs for this platform."""

    def blueprint(self) -> Any:
        """The platform's install/connect routes (a Flask Blueprint), or None."""
