"""The overview's sweep, repairs, too-old events and retention; the match-quality page's
daily aggregates, Meta's scores, dedup feedback and warnings, through the routes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector import quality
from connector.config import Settings
from connector.runtime import Runtime
from connector.store import quality as quality_store
from connector.store.models import EventStatus, SweepState, WebhookRepair
from tests.fakes.dataset_quality import event_answer
from tests.test_dashboard import PIXEL, add, add_event, link, make_client, text

__all__ = ["make_client"]  # the fixture, shared with the dashboard tests


def quality_page(client: Any, settings: Settings, conn_id: str) -> str:
    token = link(settings, conn_id).split("t=", 1)[1]
    return text(client.get(f"/admin/connections/{conn_id}/quality?t={token}")).replace(
        "&#39;", "'"
    )


def recount(runtime: Runtime, conn_id: str) -> None:
    today = datetime.now(UTC).date()
    with runtime.sessions.begin() as s:
        quality_store.refresh_coverage(
            s,
            since=today - timedelta(days=29),
            until=today,
            now=datetime.now(UTC),
            connection_id=conn_id,
        )


# -- match quality -------------------------------------------------------------------------


def test_match_quality_reads_the_daily_aggregates_and_labels_our_estimate(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Coverage comes from the daily aggregates, not a scan of the outbox."""
    conn_id = add(runtime)
    now = datetime.now(UTC)
    for i in range(4):
        add_event(runtime, conn_id, str(i), sent_at=now - timedelta(minutes=1))
    assert "No events delivered in the last 30 days yet" in quality_page(
        client, settings, conn_id
    )
    recount(runtime, conn_id)
    page = quality_page(client, settings, conn_id)
    # email, IP and user agent: 3 + 1 = 4 points of ours on each event
    assert "4.0 / 10 (fair)" in page
    assert "ours, not Meta's" in page
    assert "delivered from" in page
    assert "4 events" in page
    # the top improvements name keys in words, never Meta's codes
    assert "Ask for a phone number at checkout" in page
    assert "have no phone" in page
    assert "lack ph" not in page
    assert "Meta has not been asked yet" in page


@pytest.mark.parametrize(
    ("outcome", "detail", "shown", "hidden"),
    [
        pytest.param(
            "no_access",
            "Meta error 190: Error validating access token: Session has expired",
            "No access: the Meta sign-in has expired or was withdrawn; reconnect Meta",
            "validating access token",
            id="expired-token",
        ),
        pytest.param(
            "no_access",
            "Meta error 200: (#200) Missing Permission",
            "No access: the Meta account connected may not read this pixel",
            "Missing Permission",
            id="permission",
        ),
        pytest.param(
            "no_access",
            "Meta error 100: Unsupported get request. Object with ID does not exist",
            "No access: the connected Meta account cannot see this pixel",
            "Unsupported get request",
            id="unknown-object",
        ),
        pytest.param(
            "error",
            "Meta error -: HTTPConnectionPool(host='127.0.0.1', port=9): Max retries",
            "Meta could not answer when asked on",
            "HTTPConnectionPool",
            id="unreachable",
        ),
    ],
)
def test_a_failed_meta_read_is_told_in_plain_words(
    client: Any,
    runtime: Runtime,
    settings: Settings,
    outcome: str,
    detail: str,
    shown: str,
    hidden: str,
) -> None:
    conn_id = add(runtime)
    with runtime.sessions.begin() as s:
        quality_store.record_meta_check(
            s,
            conn_id,
            pixel_id=PIXEL,
            token="meta-token",
            outcome=outcome,
            detail=detail,
            now=datetime.now(UTC),
        )
    page = quality_page(client, settings, conn_id)
    assert shown in page
    assert hidden not in page
    assert "Meta error" not in page


def test_meta_scores_dedup_feedback_and_warnings_per_event_name(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Meta's score and event coverage, its dedupe-key feedback and the active warnings."""
    conn_id = add(runtime)
    now = datetime.now(UTC)
    add_event(runtime, conn_id, "1", sent_at=now)
    recount(runtime, conn_id)
    answers = quality.parse_dataset_quality(
        {
            "web": [
                event_answer(
                    "Purchase", score=7.4, coverage=81.5, overall_event_id=3.0
                ),
                event_answer("InitiateCheckout", score=4.1, browser_event_id=12.0),
            ]
        }
    )
    with runtime.sessions.begin() as s:
        quality_store.save_meta_scores(
            s, conn_id, pixel_id=PIXEL, events=answers, now=now
        )
        quality_store.set_warnings(s, conn_id, quality.dedup_warnings(answers), now)
        quality_store.record_meta_check(
            s,
            conn_id,
            pixel_id=PIXEL,
            token="meta-token",
            outcome="ok",
            detail="2 event names",
            now=now,
        )
    page = quality_page(client, settings, conn_id)
    assert "From Meta, read on" in page
    assert "7.4 / 10" in page
    assert "Event coverage: 81.5%" in page
    # InitiateCheckout was not sent by us in the period, yet Meta's score shows
    assert "4.1 / 10" in page
    assert "No events of this kind delivered in the last 30 days" in page
    assert "3% of browser events deduplicated with it" in page
    assert "Event ID</strong>: carried by 100% of the pixel" in page
    assert "Deduplication warnings" in page
    assert "only 3% are deduplicated against ours" in page
    assert "Only 12% of the pixel's InitiateCheckout events carry an event ID" in page
    # a new pixel is not yet read: Meta's old answers are not shown for it
    with runtime.sessions.begin() as s:
        from connector.store.models import Connection

        conn = s.get(Connection, conn_id)
        assert conn is not None
        conn.pixel_id = "999000999"
    page = quality_page(client, settings, conn_id)
    assert "Meta has not been asked yet" in page
    assert "7.4 / 10" not in page


# -- overview ------------------------------------------------------------------------------


def test_the_overview_tells_what_the_sweep_recovered_and_the_repairs(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime)
    at = datetime(2026, 11, 29, 8, 30, tzinfo=UTC)
    assert "has not checked the store" in text(client.get(link(settings, conn_id)))
    with runtime.sessions.begin() as s:
        s.add(
            SweepState(
                connection_id=conn_id,
                last_run_at=at,
                last_counts={
                    "scanned": 50,
                    "enqueued": 2,
                    "present": 47,
                    "skipped": {"unpaid": 1},
                },
            )
        )
        for i, (topic, action) in enumerate(
            [
                ("orders/paid", "recreated"),
                ("order.updated", "reactivated"),
                ("orders/create", "failed"),
                ("checkouts/create", "recreated"),
            ]
        ):
            s.add(
                WebhookRepair(
                    connection_id=conn_id,
                    topic=topic,
                    action=action,
                    detail="raw detail 503 Traceback",
                    repaired_at=at - timedelta(hours=i),
                )
            )
    page = text(client.get(link(settings, conn_id)))
    assert "Checked 50 recent orders. 2 had no notification from the store" in page
    assert "47 had already arrived. 1 was not sent" in page
    assert "2026-11-29 08:30 UTC" in page
    assert (
        "Set up again: the notification of orders (paid), repaired at "
        '<time datetime="2026-11-29T08:30:00+00:00">2026-11-29 08:30 UTC</time>'
    ) in page
    assert "Switched back on: the notification of orders (updated)" in page
    assert "Could not repair: the notification of orders (create), tried at" in page
    # the latest three only, and never the raw detail
    assert "notification of checkouts" not in page
    assert "raw detail" not in page


def test_a_failed_sweep_is_plain_words_not_the_error(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime)
    with runtime.sessions.begin() as s:
        s.add(
            SweepState(
                connection_id=conn_id,
                last_run_at=datetime.now(UTC),
                last_error="TransientError: HTTPSConnectionPool(host='x') 502",
                last_counts={},
            )
        )
    page = text(client.get(link(settings, conn_id)))
    assert "could not reach the store" in page
    assert "HTTPSConnectionPool" not in page
    assert "TransientError" not in page


def test_events_too_old_for_meta_are_counted_in_plain_words(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime)
    old = datetime.now(UTC) - timedelta(days=9)
    for i in range(2):
        add_event(
            runtime,
            conn_id,
            f"old-{i}",
            status=EventStatus.DEAD,
            event_time=old,
            last_error="too_old: held while the Meta account was not connected",
        )
    add_event(
        runtime, conn_id, "bad", status=EventStatus.DEAD, last_error="invalid: refused"
    )
    page = text(client.get(link(settings, conn_id)))
    assert (
        "2 order events could not be sent because they were more than 7 days old"
        in page
    )
    assert "too_old" not in page.replace('value="too_old"', "")
    # Meta would refuse them: no button offers to send them again; the invalid one has one
    assert "Send these 2 again" not in page
    assert "Send it again" in page


def test_no_too_old_line_without_too_old_events(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime)
    add_event(runtime, conn_id, "1", sent_at=datetime.now(UTC))
    assert 'id="too-old"' not in text(client.get(link(settings, conn_id)))


@pytest.mark.parametrize("days", [30, 45, 1])
def test_the_overview_says_how_long_customer_details_are_kept(
    make_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    runtime: Runtime,
    days: int,
) -> None:
    client = make_client(retain_personal_data_days=days)
    conn_id = add(runtime)
    page = text(client.get(link(make_settings(), conn_id)))
    plural = "day" if days == 1 else "days"
    assert f"are kept for {days} {plural} after Meta receives an event" in page
    assert "RETAIN" not in page
