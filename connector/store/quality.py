"""Match quality in the store: daily coverage, Meta's latest scores, warnings (take a Session).

Small query functions a dashboard page or the CLI calls; the rules live in connector.quality.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import Date, Table, delete, func, select
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from connector import quality
from connector.quality import Coverage, DedupWarning, MetaEventQuality
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    MatchCoverageDaily,
    MetaEventScore,
    MetaQualityCheck,
    QualityWarning,
)

#: a connection's Dataset Quality is read again once this much time has passed
RECHECK_AFTER = timedelta(hours=20)


def _start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _as_date(value: Any) -> date:
    # PostgreSQL answers a date, SQLite's date() a "YYYY-MM-DD" string.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# -- coverage -------------------------------------------------------------------------------


def refresh_coverage(
    session: Session,
    *,
    since: date,
    until: date,
    now: datetime,
    connection_id: str | None = None,
) -> int:
    """Recount the daily aggregates of ``since``..``until`` (UTC days, inclusive) from the outbox.

    An event counts on the UTC day it was sent (``sent_at``), once, whatever its re-sends.
    Rows of those days are replaced; returns how many aggregate rows were written.
    """
    start, end = _start(since), _start(until + timedelta(days=1))
    dialect = session.get_bind().dialect.name
    # The UTC day in SQL, so the database groups and only a few rows come back.
    day_of = (
        sa_cast(func.timezone("UTC", Event.sent_at), Date)
        if dialect == "postgresql"
        else func.date(Event.sent_at)  # SQLite keeps naive UTC
    )
    where = [
        Event.status == EventStatus.SENT,
        Event.sent_at >= start,
        Event.sent_at < end,
    ]
    if connection_id is not None:
        where.append(Event.connection_id == connection_id)
    grouped = (
        select(
            Event.connection_id,
            Event.event_name,
            day_of.label("day"),
            Event.match_keys,
            func.count().label("n"),
        )
        .where(*where, Event.match_keys.is_not(None))
        .group_by(Event.connection_id, Event.event_name, day_of, Event.match_keys)
    )
    masks: dict[tuple[str, date, str], Counter[int]] = defaultdict(Counter)
    for row in session.execute(grouped):
        key = (row.connection_id, _as_date(row.day), row.event_name)
        masks[key][row.match_keys] += int(row.n)
    # Events recorded before match_keys existed: read their keys from the stored payload.
    legacy = (
        select(Event.connection_id, Event.event_name, Event.sent_at, Event.payload)
        .where(*where, Event.match_keys.is_(None))
        .execution_options(yield_per=500)
    )
    for row in session.execute(legacy):
        key = (row.connection_id, row.sent_at.astimezone(UTC).date(), row.event_name)
        masks[key][quality.key_mask((row.payload or {}).get("user_data") or {})] += 1
    table = cast(Table, MatchCoverageDaily.__table__)
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for (conn_id, day, name), values in masks.items():
        events, counts, tenths = quality.aggregate_tally(values)
        fields = {
            "connection_id": conn_id,
            "day": day,
            "event_name": name,
            "events_sent": events,
            "key_counts": counts,
            "estimate_tenths": tenths,
            "updated_at": now,
        }
        # An upsert: the worker's recount and `connector quality` may run at the same time.
        stmt = insert(table).values(fields)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["connection_id", "day", "event_name"],
                set_={
                    k: getattr(stmt.excluded, k)
                    for k in (
                        "events_sent",
                        "key_counts",
                        "estimate_tenths",
                        "updated_at",
                    )
                },
            )
        )
    # Days and names with no sent event left (a privacy request deleted them) go.
    stale = select(
        MatchCoverageDaily.id,
        MatchCoverageDaily.connection_id,
        MatchCoverageDaily.day,
        MatchCoverageDaily.event_name,
    ).where(MatchCoverageDaily.day >= since, MatchCoverageDaily.day <= until)
    if connection_id is not None:
        stale = stale.where(MatchCoverageDaily.connection_id == connection_id)
    gone = [
        r.id
        for r in session.execute(stale)
        if (r.connection_id, r.day, r.event_name) not in masks
    ]
    if gone:
        session.execute(
            delete(MatchCoverageDaily).where(MatchCoverageDaily.id.in_(gone))
        )
    session.flush()
    return len(masks)


def coverage_by_day(
    session: Session, connection_id: str, *, since: date, until: date
) -> list[Coverage]:
    """Per UTC day and event name, oldest first: events sent and how many carried each key."""
    rows = session.scalars(
        select(MatchCoverageDaily)
        .where(
            MatchCoverageDaily.connection_id == connection_id,
            MatchCoverageDaily.day >= since,
            MatchCoverageDaily.day <= until,
        )
        .order_by(MatchCoverageDaily.day, MatchCoverageDaily.event_name)
    )
    return [
        Coverage(
            day=r.day.isoformat(),
            event_name=r.event_name,
            events_sent=r.events_sent,
            key_counts={k: int(v) for k, v in (r.key_counts or {}).items()},
            estimate_tenths=r.estimate_tenths,
        )
        for r in rows
    ]


def coverage_by_event(
    session: Session, connection_id: str, *, since: date, until: date
) -> list[Coverage]:
    """The period's coverage summed per event name (``day`` is ``"since..until"``)."""
    totals: dict[str, tuple[int, dict[str, int], int]] = {}
    for c in coverage_by_day(session, connection_id, since=since, until=until):
        events, counts, tenths = totals.get(c.event_name, (0, {}, 0))
        for key, n in c.key_counts.items():
            counts[key] = counts.get(key, 0) + n
        totals[c.event_name] = (
            events + c.events_sent,
            counts,
            tenths + c.estimate_tenths,
        )
    period = f"{since.isoformat()}..{until.isoformat()}"
    return [
        Coverage(
            day=period,
            event_name=name,
            events_sent=events,
            key_counts=counts,
            estimate_tenths=tenths,
        )
        for name, (events, counts, tenths) in sorted(totals.items())
    ]


def top_improvements(
    session: Session, connection_id: str, *, since: date, until: date, limit: int = 3
) -> list[str]:
    """The ``limit`` changes that would raise our estimate most over the period."""
    return quality.improvements(
        coverage_by_day(session, connection_id, since=since, until=until), limit=limit
    )


# -- Meta's scores ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MetaScore:
    """Meta's latest answer for one event name."""

    event_name: str
    composite_score: float | None
    event_coverage: float | None
    match_key_coverage: dict[str, float]
    fetched_at: datetime


def latest_meta_scores(session: Session, connection_id: str) -> list[MetaScore]:
    """Meta's latest Dataset Quality answers for the connection's pixel, by event name."""
    rv = []
    for row in session.scalars(
        select(MetaEventScore)
        .where(MetaEventScore.connection_id == connection_id)
        .order_by(MetaEventScore.event_name)
    ):
        parsed = quality.parse_dataset_quality({"web": [row.answer]})
        keys = dict(parsed[0].match_key_coverage) if parsed else {}
        rv.append(
            MetaScore(
                event_name=row.event_name,
                composite_score=row.composite_score,
                event_coverage=row.event_coverage,
                match_key_coverage=keys,
                fetched_at=row.fetched_at,
            )
        )
    return rv


def last_meta_check(session: Session, connection_id: str) -> MetaQualityCheck | None:
    """How the last Dataset Quality read of the connection went, or None before the first."""
    return session.get(MetaQualityCheck, connection_id)


def token_digest(token: str) -> str:
    """16 hex digits of the token's SHA-256: tells a new token from the old, reveals nothing."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def due_for_meta_check(session: Session, now: datetime) -> list[tuple[str, str, str]]:
    """``(connection id, pixel id, Meta token)`` of connections to read Meta's scores for.

    Due when never read, read over :data:`RECHECK_AFTER` ago, or read with another pixel or
    token: a token without access waits for a new token or pixel or the next day, never
    retried in a loop.
    """
    last = MetaQualityCheck
    rows = session.execute(
        select(Connection, last)
        .outerjoin(last, last.connection_id == Connection.id)
        .where(
            Connection.status == ConnectionStatus.ACTIVE,
            Connection.pixel_id.is_not(None),
            Connection.meta_token.is_not(None),
        )
        .order_by(Connection.id)
    )
    rv = []
    for conn, check in rows:
        pixel, token = conn.pixel_id or "", conn.meta_token or ""
        if (
            check is None
            or check.checked_at < now - RECHECK_AFTER
            or check.pixel_id != pixel
            or check.token_digest != token_digest(token)
        ):
            rv.append((conn.id, pixel, token))
    return rv


def record_meta_check(
    session: Session,
    connection_id: str,
    *,
    pixel_id: str,
    token: str,
    outcome: str,
    detail: str | None,
    now: datetime,
) -> None:
    """Keep how this read went: ``ok``, ``no_access`` or ``error``, with a reason."""
    row = session.get(MetaQualityCheck, connection_id)
    if row is None:
        row = MetaQualityCheck(connection_id=connection_id)
        session.add(row)
    row.pixel_id = pixel_id
    row.token_digest = token_digest(token)
    row.checked_at = now
    row.outcome = outcome
    row.detail = detail[:2000] if detail else None


def save_meta_scores(
    session: Session,
    connection_id: str,
    *,
    pixel_id: str,
    events: Sequence[MetaEventQuality],
    now: datetime,
) -> None:
    """Replace the connection's stored answers with Meta's latest ones."""
    session.execute(
        delete(MetaEventScore).where(MetaEventScore.connection_id == connection_id)
    )
    seen: set[str] = set()
    for q in events:
        if q.event_name in seen:
            continue
        seen.add(q.event_name)
        session.add(
            MetaEventScore(
                connection_id=connection_id,
                pixel_id=pixel_id,
                event_name=q.event_name,
                composite_score=q.composite_score,
                event_coverage=q.event_coverage,
                answer=dict(q.raw),
                fetched_at=now,
            )
        )
    session.flush()


# -- warnings ---------------------------------------------------------------------------------


def set_warnings(
    session: Session,
    connection_id: str,
    warnings: Sequence[DedupWarning],
    now: datetime,
) -> None:
    """Make ``warnings`` the connection's active ones: new ones raised, gone ones cleared."""
    current = {
        (w.kind, w.event_name): w
        for w in session.scalars(
            select(QualityWarning).where(QualityWarning.connection_id == connection_id)
        )
    }
    wanted = {(w.kind, w.event_name): w for w in warnings}
    for key, w in wanted.items():
        row = current.get(key)
        if row is None:
            session.add(
                QualityWarning(
                    connection_id=connection_id,
                    kind=w.kind,
                    event_name=w.event_name,
                    message=w.message,
                    raised_at=now,
                )
            )
        else:
            if row.cleared_at is not None:
                row.raised_at = now
            row.message = w.message
            row.cleared_at = None
    for key, row in current.items():
        if key not in wanted and row.cleared_at is None:
            row.cleared_at = now
    session.flush()


def active_warnings(session: Session, connection_id: str) -> list[dict[str, Any]]:
    """The connection's warnings not yet cleared: kind, event name, message, raised at."""
    return [
        {
            "kind": w.kind,
            "event_name": w.event_name,
            "message": w.message,
            "raised_at": w.raised_at.isoformat(),
        }
        for w in session.scalars(
            select(QualityWarning)
            .where(
                QualityWarning.connection_id == connection_id,
                QualityWarning.cleared_at.is_(None),
            )
            .order_by(QualityWarning.raised_at, QualityWarning.id)
        )
    ]


# -- one connection's report (the CLI and a dashboard) ---------------------------------------


def report(
    session: Session, connection_id: str, *, since: date, until: date
) -> dict[str, Any]:
    """A JSON-safe picture of one connection's match quality over ``since``..``until``.

    ``{"connection": {id, platform, store, pixel_id}, "period": {since, until},
    "events": [{event_name, events_sent, coverage: {key: 0-1}, our_estimate}],
    "meta": {checked_at, outcome, detail, scores: [{event_name, composite_score,
    event_coverage, match_key_coverage, fetched_at}]} | None, "warnings": [...],
    "improvements": [...]}``. Coverage shares are fractions of the events sent.
    """
    conn = session.get(Connection, connection_id)
    if conn is None:
        raise ValueError(f"no connection {connection_id}")
    totals = coverage_by_event(session, connection_id, since=since, until=until)
    check = last_meta_check(session, connection_id)
    if check is not None and check.pixel_id != conn.pixel_id:
        check = None  # read for the pixel before; the new one is not read yet
    return {
        "connection": {
            "id": conn.id,
            "platform": conn.platform,
            "store": conn.store,
            "pixel_id": conn.pixel_id,
        },
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "events": [
            {
                "event_name": c.event_name,
                "events_sent": c.events_sent,
                "coverage": {k: round(c.share(k), 4) for k in quality.MATCH_KEYS},
                "our_estimate": c.average_estimate,
            }
            for c in totals
        ],
        "meta": None
        if check is None
        else {
            "checked_at": check.checked_at.isoformat(),
            "outcome": check.outcome,
            "detail": check.detail,
            "scores": [
                {
                    "event_name": s.event_name,
                    "composite_score": s.composite_score,
                    "event_coverage": s.event_coverage,
                    "match_key_coverage": s.match_key_coverage,
                    "fetched_at": s.fetched_at.isoformat(),
                }
                for s in latest_meta_scores(session, connection_id)
            ],
        },
        "warnings": active_warnings(session, connection_id),
        "improvements": top_improvements(
            session, connection_id, since=since, until=until
        ),
    }
