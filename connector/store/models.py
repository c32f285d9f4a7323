"""The schema: connections, webhook receipts, the event outbox, OAuth states."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connector.store.types import Encrypted, UTCDateTime

# Named constraints so Alembic can alter them on every engine (Alembic's naming.rst).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 64-bit ids on PostgreSQL, SQLite's rowid alias elsewhere (it must be INTEGER to autoincrement)
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDict = JSON()


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_connection_id() -> str:
    """An unguessable id: it appears in WooCommerce webhook URLs."""
    return secrets.token_hex(12)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConnectionStatus(StrEnum):
    #: installed and sending (or waiting for its Meta pixel)
    ACTIVE = "active"
    #: Meta refused the token: events are held until the store owner reconnects
    NEEDS_RECONNECT = "needs_reconnect"
    #: the Meta token was removed on purpose: nothing is sent, the outbox is kept
    DISCONNECTED = "disconnected"
    #: the app was removed from the store
    UNINSTALLED = "uninstalled"
    #: Meta refuses every request for a reason a person must fix (a retired API version,
    #: every event refused): events wait, and are tried again now and then to see it healed
    FAILING = "failing"


class EventStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    HELD = "held"
    DEAD = "dead"


class Connection(Base):
    """One store linked to one Meta pixel."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("platform", "store", name="uq_connections_platform_store"),
    )

    id: Mapped[str] = mapped_column(
        String(32), primary_key=True, default=new_connection_id
    )
    platform: Mapped[str] = mapped_column(String(32))
    #: shop domain (Shopify) or store URL (WooCommerce)
    store: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default=ConnectionStatus.ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str | None] = mapped_column(Text)
    #: Shopify access token / WooCommerce consumer secret
    platform_token: Mapped[str | None] = mapped_column(Encrypted)
    #: WooCommerce consumer key (the token's other half)
    platform_key: Mapped[str | None] = mapped_column(Encrypted)
    platform_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    platform_refresh_token: Mapped[str | None] = mapped_column(Encrypted)
    platform_refresh_token_expires_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime
    )
    webhook_secret: Mapped[str | None] = mapped_column(Encrypted)
    pixel_id: Mapped[str | None] = mapped_column(String(64))
    meta_token: Mapped[str | None] = mapped_column(Encrypted)
    meta_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meta_scopes: Mapped[str | None] = mapped_column(Text)
    meta_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    test_event_code: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)
    #: no send before this time (rate limited by Meta)
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    installed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    uninstalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:  # never the secrets
        return f"<Connection {self.id} {self.platform} {self.store} {self.status}>"


class WebhookReceipt(Base):
    """One accepted delivery; its unique key makes a redelivery a no-op."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (
        UniqueConstraint(
            "connection_id", "delivery_id", name="uq_webhook_receipts_delivery"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    delivery_id: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(128))
    event_ref: Mapped[str | None] = mapped_column(String(255))
    api_version: Mapped[str | None] = mapped_column(String(32))
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: accepted (made events) | skipped (with a reason) | action (lifecycle)
    outcome: Mapped[str] = mapped_column(String(16), default="accepted")
    detail: Mapped[str | None] = mapped_column(Text)
    order_ref: Mapped[str | None] = mapped_column(String(64))
    customer_ref: Mapped[str | None] = mapped_column(String(64))


class Event(Base):
    """The outbox: one Meta event, from pending to sent or dead, never silently dropped."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint(
            "connection_id",
            "event_name",
            "event_id",
            name="uq_events_connection_name_id",
        ),
        # One event of a kind per order even when its event_id changes between deliveries
        # (WooCommerce's _meta_event_id can appear after the order was first seen paid).
        Index(
            "uq_events_connection_name_order",
            "connection_id",
            "event_name",
            "order_ref",
            unique=True,
            postgresql_where=text("order_ref IS NOT NULL"),
            sqlite_where=text("order_ref IS NOT NULL"),
        ),
        Index("ix_events_due", "status", "next_attempt_at"),
        # The claim reads only rows that may be due: its cost follows them, not the sent history.
        Index(
            "ix_events_claimable",
            "connection_id",
            "id",
            postgresql_where=text("status IN ('pending', 'sending')"),
            sqlite_where=text("status IN ('pending', 'sending')"),
        ),
        Index("ix_events_connection_status", "connection_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    event_name: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(255))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the Meta-ready event object (hashes only: no raw personal data)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDict)
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: how many times the event actually reached Meta's endpoint (re-sends are counted)
    send_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    events_received: Mapped[int | None] = mapped_column(Integer)
    fbtrace_id: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    order_ref: Mapped[str | None] = mapped_column(String(64))
    customer_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    #: times the row was claimed again after its worker's lease ran out (a worker died on it)
    reclaims: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class OAuthState(Base):
    """A single-use state for an OAuth-style redirect; only its hash is stored."""

    __tablename__ = "oauth_states"

    nonce_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    connection_id: Mapped[str | None] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    #: the store the state was issued for (shop domain, store URL)
    store: Mapped[str | None] = mapped_column(String(255))
    data: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WorkerHeartbeat(Base):
    """One running worker: when it last went round its loop, for the health check and metrics."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: rows claimed and sent since the worker started
    claimed: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)


class RefreshLease(Base):
    """Who may spend a connection's platform refresh token now (single use at the platform).

    Taken in a short transaction of its own, so the HTTP call to the platform holds no lock
    on the connection's row; it expires, so a process that died with it stops no one.
    """

    __tablename__ = "refresh_leases"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
