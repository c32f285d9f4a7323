"""Order sweeps: find every paid order at the store itself, and enqueue what the outbox lacks.

Webhooks are best effort (WooCommerce never retries a failed delivery and disables a webhook
after five failures in a row; Shopify retries for about 4 hours, then gives up). The sweep
reads each connection's recently updated orders through the platform's API and puts every
one through the same translation, test-order and paid rules and the same unique keys as a
webhook (``queries.record_delivery``), so an order that arrives both ways is sent once.

The platform part (listing orders, shaped as the platform's webhook body; checking the
store's webhooks) is the adapter's, through the :class:`OrderSource` protocol; this module
knows no platform.

High-water mark: ``sweep_states.swept_until`` per connection. A sweep reads orders updated
after ``swept_until - OVERLAP`` (a store's search index lags its writes by seconds to
minutes) up to the time it started, and moves the mark only once every order it read has
been recorded; an interrupted or failed sweep leaves it, and the next one reads again.
A connection never swept starts at its install time, at most ``FIRST_LOOKBACK`` back.

Only events Meta would still accept are enqueued (7 days; 62 days for ``physical_store``
events, https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event#event-time);
older ones are counted as skipped ("too old for Meta"), never stored to be dead-lettered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import and_, or_, select

from connector import jobs, registry
from connector.errors import ConnectorError
from connector.events import CanonicalEvent
from connector.platform import ConnectionInfo, PeriodicJob
from connector.retry import check_event_time
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    SweepState,
    WebhookRepair,
)

log = logging.getLogger(__name__)

#: re-read this much before the high-water mark: the store's search index lags its writes
OVERLAP = timedelta(minutes=10)
#: a connection never swept is read from its install time, at most this far back
FIRST_LOOKBACK = timedelta(days=7)
#: the sweep job's default interval (seconds); CONNECTOR_SWEEP_INTERVAL overrides it
DEFAULT_INTERVAL_SECONDS = 900.0
#: orders recorded per transaction
WRITE_BATCH = 100
#: the delivery id prefix of an order found by a sweep (its receipt, one per order)
DELIVERY_PREFIX = "sweep:"

SKIP_TOO_OLD = "too old for Meta (its 7-day window has passed)"


@dataclass(frozen=True, kw_only=True)
class FoundOrder:
    """An order a sweep read, shaped as the platform's webhook body for ``topic``."""

    ref: str
    topic: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Repair:
    """A webhook found missing or disabled at the store, and what was done."""

    topic: str
    #: reactivated | recreated | failed
    action: str
    detail: str


@runtime_checkable
class OrderSource(Protocol):
    """What an adapter offers for sweeps (the Shopify and WooCommerce adapters do)."""

    def sweep_orders(
        self, runtime: Runtime, connection_id: str, since: datetime, until: datetime
    ) -> Iterator[FoundOrder]:
        """Every order updated in ``[since, until]``, page by page.

        Raises:
            PlatformError: the store cannot be read (unreachable, refused, no credentials).
        """

    def repair_webhooks(self, runtime: Runtime, connection_id: str) -> list[Repair]:
        """Re-activate or re-create the connection's webhooks that are disabled or gone."""


@dataclass
class SweepCounts:
    """What a sweep did: orders scanned, events enqueued, already present, skipped by reason."""

    scanned: int = 0
    enqueued: int = 0
    present: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "enqueued": self.enqueued,
            "present": self.present,
            "skipped": dict(self.skipped),
        }

    def summary(self) -> str:
        """One line: ``scanned 50, enqueued 48, already present 1, skipped 1 (reason: 1)``."""
        line = (
            f"scanned {self.scanned}, enqueued {self.enqueued}, "
            f"already present {self.present}, skipped {sum(self.skipped.values())}"
        )
        if self.skipped:
            reasons = "; ".join(f"{r}: {n}" for r, n in self.skipped.most_common())
            line += f" ({reasons})"
        return line


Progress = Callable[[SweepCounts], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_since(text: str) -> timedelta:
    """``3d``, ``12h``, ``90m`` -> a timedelta; ValueError otherwise."""
    text = text.strip().lower()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError("give a period like 3d, 12h or 90m")
    amount = int(text[:-1])
    if amount <= 0:
        raise ValueError("the period must be positive")
    return timedelta(**{units[text[-1]]: amount})


def source_for(platform: str) -> OrderSource | None:
    """The platform's sweep support, or None when it has none."""
    adapter = registry.get_adapter(platform)
    return adapter if isinstance(adapter, OrderSource) else None


def _info(conn: Connection) -> ConnectionInfo:
    return ConnectionInfo(
        id=conn.id,
        platform=conn.platform,
        store=conn.store,
        settings=dict(conn.settings or {}),
        test_mode=bool(conn.test_event_code),
    )


def _outside_window(event: CanonicalEvent, now: datetime) -> bool:
    return (
        check_event_time(event.event_time, now, action_source=event.action_source)
        is not None
    )


def _present(runtime: Runtime, connection_id: str, event: CanonicalEvent) -> bool:
    keys = [
        and_(Event.event_name == event.event_name, Event.event_id == event.event_id)
    ]
    if event.order_ref:
        keys.append(
            and_(
                Event.event_name == event.event_name, Event.order_ref == event.order_ref
            )
        )
    with runtime.sessions() as s:
        found = s.execute(
            select(Event.id).where(Event.connection_id == connection_id, or_(*keys))
        ).first()
    return found is not None


def sweep_connection(
    runtime: Runtime,
    connection_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: Callable[[], datetime] = utcnow,
) -> SweepCounts:
    """Read the connection's orders updated since ``since`` and enqueue what is missing.

    Without ``since`` this is the periodic sweep: it starts at the high-water mark (minus
    ``OVERLAP``) and advances it when done. With ``since`` (a backfill) the mark is left
    alone. ``dry_run`` enqueues nothing and records nothing. ``progress`` is called after
    every order.

    Raises:
        NotFoundError: no such connection, or its platform has no sweep.
        PlatformError: the store could not be read (the mark is left where it was).
    """
    started = now()
    until = until or started
    with runtime.sessions() as s:
        conn = queries.get_connection(s, connection_id)
        info = _info(conn)
        state = s.get(SweepState, connection_id)
        mark = state.swept_until if state else None
        installed = conn.installed_at
    source = source_for(info.platform)
    if source is None:
        raise ConnectorError(f"the {info.platform} platform has no order sweep")
    periodic = since is None
    if since is None:
        since = mark - OVERLAP if mark else max(installed, started - FIRST_LOOKBACK)
    adapter = registry.get_adapter(info.platform)
    counts = SweepCounts()
    batch: list[_Pending] = []
    for found in source.sweep_orders(runtime, connection_id, since, until):
        if jobs.stop_requested():
            log.info("sweep of %s interrupted; its mark stays", connection_id)
            _write(runtime, batch, counts)
            return counts
        counts.scanned += 1
        todo = _one(runtime, adapter, info, found, counts, dry_run=dry_run, now=now())
        if todo is not None:
            batch.append(todo)
        if len(batch) >= WRITE_BATCH:
            _write(runtime, batch, counts)
            batch = []
        if progress is not None:
            progress(counts)
    _write(runtime, batch, counts)
    if progress is not None:
        progress(counts)
    if periodic and not dry_run:
        _record_state(runtime, connection_id, until, counts, error=None)
    return counts


def _one(
    runtime: Runtime,
    adapter: Any,
    info: ConnectionInfo,
    found: FoundOrder,
    counts: SweepCounts,
    *,
    dry_run: bool,
    now: datetime,
) -> _Pending | None:
    """Translate one order; what to record, or None when it is skipped (counted) or a dry run."""
    try:
        outcome = adapter.handle(found.topic, found.payload, info, now)
    except ConnectorError as exc:
        counts.skipped[f"unreadable order: {exc}"[:120]] += 1
        return None
    if not outcome.events:
        counts.skipped[outcome.skipped or "no event"] += 1
        return None
    events = [e for e in outcome.events if not _outside_window(e, now)]
    if not events:
        counts.skipped[SKIP_TOO_OLD] += 1
        return None
    if dry_run:
        if all(_present(runtime, info.id, e) for e in events):
            counts.present += 1
        else:
            counts.enqueued += 1
        return None
    receipt = queries.ReceiptIn(
        platform=info.platform,
        connection_id=info.id,
        delivery_id=f"{DELIVERY_PREFIX}{found.ref}"[:255],
        topic=f"sweep/{found.topic}"[:128],
        outcome="accepted",
        order_ref=outcome.order_ref,
        customer_ref=outcome.customer_ref,
    )
    return _Pending(receipt=receipt, events=events, now=now)


@dataclass(frozen=True, kw_only=True)
class _Pending:
    receipt: queries.ReceiptIn
    events: list[CanonicalEvent]
    now: datetime


def _write(runtime: Runtime, batch: list[_Pending], counts: SweepCounts) -> None:
    """Record a batch of orders in one transaction, through the webhook path's unique keys."""
    if not batch:
        return
    with runtime.sessions.begin() as s:
        results = [
            queries.record_delivery(s, p.receipt, p.events, now=p.now) for p in batch
        ]
    for accepted in results:
        if accepted.new_events:
            counts.enqueued += 1
        else:
            counts.present += 1


def _record_state(
    runtime: Runtime,
    connection_id: str,
    until: datetime | None,
    counts: SweepCounts,
    *,
    error: str | None,
) -> None:
    with runtime.sessions.begin() as s:
        state = s.get(SweepState, connection_id, with_for_update=True)
        if state is None:
            state = SweepState(connection_id=connection_id, last_counts={})
            s.add(state)
        if until is not None and (
            state.swept_until is None or until > state.swept_until
        ):
            state.swept_until = until
        state.last_run_at = utcnow()
        state.last_error = error[:2000] if error else None
        state.last_counts = counts.as_dict()


def record_repairs(runtime: Runtime, connection_id: str, repairs: list[Repair]) -> None:
    """Keep each webhook repair for the dashboard, and log it."""
    if not repairs:
        return
    with runtime.sessions.begin() as s:
        for r in repairs:
            s.add(
                WebhookRepair(
                    connection_id=connection_id,
                    topic=r.topic[:128],
                    action=r.action[:16],
                    detail=r.detail[:2000],
                )
            )
    for r in repairs:
        log.warning(
            "connection %s: webhook %s %s: %s",
            connection_id,
            r.topic,
            r.action,
            r.detail,
        )


def sweepable_connections(runtime: Runtime) -> list[str]:
    """Connections whose platform can be swept and whose store credentials we hold.

    A connection waiting for Meta to be reconnected is swept too: its events are held, not
    lost, and go once the owner reconnects.
    """
    with runtime.sessions() as s:
        rows = s.execute(
            select(Connection.id, Connection.platform).where(
                Connection.status.in_(
                    [ConnectionStatus.ACTIVE, ConnectionStatus.NEEDS_RECONNECT]
                ),
                Connection.platform_token.is_not(None),
            )
        ).all()
    return [cid for cid, platform in rows if _has_source(platform)]


def _has_source(platform: str) -> bool:
    try:
        return source_for(platform) is not None
    except ConnectorError:
        return False


def sweep_all(runtime: Runtime) -> None:
    """The periodic job: check webhooks, then sweep, connection by connection."""
    for connection_id in sweepable_connections(runtime):
        if jobs.stop_requested():
            return
        with runtime.sessions() as s:
            platform = queries.get_connection(s, connection_id).platform
        source = source_for(platform)
        if source is None:
            continue
        try:
            record_repairs(
                runtime, connection_id, source.repair_webhooks(runtime, connection_id)
            )
        except ConnectorError as exc:
            log.warning("webhook check of %s failed: %s", connection_id, exc)
        try:
            counts = sweep_connection(runtime, connection_id)
        except ConnectorError as exc:
            log.warning("sweep of %s failed: %s", connection_id, exc)
            _record_state(runtime, connection_id, None, SweepCounts(), error=str(exc))
            continue
        log.info("sweep of %s: %s", connection_id, counts.summary())


def periodic_jobs(
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
) -> list[PeriodicJob]:
    """The order sweep (with the webhook check), every ``interval_seconds``."""
    return [
        PeriodicJob(
            name="order-sweep", interval_seconds=interval_seconds, run=sweep_all
        )
    ]
