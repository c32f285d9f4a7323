"""The queries the connector needs; each takes a Session and leaves the commit to its caller."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection as DBConnection
from sqlalchemy import Table, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from connector import jsoncodec
from connector.errors import NotFoundError, OAuthStateError
from connector.events import INITIATE_CHECKOUT, PURCHASE, CanonicalEvent
from connector.quality import key_mask
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    JsonDict,
    OAuthState,
    RefreshLease,
    WebhookBody,
    WebhookReceipt,
    WorkerHeartbeat,
    utcnow,
)
from connector.store.types import UTCDateTime


@dataclass(frozen=True, kw_only=True)
class ReceiptIn:
    """A delivery to record."""

    platform: str
    connection_id: str
    delivery_id: str
    topic: str
    event_ref: str | None = None
    api_version: str | None = None
    triggered_at: datetime | None = None
    outcome: str = "accepted"
    detail: str | None = None
    order_ref: str | None = None
    customer_ref: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionGuard:
    """A connection's columns as a delivery was verified and translated with them.

    :func:`record_delivery` writes nothing unless the connection's row still holds these
    values when the delivery is recorded, so a caller may have read them earlier (the webhook
    path keeps them for a few seconds) without ever recording a delivery for a connection
    that was deleted, uninstalled, or given another secret or settings in the meantime.
    """

    status: str
    store: str
    #: the settings column's text as stored (JSON)
    settings: str | None
    test_event_code: str | None
    #: the webhook secret as stored: sealed, never the plain secret
    webhook_secret: str | None


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """What recording a delivery did."""

    duplicate_delivery: bool
    #: the connection is gone or no longer matches the guard: nothing was recorded
    connection_changed: bool = False
    receipt_id: int | None = None
    #: (event_name, event_id) of the events this delivery added to the outbox
    new_events: list[tuple[str, str]] = field(default_factory=list)
    #: how many events not yet sent took this delivery's richer data (see REFRESHABLE_EVENTS)
    refreshed_events: int = 0


#: Events that a later delivery of the same thing may refresh while they wait to be sent: a
#: checkout grows (an email first, then a name, an address, a phone). Once an event is sent,
#: leased or tried, it is never changed. A Purchase is not refreshed: it is made when the
#: order is paid, from the paid state.
REFRESHABLE_EVENTS: frozenset[str] = frozenset({INITIATE_CHECKOUT})


def _insert(session: Session, table: Any) -> Any:
    # ON CONFLICT DO NOTHING: the unique key settles races, never a read-then-write.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database {dialect}")


def _dialect(db: Session | DBConnection) -> str:
    return (
        db.dialect.name if isinstance(db, DBConnection) else db.get_bind().dialect.name
    )


@cache
def _delivery_statements(dialect: str) -> tuple[Any, Any]:
    """The two INSERTs of the webhook hot path, built once so they compile once."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    receipts = cast(Table, WebhookReceipt.__table__)
    outbox = cast(Table, Event.__table__)
    add_receipt = (
        insert(receipts)
        .on_conflict_do_nothing(index_elements=["connection_id", "delivery_id"])
        .returning(receipts.c.id)
    )
    add_events = (
        insert(outbox)
        # No conflict target: either unique key (event id, or order) makes a duplicate.
        .on_conflict_do_nothing()
        .returning(outbox.c.event_name, outbox.c.event_id)
    )
    return add_receipt, add_events


# PostgreSQL records a delivery in ONE statement: the receipt, and the events only if the receipt
# is new. A single statement is atomic even in autocommit, so the webhook path needs one round
# trip to write instead of BEGIN, two INSERTs and COMMIT.
#
# ``g`` reads the connection's row first and takes the key-share lock the foreign keys would
# take anyway: a connection deleted (shop/redact) before the statement leaves ``g`` empty and
# nothing is written, instead of a foreign-key violation; one deleted after it waits for this
# statement, and its cascade takes these rows along. With a guard, ``g`` is also empty when the
# row no longer holds the values the caller verified and translated the delivery with.
# ``g`` and the receipt ``r`` are the part both PostgreSQL statements of a delivery share.
_RECEIPT_UNDER_GUARD = """
    WITH g AS (
        SELECT id FROM connections
        WHERE id = :connection_id AND (NOT :guarded OR (status = :guard_status
            AND store = :guard_store
            AND CAST(settings AS text) IS NOT DISTINCT FROM :guard_settings
            AND test_event_code IS NOT DISTINCT FROM :guard_test_event_code
            AND webhook_secret IS NOT DISTINCT FROM :guard_webhook_secret))
        FOR KEY SHARE
    ), r AS (
        INSERT INTO webhook_receipts (platform, connection_id, delivery_id, topic, event_ref,
            api_version, triggered_at, received_at, outcome, detail, order_ref, customer_ref)
        SELECT :platform, g.id, :delivery_id, :topic, :event_ref, :api_version,
            CAST(:triggered_at AS timestamptz), CAST(:received_at AS timestamptz), :outcome,
            :detail, :order_ref, :customer_ref
        FROM g
        ON CONFLICT (connection_id, delivery_id) DO NOTHING
        RETURNING id
    )"""

_RECORD_DELIVERY_PG = text(
    _RECEIPT_UNDER_GUARD  # noqa: S608 - two constants joined: no input reaches the SQL
    + """, e AS (
        INSERT INTO events (connection_id, event_name, event_id, event_time, payload, status,
            attempts, send_count, next_attempt_at, created_at, order_ref, customer_ref,
            match_keys)
        SELECT :connection_id, x.event_name, x.event_id, x.event_time, x.payload, 'pending',
            0, 0, :received_at, :received_at, x.order_ref, x.customer_ref, x.match_keys
        FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS x(event_name text, event_id text,
            event_time timestamptz, payload json, order_ref text, customer_ref text,
            match_keys integer)
        WHERE EXISTS (SELECT 1 FROM r)
        ON CONFLICT DO NOTHING
        RETURNING event_name, event_id
    ), u AS (
        UPDATE events AS ev SET payload = x.payload, event_time = x.event_time,
            customer_ref = COALESCE(x.customer_ref, ev.customer_ref), match_keys = x.match_keys
        FROM jsonb_to_recordset(CAST(:refresh AS jsonb)) AS x(event_name text, event_id text,
            event_time timestamptz, payload json, customer_ref text, richness int,
            match_keys integer)
        WHERE EXISTS (SELECT 1 FROM r)
            AND ev.connection_id = :connection_id AND ev.event_name = x.event_name
            AND ev.event_id = x.event_id AND ev.status = 'pending' AND ev.lease_owner IS NULL
            AND ev.attempts = 0 AND ev.send_count = 0
            AND (SELECT count(*) FROM json_object_keys(ev.payload -> 'user_data')) <= x.richness
        RETURNING ev.id
    ), e2 AS (
        INSERT INTO events (connection_id, event_name, event_id, event_time, payload, status,
            attempts, send_count, next_attempt_at, created_at, order_ref, customer_ref,
            match_keys)
        SELECT :connection_id, x.event_name, x.order_ref, x.event_time,
            CAST(CAST(x.payload AS jsonb) || jsonb_build_object('event_id', x.order_ref) AS json),
            'pending', 0, 0, :received_at, :received_at, x.order_ref, x.customer_ref,
            x.match_keys
        FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS x(event_name text, event_id text,
            event_time timestamptz, payload json, order_ref text, customer_ref text,
            match_keys integer)
        WHERE EXISTS (SELECT 1 FROM r) AND x.event_name = :purchase
            AND x.order_ref IS NOT NULL AND x.event_id <> x.order_ref
            AND EXISTS (SELECT 1 FROM events AS taken WHERE taken.connection_id = :connection_id
                AND taken.event_name = x.event_name AND taken.event_id = x.event_id
                AND taken.order_ref IS DISTINCT FROM x.order_ref)
        ON CONFLICT DO NOTHING
        RETURNING event_name, event_id
    )
    SELECT (SELECT count(*) FROM g), (SELECT id FROM r), (SELECT count(*) FROM u),
        a.event_name, a.event_id
    FROM (SELECT 1) AS one
    LEFT JOIN (SELECT * FROM e UNION ALL SELECT * FROM e2) AS a ON true
    """
)

# SQLite: the same refresh as the PostgreSQL statement's ``u``, run before the INSERT so that
# it only ever touches rows an earlier delivery stored.
_REFRESH_SQLITE = text(
    """
    UPDATE events SET payload = :payload, event_time = :event_time,
        customer_ref = COALESCE(:customer_ref, customer_ref), match_keys = :match_keys
    WHERE connection_id = :connection_id AND event_name = :event_name
        AND event_id = :event_id AND status = 'pending' AND lease_owner IS NULL
        AND attempts = 0 AND send_count = 0
        AND (SELECT count(*) FROM json_each(events.payload, '$.user_data')) <= :richness
    RETURNING id
    """
).bindparams(
    bindparam("payload", type_=JsonDict),
    bindparam("event_time", type_=UTCDateTime()),
)


# PostgreSQL: the same refresh, one event at a time (connector.inbox records that way).
_REFRESH_PG = text(
    """
    UPDATE events SET payload = CAST(:payload AS json), event_time = :event_time,
        customer_ref = COALESCE(:customer_ref, customer_ref), match_keys = :match_keys
    WHERE connection_id = :connection_id AND event_name = :event_name
        AND event_id = :event_id AND status = 'pending' AND lease_owner IS NULL
        AND attempts = 0 AND send_count = 0
        AND (SELECT count(*) FROM json_object_keys(events.payload -> 'user_data'))
            <= :richness
    RETURNING id
    """
).bindparams(
    bindparam("payload", type_=JsonDict),
    bindparam("event_time", type_=UTCDateTime()),
)


# _RECORD_DELIVERY_PG's ``g`` on SQLite, where the caller's transaction holds the database.
_GUARD_SQLITE = text(
    """
    SELECT 1 FROM connections
    WHERE id = :connection_id AND (NOT :guarded OR (status = :guard_status
        AND store = :guard_store
        AND CAST(settings AS text) IS :guard_settings
        AND test_event_code IS :guard_test_event_code
        AND webhook_secret IS :guard_webhook_secret))
    """
)


# The id another order already holds: the guard of _RECORD_DELIVERY_PG's ``e2`` on SQLite.
_TAKEN_BY = text(
    """
    SELECT order_ref FROM events
    WHERE connection_id = :connection_id AND event_name = :event_name AND event_id = :event_id
    """
)


def _own_id(event: CanonicalEvent) -> CanonicalEvent | None:
    """The Purchase under its order's own id, when its event id may be one copied from another.

    Plugins copy order meta between orders (an ``_meta_event_id`` onto renewals and re-orders):
    an event id another order already holds must never merge two orders, so the later order
    is recorded under its own order id instead.
    """
    if (
        event.event_name != PURCHASE
        or event.order_ref is None
        or event.order_ref == event.event_id
    ):
        return None
    return event.replace(event_id=event.order_ref)


def _new_events(
    events: Sequence[CanonicalEvent], added: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    rv: list[tuple[str, str]] = []
    for ev in events:
        own = _own_id(ev)
        if (ev.event_name, ev.event_id) in added:
            rv.append((ev.event_name, ev.event_id))
        elif own is not None and (own.event_name, own.event_id) in added:
            rv.append((own.event_name, own.event_id))
    return rv


def _richness(event: CanonicalEvent) -> int:
    """How many customer information keys an event carries: more is a better match."""
    return len(event.to_meta().get("user_data") or {})


def _receipt_params(receipt: ReceiptIn, now: datetime) -> dict[str, Any]:
    return {
        "platform": receipt.platform,
        "connection_id": receipt.connection_id,
        "delivery_id": receipt.delivery_id,
        "topic": receipt.topic,
        "event_ref": receipt.event_ref,
        "api_version": receipt.api_version,
        "triggered_at": receipt.triggered_at,
        "received_at": now,
        "outcome": receipt.outcome,
        "detail": receipt.detail,
        "order_ref": receipt.order_ref,
        "customer_ref": receipt.customer_ref,
    }


_NO_GUARD: dict[str, Any] = {
    "guarded": False,
    "guard_status": None,
    "guard_store": None,
    "guard_settings": None,
    "guard_test_event_code": None,
    "guard_webhook_secret": None,
}


def _guard_params(guard: ConnectionGuard | None) -> dict[str, Any]:
    if guard is None:
        return _NO_GUARD
    return {
        "guarded": True,
        "guard_status": guard.status,
        "guard_store": guard.store,
        "guard_settings": guard.settings,
        "guard_test_event_code": guard.test_event_code,
        "guard_webhook_secret": guard.webhook_secret,
    }


def _record_delivery_pg(
    db: Session | DBConnection,
    receipt: ReceiptIn,
    events: Sequence[CanonicalEvent],
    now: datetime,
    guard: ConnectionGuard | None,
) -> Accepted:
    metas = [ev.to_meta() for ev in events]
    rows = db.execute(
        _RECORD_DELIVERY_PG,
        {
            **_receipt_params(receipt, now),
            **_guard_params(guard),
            "events": jsoncodec.dumps_text(
                [
                    {
                        "event_name": ev.event_name,
                        "event_id": ev.event_id,
                        "event_time": ev.event_time.isoformat(),
                        "payload": meta,
                        "order_ref": ev.order_ref,
                        "customer_ref": ev.customer_ref,
                        "match_keys": key_mask(ev.user_data),
                    }
                    for ev, meta in zip(events, metas, strict=True)
                ]
            ),
            "purchase": PURCHASE,
            "refresh": jsoncodec.dumps_text(
                [
                    {
                        "event_name": ev.event_name,
                        "event_id": ev.event_id,
                        "event_time": ev.event_time.isoformat(),
                        "payload": meta,
                        "customer_ref": ev.customer_ref,
                        "richness": _richness(ev),
                        "match_keys": key_mask(ev.user_data),
                    }
                    for ev, meta in zip(events, metas, strict=True)
                    if ev.event_name in REFRESHABLE_EVENTS
                ]
            ),
        },
    ).all()
    if not rows[0][0]:
        return Accepted(duplicate_delivery=False, connection_changed=True)
    receipt_id = rows[0][1]
    if receipt_id is None:
        return Accepted(duplicate_delivery=True)
    refreshed = int(rows[0][2] or 0)
    added = {(name, event_id) for _, _, _, name, event_id in rows if name is not None}
    new = _new_events(events, added)
    return Accepted(
        duplicate_delivery=False,
        receipt_id=int(receipt_id),
        new_events=new,
        refreshed_events=refreshed,
    )


def _outbox_row(
    receipt: ReceiptIn, ev: CanonicalEvent, now: datetime
) -> dict[str, Any]:
    return {
        "connection_id": receipt.connection_id,
        "event_name": ev.event_name,
        "event_id": ev.event_id,
        "event_time": ev.event_time,
        "payload": ev.to_meta(),
        "status": EventStatus.PENDING.value,
        "attempts": 0,
        "send_count": 0,
        "next_attempt_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "last_error": None,
        "events_received": None,
        "fbtrace_id": None,
        "sent_at": None,
        "created_at": now,
        "order_ref": ev.order_ref,
        "customer_ref": ev.customer_ref,
        "match_keys": key_mask(ev.user_data),
    }


def record_delivery(
    session: Session | DBConnection,
    receipt: ReceiptIn,
    events: Sequence[CanonicalEvent],
    *,
    now: datetime | None = None,
    guard: ConnectionGuard | None = None,
) -> Accepted:
    """Record a receipt and its events atomically; report what was new.

    Within the caller's transaction when there is one; on PostgreSQL it is a single statement,
    so it is atomic on an autocommit connection too. Nothing is recorded, and the answer says
    ``connection_changed``, when the connection no longer exists or (with a ``guard``) no
    longer holds the guard's values. An event of :data:`REFRESHABLE_EVENTS`
    already in the outbox and still untouched (pending, never leased or tried) takes the new
    delivery's payload when it carries at least as many customer information keys; an event
    sent, being sent or tried keeps what it had, so nothing is sent twice. A Purchase whose
    event id another order already holds is recorded under its own order id (see
    :func:`_own_id`): a copied id never merges two orders.
    """
    now = now or utcnow()
    dialect = _dialect(session)
    if dialect == "postgresql":
        return _record_delivery_pg(session, receipt, events, now, guard)
    if (
        session.execute(
            _GUARD_SQLITE,
            {"connection_id": receipt.connection_id, **_guard_params(guard)},
        ).first()
        is None
    ):
        return Accepted(duplicate_delivery=False, connection_changed=True)
    # Core statements on the tables, built once: this is the webhook hot path.
    add_receipt, _ = _delivery_statements(dialect)
    receipt_row = session.execute(add_receipt, _receipt_params(receipt, now)).first()
    if receipt_row is None:
        return Accepted(duplicate_delivery=True)
    if not events:
        return Accepted(duplicate_delivery=False, receipt_id=int(receipt_row[0]))
    new, refreshed = _record_events(session, dialect, receipt, events, now)
    return Accepted(
        duplicate_delivery=False,
        receipt_id=int(receipt_row[0]),
        new_events=new,
        refreshed_events=refreshed,
    )


def _record_events(
    session: Session | DBConnection,
    dialect: str,
    receipt: ReceiptIn,
    events: Sequence[CanonicalEvent],
    now: datetime,
) -> tuple[list[tuple[str, str]], int]:
    """The events of a recorded receipt, statement by statement in the caller's transaction.

    The same rules as :data:`_RECORD_DELIVERY_PG`: refresh what may be refreshed, insert the
    rest, and a Purchase whose id another order holds under its own order id. Returns the
    (event_name, event_id) pairs added and the count refreshed.
    """
    _, add_events = _delivery_statements(dialect)
    refresh = _REFRESH_PG if dialect == "postgresql" else _REFRESH_SQLITE
    refreshed = 0
    for ev in events:
        if ev.event_name in REFRESHABLE_EVENTS:
            refreshed += len(
                session.execute(
                    refresh,
                    {
                        "payload": ev.to_meta(),
                        "event_time": ev.event_time,
                        "customer_ref": ev.customer_ref,
                        "connection_id": receipt.connection_id,
                        "event_name": ev.event_name,
                        "event_id": ev.event_id,
                        "richness": _richness(ev),
                        "match_keys": key_mask(ev.user_data),
                    },
                ).all()
            )
    rows = [_outbox_row(receipt, ev, now) for ev in events]
    inserted = session.execute(add_events, rows).all()
    added = {(name, event_id) for name, event_id in inserted}
    for ev in events:
        own = _own_id(ev)
        if own is None or (ev.event_name, ev.event_id) in added:
            continue
        holder = session.execute(
            _TAKEN_BY,
            {
                "connection_id": receipt.connection_id,
                "event_name": ev.event_name,
                "event_id": ev.event_id,
            },
        ).first()
        if holder is not None and holder[0] != ev.order_ref:
            again = session.execute(add_events, [_outbox_row(receipt, own, now)]).all()
            added.update((name, event_id) for name, event_id in again)
    return _new_events(events, added), refreshed


# PostgreSQL, a delivery whose translation waits for the worker (connector.inbox): the
# receipt and the sealed body in one statement: the same guarded receipt as _RECORD_DELIVERY_PG.
_RECORD_WAITING_PG = text(
    _RECEIPT_UNDER_GUARD  # noqa: S608 - two constants joined: no input reaches the SQL
    + """, b AS (
        INSERT INTO webhook_bodies (receipt_id, sealed, attempts, available_at)
        SELECT r.id, :sealed, 0, CAST(:received_at AS timestamptz) FROM r
        RETURNING receipt_id
    )
    SELECT (SELECT count(*) FROM g), (SELECT id FROM r), (SELECT count(*) FROM b)
    """
)

#: the outcome of a receipt whose body waits for the worker
WAITING = "waiting"


def record_waiting_delivery(
    db: Session | DBConnection,
    receipt: ReceiptIn,
    sealed: bytes,
    *,
    now: datetime,
    guard: ConnectionGuard | None = None,
) -> Accepted:
    """PostgreSQL: record a verified delivery as waiting, with its sealed body, atomically.

    One statement, so one round trip on an autocommit connection. The receipt's outcome is
    :data:`WAITING` until :func:`record_translation` replaces it. Nothing is recorded, and
    the answer says ``connection_changed``, when the connection is gone or no longer holds
    ``guard``'s values; a repeated delivery id records nothing and says so.
    """
    row = db.execute(
        _RECORD_WAITING_PG,
        {
            **_receipt_params(receipt, now),
            "outcome": WAITING,
            **_guard_params(guard),
            "sealed": sealed,
        },
    ).one()
    if not row[0]:
        return Accepted(duplicate_delivery=False, connection_changed=True)
    if row[1] is None:
        return Accepted(duplicate_delivery=True)
    return Accepted(duplicate_delivery=False, receipt_id=int(row[1]))


_TRANSLATED_PG = text(
    """
    WITH gone AS (DELETE FROM webhook_bodies WHERE receipt_id = :receipt_id)
    UPDATE webhook_receipts SET outcome = :outcome, detail = :detail,
        order_ref = :order_ref, customer_ref = :customer_ref
    WHERE id = :receipt_id
    """
)


def record_translation(
    session: Session | DBConnection,
    receipt_id: int,
    receipt: ReceiptIn,
    events: Sequence[CanonicalEvent],
    *,
    received_at: datetime,
) -> Accepted:
    """A waiting receipt's translation: its outcome, its events, and its body deleted.

    In the caller's transaction, so the events and the body's deletion commit together: a
    worker that dies midway leaves the body to translate again, never half its events.
    Events keep the delivery's ``received_at`` as their creation time.
    """
    dialect = _dialect(session)
    receipts = cast(Table, WebhookReceipt.__table__)
    bodies = cast(Table, WebhookBody.__table__)
    outcome = {
        "outcome": receipt.outcome,
        "detail": receipt.detail,
        "order_ref": receipt.order_ref,
        "customer_ref": receipt.customer_ref,
    }
    if dialect == "postgresql":
        # One round trip: the body goes in the statement that records the outcome.
        session.execute(_TRANSLATED_PG, {"receipt_id": receipt_id, **outcome})
    else:
        session.execute(
            update(receipts).where(receipts.c.id == receipt_id).values(**outcome)
        )
        session.execute(delete(bodies).where(bodies.c.receipt_id == receipt_id))
    if not events:
        return Accepted(duplicate_delivery=False, receipt_id=receipt_id)
    new, refreshed = _record_events(session, dialect, receipt, events, received_at)
    return Accepted(
        duplicate_delivery=False,
        receipt_id=receipt_id,
        new_events=new,
        refreshed_events=refreshed,
    )


# -- connections ------------------------------------------------------------------------


def get_connection(session: Session, connection_id: str) -> Connection:
    conn = session.get(Connection, connection_id)
    if conn is None:
        raise NotFoundError(f"no connection {connection_id}")
    return conn


def find_connection(session: Session, platform: str, store: str) -> Connection | None:
    return session.scalars(
        select(Connection).where(
            Connection.platform == platform, Connection.store == store
        )
    ).one_or_none()


def list_connections(session: Session) -> list[Connection]:
    return list(session.scalars(select(Connection).order_by(Connection.created_at)))


def upsert_connection(
    session: Session, platform: str, store: str, **fields: Any
) -> Connection:
    """Create the store's connection, or update it when the store connects again."""
    conn = find_connection(session, platform, store)
    if conn is None:
        conn = Connection(platform=platform, store=store, settings={})
        session.add(conn)
    for name, value in fields.items():
        setattr(conn, name, value)
    if conn.status == ConnectionStatus.UNINSTALLED:
        # Connected again (a reinstall, or added by hand): the uninstall no longer applies.
        conn.status = ConnectionStatus.ACTIVE
        conn.status_reason = None
        conn.uninstalled_at = None
        conn.installed_at = utcnow()
    session.flush()
    return conn


def mark_uninstalled(
    session: Session, conn: Connection, *, now: datetime | None = None
) -> None:
    """The app was removed: forget platform credentials, stop sending, keep the outbox."""
    conn.status = ConnectionStatus.UNINSTALLED
    conn.status_reason = "the app was uninstalled from the store"
    conn.uninstalled_at = now or utcnow()
    conn.platform_token = None
    conn.platform_refresh_token = None
    conn.platform_token_expires_at = None
    conn.platform_refresh_token_expires_at = None
    session.execute(
        update(Event)
        # Rows a worker is sending now are left to it: it records Meta's answer, and the
        # worker holds the connection's rows from its next claim on.
        .where(Event.connection_id == conn.id, Event.status == EventStatus.PENDING)
        .values(status=EventStatus.HELD, last_error="held: the app was uninstalled")
    )


def redact_customer(
    session: Session,
    connection_id: str,
    customer_ref: str | None,
    order_refs: Sequence[str],
) -> tuple[int, int]:
    """Delete one customer's events and receipts; returns (events, receipts) deleted."""
    conditions_e = []
    conditions_r = []
    if customer_ref:
        conditions_e.append(Event.customer_ref == customer_ref)
        conditions_r.append(WebhookReceipt.customer_ref == customer_ref)
    if order_refs:
        conditions_e.append(Event.order_ref.in_(list(order_refs)))
        conditions_r.append(WebhookReceipt.order_ref.in_(list(order_refs)))
    if not conditions_e:
        return 0, 0

    ev = session.execute(
        delete(Event).where(Event.connection_id == connection_id, or_(*conditions_e))
    )
    rc = session.execute(
        delete(WebhookReceipt).where(
            WebhookReceipt.connection_id == connection_id, or_(*conditions_r)
        )
    )
    return int(ev.rowcount or 0), int(rc.rowcount or 0)  # type: ignore[attr-defined]


def redact_store(session: Session, connection_id: str) -> None:
    """Delete everything held for a store, the connection included."""
    session.execute(delete(Event).where(Event.connection_id == connection_id))
    session.execute(
        delete(WebhookReceipt).where(WebhookReceipt.connection_id == connection_id)
    )
    session.execute(delete(OAuthState).where(OAuthState.connection_id == connection_id))
    session.execute(delete(Connection).where(Connection.id == connection_id))


def customer_report(
    session: Session,
    connection_id: str,
    customer_ref: str | None,
    order_refs: Sequence[str],
) -> dict[str, Any]:
    """What is held about one customer: event keys and statuses, never the hashes themselves."""

    conditions = []
    if customer_ref:
        conditions.append(Event.customer_ref == customer_ref)
    if order_refs:
        conditions.append(Event.order_ref.in_(list(order_refs)))
    rows: list[Event] = []
    if conditions:
        rows = list(
            session.scalars(
                select(Event).where(
                    Event.connection_id == connection_id, or_(*conditions)
                )
            )
        )
    return {
        "customer_ref": customer_ref,
        "order_refs": list(order_refs),
        "held": "hashed identifiers (SHA-256) and order value per event; no raw personal data",
        "events": [
            {
                "event_name": r.event_name,
                "event_id": r.event_id,
                "event_time": r.event_time.isoformat(),
                "status": r.status,
                "user_data_keys": sorted((r.payload.get("user_data") or {}).keys()),
            }
            for r in rows
        ],
    }


def event_counts(session: Session) -> dict[str, int]:
    """Outbox rows per status, for /metrics and the admin page."""
    rows = session.execute(select(Event.status, func.count()).group_by(Event.status))
    return {status: int(n) for status, n in rows}


# -- OAuth states -----------------------------------------------------------------------


def _hash_nonce(nonce: str) -> str:
    # surrogatepass: a lone surrogate (JSON "\ud800") hashes instead of raising; no issued
    # nonce contains one, so such a value is simply unknown.
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()


def issue_state(
    session: Session,
    purpose: str,
    *,
    ttl: timedelta = timedelta(minutes=10),
    connection_id: str | None = None,
    store: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """A new single-use state; only its hash is stored, so a database reader cannot replay it."""
    now = now or utcnow()
    nonce = secrets.token_urlsafe(32)
    session.add(
        OAuthState(
            nonce_hash=_hash_nonce(nonce),
            purpose=purpose,
            connection_id=connection_id,
            store=store,
            data=data or {},
            created_at=now,
            expires_at=now + ttl,
        )
    )
    session.flush()
    return nonce


def consume_state(
    session: Session,
    nonce: str,
    purpose: str,
    *,
    connection_id: str | None = None,
    store: str | None = None,
    now: datetime | None = None,
) -> OAuthState:
    """Spend a state exactly once; raises OAuthStateError if forged, used, expired or foreign."""
    now = now or utcnow()
    if not nonce:
        raise OAuthStateError("the sign-in link carries no state")
    if not nonce.isascii():  # issued states are URL-safe ASCII: anything else is forged
        raise OAuthStateError(
            "this sign-in link is not valid or was used already; start again"
        )
    # UPDATE ... WHERE used_at IS NULL: of two concurrent callbacks, only one wins.
    result = session.execute(
        update(OAuthState)
        .where(
            OAuthState.nonce_hash == _hash_nonce(nonce),
            OAuthState.purpose == purpose,
            OAuthState.used_at.is_(None),
        )
        .values(used_at=now)
        .returning(OAuthState.nonce_hash)
    ).first()
    if result is None:
        raise OAuthStateError(
            "this sign-in link is not valid or was used already; start again"
        )
    state = session.get(OAuthState, _hash_nonce(nonce), populate_existing=True)
    if state is None:  # deleted between the two statements (a shop/redact, say)
        raise OAuthStateError("this sign-in link is not valid; start again")
    if state.expires_at <= now:
        raise OAuthStateError("this sign-in link has expired; start again")
    if connection_id is not None and state.connection_id != connection_id:
        raise OAuthStateError("this sign-in link was issued for another connection")
    if store is not None and state.store != store:
        raise OAuthStateError("this sign-in link was issued for another store")
    return state


def release_held(session: Session, conn: Connection) -> int:
    """Held events go back to pending once the connection can send: active, pixel and token.

    Until then they stay held: releasing them would only have the worker hold them again.
    """
    if (
        conn.status != ConnectionStatus.ACTIVE
        or not conn.pixel_id
        or not conn.meta_token
    ):
        return 0
    result = session.execute(
        update(Event)
        .where(Event.connection_id == conn.id, Event.status == EventStatus.HELD)
        .values(status=EventStatus.PENDING, next_attempt_at=utcnow(), lease_owner=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def reactivate(session: Session, conn: Connection) -> int:
    """A fresh Meta token: the connection sends again and its held events go back to pending."""
    if conn.status in (ConnectionStatus.NEEDS_RECONNECT, ConnectionStatus.DISCONNECTED):
        conn.status = ConnectionStatus.ACTIVE
        conn.status_reason = None
    return release_held(session, conn)


def find_state(
    session: Session, nonce: str, purpose: str, *, for_update: bool = False
) -> OAuthState | None:
    """The state issued as ``nonce`` for ``purpose``, spent or not (its flow may still be running)."""
    if not nonce:
        return None
    state = session.get(
        OAuthState,
        _hash_nonce(nonce),
        with_for_update=for_update,
        populate_existing=True,
    )
    return state if state is not None and state.purpose == purpose else None


def spend_once(
    session: Session, key: str, purpose: str, *, expires_at: datetime
) -> bool:
    """Record ``key`` as used; False when it was used before (single-use links).

    ``key`` is already a hash (64 hex characters); the row lives until ``expires_at``, after
    which the thing it spends is refused anyway.
    """
    now = utcnow()
    # Spent links of other days are refused by their expiry alone: forget them.
    session.execute(
        delete(OAuthState).where(
            OAuthState.purpose == purpose,
            OAuthState.expires_at < now - timedelta(days=1),
        )
    )
    table = cast(Table, OAuthState.__table__)
    stmt = (
        _insert(session, table)
        .values(
            nonce_hash=key,
            purpose=purpose,
            data={},
            created_at=now,
            expires_at=expires_at,
            used_at=now,
        )
        .on_conflict_do_nothing(index_elements=["nonce_hash"])
        # RETURNING, not rowcount: the drivers disagree on rowcount after DO NOTHING
        .returning(table.c.nonce_hash)
    )
    return session.execute(stmt).first() is not None


# -- worker heartbeats ------------------------------------------------------------------

#: a worker that has not beaten for this long is taken for dead
WORKER_STALE_AFTER = timedelta(seconds=60)


def beat(
    session: Session, worker_id: str, *, now: datetime, claimed: int, sent: int
) -> None:
    """Record that ``worker_id`` went round its loop at ``now`` (insert or update its row)."""
    table = cast(Table, WorkerHeartbeat.__table__)
    stmt = (
        _insert(session, table)
        .values(
            worker_id=worker_id, started_at=now, beat_at=now, claimed=claimed, sent=sent
        )
        .on_conflict_do_update(
            index_elements=["worker_id"],
            set_={"beat_at": now, "claimed": claimed, "sent": sent},
        )
    )
    session.execute(stmt)
    # Rows of workers long gone would only grow the table.
    session.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.beat_at < now - timedelta(days=1))
    )


def forget_worker(session: Session, worker_id: str) -> None:
    """A worker that stops cleanly removes its heartbeat."""
    session.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id)
    )


def worker_liveness(session: Session, *, now: datetime | None = None) -> dict[str, Any]:
    """Workers alive (a heartbeat within ``WORKER_STALE_AFTER``) and the newest beat's age.

    Shape: ``{"alive": int, "stale": int, "last_beat_seconds": float | None}``; for the
    health check and metrics.
    """
    now = now or utcnow()
    beats = list(session.scalars(select(WorkerHeartbeat.beat_at)))
    alive = sum(1 for b in beats if b >= now - WORKER_STALE_AFTER)
    newest = max(beats, default=None)
    return {
        "alive": alive,
        "stale": len(beats) - alive,
        "last_beat_seconds": None
        if newest is None
        else round(max(0.0, (now - newest).total_seconds()), 1),
    }


# -- refresh leases ---------------------------------------------------------------------


def take_refresh_lease(
    session: Session, connection_id: str, owner: str, *, now: datetime, ttl: timedelta
) -> bool:
    """Take the right to spend the connection's refresh token until ``now + ttl``.

    True when taken: no lease, or one that expired (its holder died). A short transaction
    of its own, so nothing stays locked while the platform is asked.
    """
    table = cast(Table, RefreshLease.__table__)
    until = now + ttl
    taken = session.execute(
        _insert(session, table)
        .values(connection_id=connection_id, owner=owner, expires_at=until)
        .on_conflict_do_update(
            index_elements=["connection_id"],
            set_={"owner": owner, "expires_at": until},
            where=table.c.expires_at <= now,
        )
        .returning(table.c.owner)
    ).first()
    return taken is not None and taken[0] == owner


def drop_refresh_lease(session: Session, connection_id: str, owner: str) -> None:
    """Give the lease back (only this owner's)."""
    session.execute(
        delete(RefreshLease).where(
            RefreshLease.connection_id == connection_id, RefreshLease.owner == owner
        )
    )
