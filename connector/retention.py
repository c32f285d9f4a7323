"""Data retention: the daily prune of personal data, webhook receipts and spent OAuth states.

What is kept, and for how long (each period an environment variable):

- **Sent events** keep their hashed customer data, IP address and user agent (the payload's
  ``user_data``) for ``CONNECTOR_RETAIN_PERSONAL_DATA_DAYS`` (30) after Meta took them; then
  ``user_data`` is emptied. The row stays: its ``event_id``, ``order_ref`` and unique keys are
  what deduplicates a re-delivered order, and ``order_ref``/``customer_ref`` let Shopify's
  ``customers/redact`` and ``shop/redact`` still find and delete it.
- **Dead and held events** keep theirs until they are replayed, or until Meta can no longer
  take them (Meta refuses events older than 7 days,
  https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event#event-time)
  plus the same period: ``event_time`` older than 7 + 30 days.
- **Webhook receipts** (delivery ids for deduplication) are deleted after
  ``CONNECTOR_RETAIN_RECEIPTS_DAYS`` (7): longer than any platform redelivers (Shopify retries
  a failed delivery for up to 4 hours, https://shopify.dev/docs/apps/build/webhooks/troubleshooting-webhooks;
  WooCommerce does not retry). Receipts of lifecycle deliveries (a customer data request's
  report, a redaction) stay as long as personal data does.
- **OAuth states** go one day after they expired.

Work is done in batches of at most :data:`BATCH_SIZE` rows, each its own short transaction;
on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so a row a worker holds is skipped (and pruned
on a later day), and webhooks and the worker keep writing the outbox meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from connector.platform import PeriodicJob

log = logging.getLogger(__name__)

#: Meta takes events up to 7 days old (connector.retry.check_event_time)
META_WINDOW = timedelta(days=7)
#: rows per transaction
BATCH_SIZE = 1000
#: spent or expired OAuth states are kept this long after expiry, for support questions
STATE_GRACE = timedelta(days=1)
#: the prune runs once a day
PRUNE_INTERVAL_SECONDS = 24 * 3600


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How long each kind of data is kept, in days."""

    personal_data_days: int = 30
    receipts_days: int = 7

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        return cls(
            personal_data_days=settings.retain_personal_data_days,
            receipts_days=settings.retain_receipts_days,
        )


@dataclass(frozen=True, kw_only=True)
class Cutoffs:
    """The moments before which each kind of data goes."""

    sent_before: datetime
    unsendable_before: datetime
    receipts_before: datetime
    action_receipts_before: datetime
    states_before: datetime

    @classmethod
    def at(cls, now: datetime, policy: RetentionPolicy) -> Cutoffs:
        personal = timedelta(days=policy.personal_data_days)
        receipts = timedelta(days=policy.receipts_days)
        return cls(
            sent_before=now - personal,
            unsendable_before=now - META_WINDOW - personal,
            receipts_before=now - receipts,
            action_receipts_before=now - max(receipts, personal),
            states_before=now - STATE_GRACE,
        )


@dataclass(kw_only=True)
class PruneReport:
    """What a prune removed (or, in a dry run, would remove)."""

    dry_run: bool = False
    events_pruned: int = 0
    receipts_deleted: int = 0
    states_deleted: int = 0
    batches: int = 0
    cutoffs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Which rows are due, written out in each statement (no SQL is built from strings):
#   events:   pruned_at IS NULL AND (sent and sent_at < sent_before, or dead/held and
#             event_time < unsendable_before)
#   receipts: outcome <> 'action' and received_at < receipts_before, or received_at <
#             action_receipts_before
#   states:   expires_at < states_before
_PG = {
    "events": """
        WITH batch AS (
            SELECT id FROM events
            WHERE id > :after AND pruned_at IS NULL
              AND ((status = 'sent' AND sent_at < :sent_before)
                   OR (status IN ('dead', 'held') AND event_time < :unsendable_before))
            ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED
        )
        UPDATE events SET
            payload = CAST(jsonb_set(CAST(events.payload AS jsonb), '{user_data}',
                                     CAST('{}' AS jsonb)) AS json),
            pruned_at = :now
        FROM batch WHERE events.id = batch.id
        RETURNING events.id
    """,
    "receipts": """
        DELETE FROM webhook_receipts WHERE id IN (
            SELECT id FROM webhook_receipts
            WHERE id > :after AND ((outcome <> 'action' AND received_at < :receipts_before)
                   OR received_at < :action_receipts_before)
            ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED
        ) RETURNING id
    """,
    "states": """
        DELETE FROM oauth_states WHERE nonce_hash IN (
            SELECT nonce_hash FROM oauth_states WHERE expires_at < :states_before
            LIMIT :n FOR UPDATE SKIP LOCKED
        ) RETURNING 0
    """,
}
# SQLite has one writer at a time: each batch holds the write lock for one short statement.
_SQLITE = {
    "events": """
        UPDATE events SET payload = json_set(payload, '$.user_data', json('{}')),
                          pruned_at = :now
        WHERE id IN (
            SELECT id FROM events
            WHERE id > :after AND pruned_at IS NULL
              AND ((status = 'sent' AND sent_at < :sent_before)
                   OR (status IN ('dead', 'held') AND event_time < :unsendable_before))
            ORDER BY id LIMIT :n
        )
        RETURNING id
    """,
    "receipts": """
        DELETE FROM webhook_receipts WHERE id IN (
            SELECT id FROM webhook_receipts
            WHERE id > :after AND ((outcome <> 'action' AND received_at < :receipts_before)
                   OR received_at < :action_receipts_before)
            ORDER BY id LIMIT :n
        ) RETURNING id
    """,
    "states": """
        DELETE FROM oauth_states WHERE nonce_hash IN (
            SELECT nonce_hash FROM oauth_states WHERE expires_at < :states_before LIMIT :n
        ) RETURNING 0
    """,
}
_COUNTS = {
    "events": """
        SELECT count(*) FROM events
        WHERE pruned_at IS NULL
              AND ((status = 'sent' AND sent_at < :sent_before)
                   OR (status IN ('dead', 'held') AND event_time < :unsendable_before))
    """,
    "receipts": """
        SELECT count(*) FROM webhook_receipts
        WHERE ((outcome <> 'action' AND received_at < :receipts_before)
                   OR received_at < :action_receipts_before)
    """,
    "states": "SELECT count(*) FROM oauth_states WHERE expires_at < :states_before",
}


def _params(cutoffs: Cutoffs, now: datetime, engine: Engine) -> dict[str, Any]:
    values: dict[str, Any] = {**asdict(cutoffs), "now": now}
    if engine.dialect.name == "sqlite":
        # UTCDateTime stores naive UTC on SQLite; compare like with like.
        values = {
            k: v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v
            for k, v in values.items()
        }
    return values


def _batches(
    engine: Engine,
    sql: str,
    params: dict[str, Any],
    batch_size: int,
    between: Callable[[], None],
) -> tuple[int, int]:
    """Run ``sql`` batch after batch, each in its own transaction; (rows, batches)."""
    stmt = text(sql)
    total = batches = 0
    after = 0
    while True:
        with engine.begin() as conn:
            ids = _execute(conn, stmt, {**params, "n": batch_size, "after": after})
        batches += 1
        total += len(ids)
        if len(ids) < batch_size:
            return total, batches
        after = max(ids)
        between()


def _execute(conn: Connection, stmt: Any, params: dict[str, Any]) -> list[int]:
    # Every bound name must be known to the statement: drop the ones it does not use.
    names = set(stmt.compile(dialect=conn.dialect).params)
    return [int(r[0]) for r in conn.execute(stmt, {k: params[k] for k in names})]


def prune(
    engine: Engine,
    policy: RetentionPolicy,
    *,
    now: datetime,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    between: Callable[[], None] = lambda: None,
) -> PruneReport:
    """Remove what the policy no longer keeps, in short batches; a dry run only counts.

    ``now`` is timezone-aware UTC. ``between`` runs between two batches (a pause, a stop
    check). Returns the counts removed.
    """
    cutoffs = Cutoffs.at(now, policy)
    params = _params(cutoffs, now, engine)
    report = PruneReport(
        dry_run=dry_run,
        cutoffs={k: v.isoformat() for k, v in asdict(cutoffs).items()},
    )
    if dry_run:
        with engine.connect() as conn:
            counts = {
                kind: int(
                    conn.execute(
                        text(sql), {k: params[k] for k in _bound_names(conn, sql)}
                    ).scalar_one()
                )
                for kind, sql in _COUNTS.items()
            }
        report.events_pruned = counts["events"]
        report.receipts_deleted = counts["receipts"]
        report.states_deleted = counts["states"]
        return report
    statements = _PG if engine.dialect.name == "postgresql" else _SQLITE
    for kind in ("events", "receipts", "states"):
        n, batches = _batches(engine, statements[kind], params, batch_size, between)
        report.batches += batches
        if kind == "events":
            report.events_pruned = n
        elif kind == "receipts":
            report.receipts_deleted = n
        else:
            report.states_deleted = n
    log.info(
        "prune: personal data removed from %d event(s), %d receipt(s) and %d OAuth state(s) deleted",
        report.events_pruned,
        report.receipts_deleted,
        report.states_deleted,
    )
    return report


def _bound_names(conn: Connection, sql: str) -> set[str]:
    return set(text(sql).compile(dialect=conn.dialect).params)


def run_prune(runtime: Any) -> None:
    """The periodic job: prune with the process's settings, now."""
    prune(
        runtime.engine,
        RetentionPolicy.from_settings(runtime.settings),
        now=datetime.now(UTC),
    )


def periodic_jobs() -> list[PeriodicJob]:
    """The daily prune, for the worker's periodic jobs."""
    return [
        PeriodicJob(
            name="retention.prune",
            interval_seconds=PRUNE_INTERVAL_SECONDS,
            run=run_prune,
        )
    ]
