"""The dashboard's queries: every one bounded by a time window, a limit or an index.

Each function takes a Session and returns plain values, so the pages, the CLI and the
benchmark read the same numbers. Counts come from ``(connection_id, created_at)`` index
ranges; lists from keyset pages on ``(connection_id, id)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from connector.quality import parse_dataset_quality
from connector.retry import check_event_time
from connector.store.models import (
    Connection,
    Event,
    EventStatus,
    MetaEventScore,
    SweepState,
    WebhookRepair,
)

#: the chart's window, and the longest a page looks back
CHART_DAYS: Final = 30
#: events per page of the events list, and the most a page may ask for
PAGE_SIZE: Final = 50
#: the most events one "replay all of a reason" click puts back (a second click does the rest)
REPLAY_LIMIT: Final = 5000
#: how many of the newest dead and held events the overview groups by reason
PROBLEM_SAMPLE: Final = 5000
#: the statuses a person may send again
REPLAYABLE: Final = (EventStatus.DEAD, EventStatus.HELD)
#: the user_data keys Meta scores for a website event, in the order its docs list them
#: (https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters)
MATCH_KEYS: Final = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
)


@dataclass(frozen=True, kw_only=True)
class DayCounts:
    """One day's events by what became of them (created that day)."""

    day: date
    seen: int = 0
    delivered: int = 0
    waiting: int = 0
    held: int = 0
    dead: int = 0


@dataclass(frozen=True, kw_only=True)
class Totals:
    seen: int
    orders: int
    delivered: int
    waiting: int
    held: int
    dead: int


@dataclass(frozen=True, kw_only=True)
class Overview:
    days: list[DayCounts]
    last_7: Totals
    last_30: Totals
    last_delivered_at: datetime | None
    last_delivered_name: str | None
    #: dead and held events grouped by their reason's kind, most first: (kind, count)
    problems: list[tuple[str, str, int]] = field(default_factory=list)


def reason_kind(last_error: str | None) -> str:
    """The grouping key of a dead or held event's reason: the word before its first colon."""
    if not last_error:
        return "unknown"
    head = last_error.split(":", 1)[0].strip()
    return head[:40] if head and " " not in head else "other"


def _status_bucket(status: str) -> str:
    return {
        EventStatus.SENT: "delivered",
        EventStatus.HELD: "held",
        EventStatus.DEAD: "dead",
    }.get(EventStatus(status), "waiting")


def overview(session: Session, connection_id: str, now: datetime) -> Overview:
    """The last 30 days of one connection: per-day counts, 7/30-day totals, last delivery.

    Reads ``(connection_id, created_at)`` index ranges only; days are UTC days.
    """
    start_day = (now - timedelta(days=CHART_DAYS - 1)).date()
    since = datetime.combine(start_day, datetime.min.time(), tzinfo=now.tzinfo)
    day_expr = _day_expr(session)
    rows = session.execute(
        select(day_expr, Event.event_name, Event.status, func.count())
        .where(Event.connection_id == connection_id, Event.created_at >= since)
        .group_by(day_expr, Event.event_name, Event.status)
    ).all()
    per_day: dict[date, Counter[str]] = {}
    orders_by_day: Counter[date] = Counter()
    for raw_day, name, status, n in rows:
        d = _as_date(raw_day)
        bucket = per_day.setdefault(d, Counter())
        bucket["seen"] += int(n)
        bucket[_status_bucket(status)] += int(n)
        if name == "Purchase":
            orders_by_day[d] += int(n)
    days = [
        DayCounts(
            day=start_day + timedelta(days=i),
            **_day_values(per_day, start_day + timedelta(days=i)),
        )
        for i in range(CHART_DAYS)
    ]
    last = session.execute(
        select(Event.sent_at, Event.event_name)
        .where(Event.connection_id == connection_id, Event.sent_at.is_not(None))
        .order_by(Event.sent_at.desc())
        .limit(1)
    ).first()
    return Overview(
        days=days,
        last_7=_totals(days[-7:], orders_by_day),
        last_30=_totals(days, orders_by_day),
        last_delivered_at=last[0] if last else None,
        last_delivered_name=last[1] if last else None,
        problems=problem_groups(session, connection_id),
    )


def _day_values(per_day: Mapping[date, Counter[str]], d: date) -> dict[str, int]:
    c = per_day.get(d, Counter())
    return {k: c[k] for k in ("seen", "delivered", "waiting", "held", "dead")}


def _totals(days: Sequence[DayCounts], orders_by_day: Mapping[date, int]) -> Totals:
    return Totals(
        seen=sum(d.seen for d in days),
        orders=sum(orders_by_day.get(d.day, 0) for d in days),
        delivered=sum(d.delivered for d in days),
        waiting=sum(d.waiting for d in days),
        held=sum(d.held for d in days),
        dead=sum(d.dead for d in days),
    )


def _day_expr(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        # created_at is timestamptz; the UTC calendar day, whatever the server's zone
        return func.date(func.timezone("UTC", Event.created_at))
    return func.date(Event.created_at)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def problem_groups(
    session: Session, connection_id: str, *, limit: int = 20
) -> list[tuple[str, str, int]]:
    """Dead and held events by (status, reason kind), most first; at most ``limit`` groups.

    Counts the newest :data:`PROBLEM_SAMPLE` of them (a backward range of the
    ``(connection_id, status, id)`` index): a store with more sees a lower bound.
    """
    newest = (
        select(Event.status, Event.last_error)
        .where(
            Event.connection_id == connection_id,
            Event.status.in_([str(s) for s in REPLAYABLE]),
        )
        .order_by(Event.id.desc())
        .limit(PROBLEM_SAMPLE)
        .subquery()
    )
    groups: Counter[tuple[str, str]] = Counter()
    for status, error, n in session.execute(
        select(newest.c.status, newest.c.last_error, func.count()).group_by(
            newest.c.status, newest.c.last_error
        )
    ):
        groups[(str(status), reason_kind(error))] += int(n)
    return [(s, k, n) for (s, k), n in groups.most_common(limit)]


@dataclass(frozen=True, kw_only=True)
class EventRow:
    id: int
    event_name: str
    event_id: str
    order_ref: str | None
    status: str
    event_time: datetime
    created_at: datetime
    sent_at: datetime | None
    fbtrace_id: str | None
    attempts: int
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class EventPage:
    rows: list[EventRow]
    #: the id to pass as ``before`` for the next (older) page, or None at the end
    next_before: int | None


def list_events(
    session: Session,
    connection_id: str,
    *,
    query: str = "",
    status: str = "",
    event_name: str = "",
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> EventPage:
    """One page of a connection's events, newest first (keyset on id).

    ``query`` matches an order id / number, an event id or Meta's fbtrace_id exactly
    (each is indexed); ``limit`` is clamped to :data:`PAGE_SIZE`.
    """
    limit = max(1, min(limit, PAGE_SIZE))
    stmt: Select[Any] = select(Event).where(Event.connection_id == connection_id)
    q = query.strip().lstrip("#")
    if q:
        stmt = stmt.where(
            or_(Event.order_ref == q, Event.event_id == q, Event.fbtrace_id == q)
        )
    if status in {str(s) for s in EventStatus}:
        stmt = stmt.where(Event.status == status)
    if event_name:
        stmt = stmt.where(Event.event_name == event_name[:64])
    if before is not None:
        stmt = stmt.where(Event.id < before)
    found = list(session.scalars(stmt.order_by(Event.id.desc()).limit(limit + 1)))
    rows = [_row(e) for e in found[:limit]]
    return EventPage(
        rows=rows, next_before=rows[-1].id if len(found) > limit and rows else None
    )


def _row(e: Event) -> EventRow:
    return EventRow(
        id=e.id,
        event_name=e.event_name,
        event_id=e.event_id,
        order_ref=e.order_ref,
        status=e.status,
        event_time=e.event_time,
        created_at=e.created_at,
        sent_at=e.sent_at,
        fbtrace_id=e.fbtrace_id,
        attempts=e.attempts,
        reason=e.last_error,
    )


@dataclass(frozen=True, kw_only=True)
class EventDetail:
    row: EventRow
    #: which user_data keys were sent (present), never their values
    keys_present: list[str]
    keys_missing: list[str]
    action_source: str | None
    event_source_url: str | None
    custom: dict[str, Any]
    events_received: int | None
    send_count: int
    next_attempt_at: datetime | None
    replayable: bool


def event_detail(
    session: Session, connection_id: str, event_pk: int
) -> EventDetail | None:
    """One event of this connection, with what was sent reduced to key names; None if absent."""
    e = session.scalars(
        select(Event).where(Event.id == event_pk, Event.connection_id == connection_id)
    ).first()
    if e is None:
        return None
    payload = e.payload or {}
    present = present_keys(payload)
    raw_custom = payload.get("custom_data")
    custom: Mapping[str, Any] = raw_custom if isinstance(raw_custom, Mapping) else {}
    shown = {
        k: custom[k]
        for k in ("value", "currency", "content_type", "num_items", "order_id")
        if k in custom
    }
    if isinstance(custom.get("content_ids"), list):
        shown["content_ids"] = ", ".join(str(x) for x in custom["content_ids"][:20])
    return EventDetail(
        row=_row(e),
        keys_present=present,
        keys_missing=[k for k in MATCH_KEYS if k not in present],
        action_source=payload.get("action_source"),
        event_source_url=payload.get("event_source_url"),
        custom=shown,
        events_received=e.events_received,
        send_count=e.send_count,
        next_attempt_at=e.next_attempt_at if e.status == EventStatus.PENDING else None,
        replayable=e.status in REPLAYABLE,
    )


def present_keys(payload: Mapping[str, Any]) -> list[str]:
    """The user_data keys a stored event carries with a non-empty value, in Meta's order."""
    user = payload.get("user_data")
    if not isinstance(user, Mapping):
        return []
    return [k for k in MATCH_KEYS if user.get(k) not in (None, "", [], ())]


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    replayed: int
    too_old: int
    #: more rows matched than one click replays
    more: bool


def replay_events(
    session: Session,
    connection_id: str,
    now: datetime,
    *,
    event_pk: int | None = None,
    status: str | None = None,
    kind: str | None = None,
) -> ReplayResult:
    """Put dead or held events back to pending: one by id, or all of one (status, reason kind).

    Events Meta would refuse as too old stay where they are (counted in ``too_old``): older
    than 7 days, or 62 for ``physical_store`` events (:func:`connector.retry.check_event_time`).
    At most :data:`REPLAY_LIMIT` rows per call.
    """
    statuses = [str(s) for s in REPLAYABLE]
    if status is not None:
        statuses = [s for s in statuses if s == status]
    stmt = select(
        Event.id,
        Event.event_time,
        Event.last_error,
        Event.payload["action_source"].as_string().label("action_source"),
    ).where(Event.connection_id == connection_id, Event.status.in_(statuses))
    if event_pk is not None:
        stmt = stmt.where(Event.id == event_pk)
    candidates = session.execute(stmt.order_by(Event.id).limit(REPLAY_LIMIT * 4)).all()
    if kind is not None:
        candidates = [r for r in candidates if reason_kind(r.last_error) == kind]
    more = len(candidates) > REPLAY_LIMIT
    candidates = candidates[:REPLAY_LIMIT]
    ids = [
        r.id
        for r in candidates
        if check_event_time(r.event_time, now, action_source=r.action_source) is None
    ]
    for start in range(0, len(ids), 1000):
        session.execute(
            update(Event)
            .where(Event.id.in_(ids[start : start + 1000]), Event.status.in_(statuses))
            .values(
                status=EventStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                lease_owner=None,
                lease_expires_at=None,
                last_error=None,
            )
        )
    return ReplayResult(
        replayed=len(ids), too_old=len(candidates) - len(ids), more=more
    )


def set_test_event_code(session: Session, conn: Connection, code: str | None) -> None:
    """Enter test mode with ``code``, or go live with None / "" (the column is cleared).

    Events already waiting keep the code they were made with; events made from now on
    follow the connection. Raises ValueError for a code longer than the column.
    """
    code = (code or "").strip() or None
    if code is not None and len(code) > 64:
        raise ValueError("a test event code is at most 64 characters")
    conn.test_event_code = code


#: the statuses the operator's list counts: small populations, read through their index
OPEN_STATUSES: Final = (
    EventStatus.PENDING,
    EventStatus.SENDING,
    EventStatus.HELD,
    EventStatus.DEAD,
)


@dataclass(frozen=True, kw_only=True)
class StoreRow:
    conn: Connection
    open_counts: dict[str, int]
    last_delivered_at: datetime | None


def store_list(session: Session, *, limit: int = 500) -> list[StoreRow]:
    """Every connection (oldest first, at most ``limit``) with its waiting, held and dead counts.

    Delivered events are not counted here (they are most of the table): each store's last
    delivery comes from its ``(connection_id, sent_at)`` index instead.
    """
    last_sent = (
        select(func.max(Event.sent_at))
        .where(Event.connection_id == Connection.id)
        .scalar_subquery()
    )
    # One small (connection_id, status) index range per store and status: never the
    # delivered majority of the table.
    open_counts = [
        select(func.count())
        .where(Event.connection_id == Connection.id, Event.status == str(status))
        .scalar_subquery()
        for status in OPEN_STATUSES
    ]
    rows = session.execute(
        select(Connection, last_sent, *open_counts)
        .order_by(Connection.created_at)
        .limit(limit)
    ).all()
    return [
        StoreRow(
            conn=row[0],
            open_counts={str(s): int(row[2 + i]) for i, s in enumerate(OPEN_STATUSES)},
            last_delivered_at=row[1],
        )
        for row in rows
    ]


# -- the order sweep, webhook repairs and Meta's quality read ---------------------------------

#: how many of a connection's latest webhook repairs the overview lists
REPAIRS_SHOWN: Final = 3
#: the most event names of Meta's quality answer a page lists (Meta keeps one row per name)
META_NAMES_SHOWN: Final = 50


@dataclass(frozen=True, kw_only=True)
class SweepSummary:
    """The connection's last order sweep: when, what it counted, and why it failed if it did."""

    last_run_at: datetime | None
    #: ``{"scanned", "enqueued", "present", "skipped": {reason: n}}`` as the sweep recorded it
    counts: dict[str, Any]
    failed: bool


def sweep_summary(session: Session, connection_id: str) -> SweepSummary | None:
    """The connection's ``sweep_states`` row (its primary key), or None before its first sweep."""
    state = session.get(SweepState, connection_id)
    if state is None:
        return None
    return SweepSummary(
        last_run_at=state.last_run_at,
        counts=dict(state.last_counts or {}),
        failed=bool(state.last_error),
    )


@dataclass(frozen=True, kw_only=True)
class RepairRow:
    topic: str
    #: reactivated | recreated | failed
    action: str
    repaired_at: datetime


def recent_repairs(
    session: Session, connection_id: str, *, limit: int = REPAIRS_SHOWN
) -> list[RepairRow]:
    """The connection's latest webhook repairs, newest first (its ``connection_id`` index)."""
    rows = session.execute(
        select(WebhookRepair.topic, WebhookRepair.action, WebhookRepair.repaired_at)
        .where(WebhookRepair.connection_id == connection_id)
        .order_by(WebhookRepair.repaired_at.desc(), WebhookRepair.id.desc())
        .limit(max(1, min(limit, 20)))
    ).all()
    return [RepairRow(topic=t, action=a, repaired_at=at) for t, a, at in rows]


@dataclass(frozen=True, kw_only=True)
class MetaEventView:
    """Meta's latest Event Match Quality and dedup feedback for one event name."""

    event_name: str
    #: Meta's Event Match Quality, 0-10, or None when Meta gave none
    composite_score: float | None
    #: percent of the events Meta matched (Meta's ``event_coverage``)
    event_coverage: float | None
    #: dedupe key (``event_id``, ``external_id``, ``fbp``) -> browser / server / overall %
    dedupe: dict[str, dict[str, float | None]]
    fetched_at: datetime


def meta_event_views(session: Session, connection_id: str) -> list[MetaEventView]:
    """Meta's stored Dataset Quality answer per event name (one row each, at most 50)."""
    rv = []
    for row in session.scalars(
        select(MetaEventScore)
        .where(MetaEventScore.connection_id == connection_id)
        .order_by(MetaEventScore.event_name)
        .limit(META_NAMES_SHOWN)
    ):
        parsed = parse_dataset_quality({"web": [row.answer]})
        dedupe = {k: dict(v) for k, v in parsed[0].dedupe.items()} if parsed else {}
        rv.append(
            MetaEventView(
                event_name=row.event_name,
                composite_score=row.composite_score,
                event_coverage=row.event_coverage,
                dedupe=dedupe,
                fetched_at=row.fetched_at,
            )
        )
    return rv
