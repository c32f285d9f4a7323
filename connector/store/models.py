"""The schema: connections, webhook receipts, the event outbox, OAuth states."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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
    #: indexed as the leading column of uq_webhook_receipts_delivery
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    delivery_id: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(128))
    event_ref: Mapped[str | None] = mapped_column(String(255))
    api_version: Mapped[str | None] = mapped_column(String(32))
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, index=True
    )
    #: accepted (made events) | skipped (with a reason) | action (lifecycle)
    outcome: Mapped[str] = mapped_column(String(16), default="accepted")
    detail: Mapped[str | None] = mapped_column(Text)
    order_ref: Mapped[str | None] = mapped_column(String(64))
    customer_ref: Mapped[str | None] = mapped_column(String(64))


class WebhookBody(Base):
    """A verified delivery's body waiting for the worker to translate it (sealed).

    Only with ``CONNECTOR_WEBHOOK_TRANSLATION=worker`` on PostgreSQL: the web process then
    verifies and records the delivery and answers, and the worker makes its events
    (:mod:`connector.inbox`). The body holds personal data as the store sent it, so it is
    kept compressed and encrypted with the connector's keys, and deleted in the transaction
    that records its events.
    """

    __tablename__ = "webhook_bodies"

    receipt_id: Mapped[int] = mapped_column(
        BigId,
        ForeignKey("webhook_receipts.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    #: the body, compressed and encrypted to its delivery (connector.crypto.KeyRing.seal)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: failed translations so far; the worker waits longer after each
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the last failure's kind (an exception class), never the body's content
    last_error: Mapped[str | None] = mapped_column(Text)


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
        # The daily prune's worklist: rows whose personal data has not been removed yet.
        Index(
            "ix_events_unpruned",
            "id",
            postgresql_where=text("pruned_at IS NULL"),
            sqlite_where=text("pruned_at IS NULL"),
        ),
        # The dashboard's (migration 0008): each of its queries reads one index range.
        Index(
            "ix_events_connection_created",
            "connection_id",
            "created_at",
            postgresql_include=["event_name", "status"],
        ),
        # Partial: a row not sent yet writes no entry (when inserted, claimed or retried).
        Index(
            "ix_events_connection_sent",
            "connection_id",
            "sent_at",
            postgresql_where=text("sent_at IS NOT NULL"),
            sqlite_where=text("sent_at IS NOT NULL"),
        ),
        Index("ix_events_connection_id", "connection_id", "id"),
        Index("ix_events_connection_status_id", "connection_id", "status", "id"),
        Index("ix_events_connection_event_id", "connection_id", "event_id"),
        Index(
            "ix_events_fbtrace_id",
            "fbtrace_id",
            postgresql_where=text("fbtrace_id IS NOT NULL"),
            sqlite_where=text("fbtrace_id IS NOT NULL"),
        ),
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
    #: when the prune removed the personal data from the payload (connector.retention)
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the match keys the event carried, as connector.quality.key_mask (NULL before 0006)
    match_keys: Mapped[int | None] = mapped_column(Integer)
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


class JobRun(Base):
    """A periodic job's lease for one tick: the first process to insert the row runs the job.

    A tick is ``floor(epoch seconds / interval)``; the primary key makes "once per interval
    across the cluster" an ``INSERT ... ON CONFLICT DO NOTHING`` (as procrastinate leases
    periodic tasks).
    """

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    tick: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: ok | failed | interrupted
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class SweepState(Base):
    """A connection's order sweep: how far it has read the store's orders, and how the last went."""

    __tablename__ = "sweep_states"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    #: every order updated before this time has been read (the high-water mark)
    swept_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: the last sweep's counts: scanned, enqueued, present, skipped by reason
    last_counts: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)


class WebhookRepair(Base):
    """A webhook found disabled or missing at the store, and what was done about it."""

    __tablename__ = "webhook_repairs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    topic: Mapped[str] = mapped_column(String(128))
    #: reactivated | recreated | failed
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    repaired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# -- match quality ------------------------------------------------------------------------


class MatchCoverageDaily(Base):
    """Per connection, UTC day (of sending) and event name: events sent and key coverage."""

    __tablename__ = "match_coverage_daily"
    __table_args__ = (
        UniqueConstraint(
            "connection_id",
            "day",
            "event_name",
            name="uq_match_coverage_daily_connection_day_name",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    day: Mapped[date] = mapped_column(Date)
    event_name: Mapped[str] = mapped_column(String(64))
    events_sent: Mapped[int] = mapped_column(Integer, default=0)
    #: {match key: events that carried it}
    key_counts: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)
    #: sum of our per-event estimates, in tenths of a point
    estimate_tenths: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MetaEventScore(Base):
    """Meta's latest Dataset Quality answer for one event name of a connection's pixel."""

    __tablename__ = "meta_event_scores"
    __table_args__ = (
        UniqueConstraint(
            "connection_id", "event_name", name="uq_meta_event_scores_connection_name"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    pixel_id: Mapped[str] = mapped_column(String(64))
    event_name: Mapped[str] = mapped_column(String(64))
    composite_score: Mapped[float | None] = mapped_column(Float)
    event_coverage: Mapped[float | None] = mapped_column(Float)
    #: the event's item of Meta's answer, as it came (match keys, dedup feedback)
    answer: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MetaQualityCheck(Base):
    """The last daily Dataset Quality read of a connection: when, and what came of it."""

    __tablename__ = "meta_quality_checks"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    pixel_id: Mapped[str | None] = mapped_column(String(64))
    #: 16 hex digits of the SHA-256 of the token used: a new token is asked at once
    token_digest: Mapped[str | None] = mapped_column(String(16))
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: "ok", "no_access" (token or pixel without access: waits for a new token or pixel),
    #: or "error" (Meta unreachable or failing: tried again the next day)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class QualityWarning(Base):
    """A connection-level warning a dashboard shows, with what to change."""

    __tablename__ = "quality_warnings"
    __table_args__ = (
        UniqueConstraint(
            "connection_id",
            "kind",
            "event_name",
            name="uq_quality_warnings_connection_kind_name",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(32))
    event_name: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: set when Meta's feedback no longer shows the problem; the row stays for history
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
