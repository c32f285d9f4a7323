"""Data retention: personal data, receipts and states go on schedule; deduplication stays."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, text, update

from connector import dispatcher, retention
from connector.cli import cli
from connector.events import CanonicalEvent, UserData
from connector.jobs import collect_periodic_jobs
from connector.retention import RetentionPolicy, prune
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Event, EventStatus, OAuthState, WebhookReceipt
from tests.conftest import fixture_bytes
from tests.test_dispatcher import add_connection, add_events, meta_event
from tests.test_shopify_webhooks import (
    BODY,
    _settings,  # noqa: F401 - the fixture
    deliver,  # noqa: F401 - the fixture
    events,
    order_of_customer_191167,
    receipts,
    shop,  # noqa: F401 - the fixture
)

Deliver = Callable[..., Any]
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = RetentionPolicy(personal_data_days=30, receipts_days=7)


def _row(runtime: Runtime, event_id: str) -> Event:
    with runtime.sessions() as session:
        row = session.scalars(select(Event).where(Event.event_id == event_id)).one()
        return row


@pytest.mark.parametrize(
    ("status", "sent_ago", "event_ago", "pruned"),
    [
        # sent: personal data kept 30 days after Meta took the event
        pytest.param(EventStatus.SENT, 31 * DAY, 32 * DAY, True, id="sent-31-days-ago"),
        pytest.param(
            EventStatus.SENT, 29 * DAY, 30 * DAY, False, id="sent-29-days-ago"
        ),
        # dead and held: kept until Meta's 7-day window plus 30 days is over
        pytest.param(EventStatus.DEAD, None, 38 * DAY, True, id="dead-38-days-old"),
        pytest.param(EventStatus.DEAD, None, 36 * DAY, False, id="dead-36-days-old"),
        pytest.param(EventStatus.HELD, None, 38 * DAY, True, id="held-38-days-old"),
        pytest.param(EventStatus.HELD, None, 8 * DAY, False, id="held-in-window"),
        # pending and sending rows are never touched: they still have to reach Meta or die
        pytest.param(EventStatus.PENDING, None, 60 * DAY, False, id="pending-old"),
        pytest.param(EventStatus.SENDING, None, 60 * DAY, False, id="sending-old"),
    ],
)
def test_personal_data_goes_on_schedule_and_the_row_stays(
    runtime: Runtime,
    status: str,
    sent_ago: timedelta | None,
    event_ago: timedelta,
    pruned: bool,
) -> None:
    """user_data is emptied when its time is up; event_id and the unique keys are kept."""
    conn_id = add_connection(runtime)
    add_events(
        runtime,
        conn_id,
        1,
        event_time=NOW - event_ago,
        status=status,
        sent_at=NOW - sent_ago if sent_ago else None,
        order_ref="order-0",
    )
    report = prune(runtime.engine, POLICY, now=NOW)
    row = _row(runtime, "order-0")
    assert (1 if pruned else 0) == report.events_pruned
    assert (
        {} if pruned else meta_event("order-0", event_time=row.event_time)["user_data"]
    ) == row.payload["user_data"]
    assert ("order-0", "order-0", status) == (row.event_id, row.order_ref, row.status)
    assert (row.pruned_at is not None) == pruned
    assert "Purchase" == row.payload["event_name"]


def _receipt(runtime: Runtime, conn_id: str, age: timedelta, outcome: str) -> None:
    with runtime.sessions.begin() as session:
        session.execute(
            insert(WebhookReceipt).values(
                platform="shopify",
                connection_id=conn_id,
                delivery_id=str(uuid.uuid4()),
                topic="orders/paid"
                if outcome != "action"
                else "customers/data_request",
                received_at=NOW - age,
                outcome=outcome,
            )
        )


@pytest.mark.parametrize(
    ("age", "outcome", "deleted"),
    [
        pytest.param(8 * DAY, "accepted", True, id="accepted-8-days"),
        pytest.param(8 * DAY, "skipped", True, id="skipped-8-days"),
        pytest.param(6 * DAY, "accepted", False, id="accepted-6-days"),
        # a data request's report stays as long as personal data does
        pytest.param(8 * DAY, "action", False, id="action-8-days"),
        pytest.param(31 * DAY, "action", True, id="action-31-days"),
    ],
)
def test_receipts_go_after_the_platforms_retry_windows(
    runtime: Runtime, age: timedelta, outcome: str, deleted: bool
) -> None:
    """Receipts outlive every redelivery (Shopify: 4 hours; WooCommerce: none), then go."""
    conn_id = add_connection(runtime)
    _receipt(runtime, conn_id, age, outcome)
    report = prune(runtime.engine, POLICY, now=NOW)
    assert (1 if deleted else 0) == report.receipts_deleted
    assert (0 if deleted else 1) == len(receipts(runtime))


def test_expired_sign_in_states_go_a_day_after_expiry(runtime: Runtime) -> None:
    """A state expired two days ago is deleted; one expired an hour ago stays."""
    with runtime.sessions.begin() as session:
        for hours in (48, 1):
            queries.issue_state(
                session,
                "shopify_install",
                ttl=timedelta(minutes=10),
                now=NOW - timedelta(hours=hours, minutes=10),
            )
    assert 1 == prune(runtime.engine, POLICY, now=NOW).states_deleted
    with runtime.sessions() as session:
        assert 1 == session.scalar(select(func.count()).select_from(OAuthState))


def test_a_dry_run_counts_and_changes_nothing(runtime: Runtime) -> None:
    """--dry-run reports what would go; the rows are untouched."""
    conn_id = add_connection(runtime)
    add_events(
        runtime,
        conn_id,
        3,
        event_time=NOW - 40 * DAY,
        status=EventStatus.SENT,
        sent_at=NOW - 39 * DAY,
    )
    _receipt(runtime, conn_id, 9 * DAY, "accepted")
    report = prune(runtime.engine, POLICY, now=NOW, dry_run=True)
    assert (3, 1) == (report.events_pruned, report.receipts_deleted)
    assert all(e.pruned_at is None and e.payload["user_data"] for e in events(runtime))
    assert 1 == len(receipts(runtime))


def test_batches_are_bounded(runtime: Runtime) -> None:
    """Work goes in transactions of at most batch_size rows."""
    conn_id = add_connection(runtime)
    add_events(
        runtime,
        conn_id,
        25,
        event_time=NOW - 40 * DAY,
        status=EventStatus.SENT,
        sent_at=NOW - 39 * DAY,
    )
    seen: list[int] = []

    def between() -> None:
        with runtime.sessions() as session:
            seen.append(
                int(
                    session.scalar(
                        select(func.count()).where(Event.pruned_at.is_not(None))
                    )
                    or 0
                )
            )

    report = prune(runtime.engine, POLICY, now=NOW, batch_size=10, between=between)
    assert 25 == report.events_pruned
    assert [10, 20] == seen


def _mark_sent(runtime: Runtime, at: datetime) -> None:
    with runtime.sessions.begin() as session:
        session.execute(update(Event).values(status=EventStatus.SENT, sent_at=at))


def test_a_redelivered_old_order_is_still_refused_after_the_prune(
    deliver: Deliver,  # noqa: F811 - the fixture
    runtime: Runtime,
    shop: str,  # noqa: F811 - the fixture
) -> None:
    """Receipts and personal data gone, the same order delivered again makes no new event."""
    first = deliver("orders/paid", BODY, webhook_id="delivery-1")
    assert 1 == first.get_json()["new_events"]
    now = datetime.now(UTC)
    _mark_sent(runtime, now)
    report = prune(runtime.engine, POLICY, now=now + 40 * DAY)
    assert (1, 1) == (report.events_pruned, report.receipts_deleted)
    assert [] == receipts(runtime)
    again = deliver("orders/paid", BODY, webhook_id="delivery-1")
    other = deliver("orders/updated", BODY, webhook_id="delivery-2")
    assert 0 == again.get_json()["new_events"]
    assert 0 == other.get_json()["new_events"]
    (row,) = events(runtime)
    assert ({}, EventStatus.SENT) == (row.payload["user_data"], row.status)


def test_compliance_webhooks_still_find_pruned_data(
    deliver: Deliver,  # noqa: F811 - the fixture
    runtime: Runtime,
    shop: str,  # noqa: F811 - the fixture
) -> None:
    """customers/redact and shop/redact delete pruned rows as they delete any other."""
    deliver("orders/paid", order_of_customer_191167(299938))
    deliver("orders/paid", BODY)
    now = datetime.now(UTC)
    _mark_sent(runtime, now)
    prune(runtime.engine, POLICY, now=now + 40 * DAY)
    assert all(e.pruned_at is not None for e in events(runtime))
    rv = deliver("customers/redact", fixture_bytes("shopify/customers_redact.json"))
    assert 200 == rv.status_code
    assert ["5012345678901234567"] == [e.event_id for e in events(runtime)]
    deliver("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    assert (
        200
        == deliver("shop/redact", fixture_bytes("shopify/shop_redact.json")).status_code
    )
    assert [] == events(runtime)


def test_connector_prune_on_the_command_line(runtime: Runtime) -> None:
    """`connector prune --dry-run` counts, `connector prune` removes, with the env's periods."""
    conn_id = add_connection(runtime)
    now = datetime.now(UTC)
    add_events(
        runtime,
        conn_id,
        2,
        event_time=now - 20 * DAY,
        status=EventStatus.SENT,
        sent_at=now - 12 * DAY,
    )
    env = {
        "DATABASE_URL": runtime.settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": runtime.settings.encryption_keys[0],
        "CONNECTOR_INSTANCE_PATH": str(runtime.settings.instance_path),
        "CONNECTOR_RETAIN_PERSONAL_DATA_DAYS": "10",
    }
    runner = CliRunner()
    dry = runner.invoke(cli, ["prune", "--dry-run"], env=env)
    assert 0 == dry.exit_code, dry.output
    assert "would remove personal data from 2 event(s)" in dry.output
    done = runner.invoke(cli, ["prune", "--json"], env=env)
    assert 0 == done.exit_code, done.output
    assert 2 == json.loads(done.stdout)["events_pruned"]
    assert all(e.pruned_at is not None for e in events(runtime))


def test_the_worker_runs_the_prune_daily() -> None:
    """The prune is one of the worker's periodic jobs, every 24 hours."""
    jobs = {j.name: j for j in collect_periodic_jobs()}
    assert 24 * 3600 == jobs["retention.prune"].interval_seconds
    assert retention.run_prune is jobs["retention.prune"].run


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("CONNECTOR_RETAIN_PERSONAL_DATA_DAYS", "0", id="personal-zero"),
        pytest.param(
            "CONNECTOR_RETAIN_RECEIPTS_DAYS", "1", id="receipts-inside-retry-window"
        ),
        pytest.param(
            "CONNECTOR_RETAIN_RECEIPTS_DAYS", "seven", id="receipts-not-a-number"
        ),
    ],
)
def test_retention_periods_are_validated(name: str, value: str) -> None:
    """A period that would break deduplication or makes no sense stops the start."""
    from connector.config import Settings
    from connector.errors import ConfigError

    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


# -- at scale, on PostgreSQL -----------------------------------------------------------------

_BULK = text(
    """
    INSERT INTO events (connection_id, event_name, event_id, event_time, payload, status,
        attempts, send_count, next_attempt_at, created_at, sent_at, order_ref, customer_ref)
    SELECT :conn, 'Purchase', 'old-' || g, :old, json_build_object(
            'event_name', 'Purchase', 'event_id', 'old-' || g, 'action_source', 'website',
            'user_data', json_build_object('em', json_build_array(md5(g::text)),
                'client_ip_address', '203.0.113.7', 'client_user_agent', 'Mozilla/5.0')),
        CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'sent' END, 0, 1, :later, :old,
        CASE WHEN g % 10 = 0 THEN NULL ELSE :old END, 'old-' || g, 'c-' || (g % 5000)
    FROM generate_series(1, :n) AS g
    """
)


@pytest.mark.slow
def test_pruning_200000_events_keeps_the_outbox_writable(
    runtime: Runtime, is_postgres: bool
) -> None:
    """200,000 events: old personal data gone, dedup intact, webhooks and the worker write meanwhile."""
    if not is_postgres:
        pytest.skip("row locks and SKIP LOCKED are PostgreSQL's; SQLite has one writer")
    conn_id = add_connection(runtime)
    now = datetime.now(UTC)
    with runtime.engine.begin() as db:
        db.execute(
            _BULK,
            {"conn": conn_id, "old": now - 40 * DAY, "later": now + DAY, "n": 200_000},
        )
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("ANALYZE events"))  # as autovacuum would after such a load
    started, writer_done = threading.Event(), threading.Event()
    writes: list[str] = []

    def between() -> None:
        # After the first batch, let the writer work before the next one starts.
        if not started.is_set():
            started.set()
            writer_done.wait(60)

    def writer() -> None:
        started.wait(60)
        with runtime.engine.connect() as db:
            # Any lock the prune held on the table would fail these writes, not delay them.
            db.execute(text("SET lock_timeout = '2s'"))
            db.commit()
            for i in range(50):
                with db.begin():
                    accepted = queries.record_delivery(
                        db,
                        queries.ReceiptIn(
                            platform="shopify",
                            connection_id=conn_id,
                            delivery_id=f"during-{i}",
                            topic="orders/paid",
                        ),
                        [
                            CanonicalEvent(
                                event_name="Purchase",
                                event_id=f"new-{i}",
                                event_time=now,
                                action_source="website",
                                event_source_url="https://shop.example/",
                                user_data=UserData(client_user_agent="Mozilla/5.0"),
                            )
                        ],
                        now=now,
                    )
                writes.append(accepted.new_events[0][1])
            with db.begin():
                db.execute(
                    text(
                        "UPDATE events SET next_attempt_at = :t WHERE event_id LIKE 'new-%'"
                    ),
                    {"t": now},
                )
        claimed = dispatcher.Dispatcher(runtime).claim()
        writes.append(f"claimed {len(claimed)}")
        writer_done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    report = prune(runtime.engine, POLICY, now=now, between=between)
    thread.join(60)
    assert [f"new-{i}" for i in range(50)] + ["claimed 50"] == writes
    assert 180_000 == report.events_pruned
    with runtime.engine.connect() as db:
        left = db.execute(
            text(
                "SELECT status, count(*) FROM events "
                "WHERE event_id LIKE 'old-%' AND payload->'user_data'->>'em' IS NOT NULL "
                "GROUP BY status"
            )
        ).all()
    assert [("pending", 20_000)] == [(s, n) for s, n in left]
    # An old order delivered again makes no new event: its keys outlived its personal data.
    with runtime.sessions.begin() as session:
        again = queries.record_delivery(
            session,
            queries.ReceiptIn(
                platform="shopify",
                connection_id=conn_id,
                delivery_id="redelivery",
                topic="orders/paid",
                order_ref="old-77",
            ),
            [
                CanonicalEvent(
                    event_name="Purchase",
                    event_id="old-77",
                    event_time=now,
                    action_source="website",
                    event_source_url="https://shop.example/",
                    user_data=UserData(client_user_agent="Mozilla/5.0"),
                    order_ref="old-77",
                )
            ],
            now=now,
        )
    assert [] == again.new_events
