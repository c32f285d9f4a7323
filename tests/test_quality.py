"""Match quality: per-event keys, daily coverage, our estimate, Meta's Dataset Quality, dedup warnings."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.shopify import adapter as shopify
from adapters.woocommerce.translate import translate as woo_translate
from connector import dataset_quality, dispatcher, jobs, quality
from connector.events import UserData
from connector.platform import ConnectionInfo
from connector.retry import RetryPolicy
from connector.runtime import Runtime
from connector.store import quality as store
from connector.store import queries
from connector.store.models import Event, EventStatus, MetaQualityCheck
from tests.conftest import fixture_bytes
from tests.fakes.dataset_quality import DatasetQuality, event_answer, install
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer, serve

TOKEN = "meta-token-quality"
FAST = RetryPolicy(
    base=timedelta(milliseconds=20),
    cap=timedelta(milliseconds=200),
    rate_limit_base=timedelta(milliseconds=200),
)


# -- the key mask and our estimate ---------------------------------------------------------


def test_key_mask_round_trips_every_key() -> None:
    """Each of the fifteen keys has its own bit; a mask reads back the keys it was made from."""
    data = UserData(
        em=("a" * 64,),
        ph=("b" * 64,),
        external_id=("c" * 64,),
        client_ip_address="168.212.226.204",
        client_user_agent="Mozilla/5.0",
        fbp="fb.1.1596403881668.1116446470",
    )
    mask = quality.key_mask(data)
    assert [
        "em",
        "ph",
        "external_id",
        "client_ip_address",
        "client_user_agent",
        "fbp",
    ] == quality.keys_in(mask)
    assert 15 == len({quality.bit(k) for k in quality.MATCH_KEYS})
    assert quality.key_mask(data.to_meta()) == mask


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param([], 0.0, id="nothing"),
        pytest.param(["em"], 3.0, id="email-alone"),
        pytest.param(["client_ip_address"], 0.0, id="ip-without-user-agent"),
        pytest.param(["client_ip_address", "client_user_agent"], 1.0, id="ip-and-ua"),
        pytest.param(["fn"], 0.0, id="one-name-key"),
        pytest.param(["fn", "ln"], 0.5, id="two-name-keys"),
        pytest.param(list(quality.MATCH_KEYS), 10.0, id="everything"),
    ],
)
def test_our_estimate_weighs_what_meta_ranks_first(
    keys: list[str], expected: float
) -> None:
    """Our 0-10 estimate: email 3, phone 2, fbc 1.5, external id 1, fbp 1, IP+UA 1, names 0.5."""
    mask = sum(quality.bit(k) for k in keys)
    assert expected == quality.estimate(mask)


@given(st.integers(0, 2**15 - 1), st.sampled_from(quality.MATCH_KEYS))
def test_sending_one_more_key_never_lowers_our_estimate(mask: int, key: str) -> None:
    """Our estimate only grows with keys, and stays within 0-10."""
    more = mask | quality.bit(key)
    assert 0.0 <= quality.estimate(mask) <= quality.estimate(more) <= 10.0
    assert quality.keys_in(more) == [
        k for k in quality.MATCH_KEYS if k in {*quality.keys_in(mask), key}
    ]


def test_improvements_name_the_biggest_gaps_first() -> None:
    """Missing emails outrank missing browser ids; keys every event carried are not listed."""
    full = sum(quality.bit(k) for k in quality.MATCH_KEYS)
    no_email = full & ~quality.bit("em")
    no_fbp = full & ~quality.bit("fbp")
    events, counts, tenths = quality.aggregate([no_email] * 5 + [no_fbp] * 5)
    cov = quality.Coverage(
        day="2026-07-01",
        event_name="Purchase",
        events_sent=events,
        key_counts=counts,
        estimate_tenths=tenths,
    )
    tips = quality.improvements([cov])
    assert 2 == len(tips)
    assert "e-mail" in tips[0]
    assert "50% of events lack em" in tips[0]
    assert "fbp" in tips[1]


# -- coverage equals a recount of the outbox ------------------------------------------------


def _woo_order(rng: random.Random, i: int) -> dict[str, Any]:
    name = rng.choice(["order-processing.json", "checkout-draft.json"])
    order: dict[str, Any] = json.loads(fixture_bytes(f"woocommerce/{name}"))
    order["id"] = 10_000 + i
    order["customer_ip_address"] = rng.choice(
        ["168.212.226.204", "10.0.0.5", "", "2a03:2880::1"]
    )
    billing = dict(order["billing"])
    if rng.random() < 0.3:
        billing["phone"] = ""
    if rng.random() < 0.2 and name.startswith("order"):
        billing["email"] = ""
    if rng.random() < 0.3:
        billing["country"] = rng.choice(["DE", "FR", "GB"])
    order["billing"] = billing
    if rng.random() < 0.4:
        order["meta_data"] = [
            *order.get("meta_data", []),
            {"key": "_fbp", "value": f"fb.1.1596403881668.{i}"},
        ]
    if rng.random() < 0.5:
        order["customer_id"] = 0
    return order


def _shopify_order(rng: random.Random, i: int) -> tuple[str, dict[str, Any]]:
    if rng.random() < 0.3:
        checkout: dict[str, Any] = json.loads(fixture_bytes("shopify/checkout.json"))
        checkout["token"] = f"tok{i}"
        checkout["id"] = 50_000 + i
        return "checkouts/create", checkout
    order: dict[str, Any] = json.loads(fixture_bytes("shopify/order_storefront.json"))
    order["id"] = 900_000 + i
    order["browser_ip"] = rng.choice(["168.212.226.204", "192.168.1.20", None])
    if rng.random() < 0.3:
        order["email"] = order["contact_email"] = None
        order["customer"] = {**order["customer"], "email": None}
    if rng.random() < 0.3:
        order["phone"] = None
    return "orders/paid", order


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, DatasetQuality, LiveServer]]:
    state = FakeGraph(tokens={TOKEN})
    dq = DatasetQuality()
    app = make_app(state)
    install(app, dq)
    with serve(app) as server:
        yield state, dq, server


@pytest.fixture
def worker_runtime(
    runtime: Runtime, graph: tuple[FakeGraph, DatasetQuality, LiveServer]
) -> Runtime:
    settings = replace(runtime.settings, meta_graph_url=graph[2].url, http_timeout=2.0)
    return replace(runtime, settings=settings)


def add_connection(runtime: Runtime, platform: str, store_url: str, pixel: str) -> str:
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session, platform, store_url, pixel_id=pixel, meta_token=TOKEN
        )
        return conn.id


def test_coverage_equals_a_recount_of_1000_mixed_orders(
    worker_runtime: Runtime,
) -> None:
    """After 1,000 mixed orders sent over two days, the daily aggregates equal a recount of the outbox."""
    rt = worker_runtime
    now = datetime.now(UTC).replace(microsecond=0)
    yesterday = now - timedelta(days=1)
    woo_id = add_connection(rt, "woocommerce", "https://woo.example", "111")
    shop_id = add_connection(rt, "shopify", "mixed.myshopify.com", "222")
    woo = ConnectionInfo(
        id=woo_id, platform="woocommerce", store="https://woo.example", settings={}
    )
    shop = ConnectionInfo(
        id=shop_id, platform="shopify", store="mixed.myshopify.com", settings={}
    )
    rng = random.Random(12)
    for batch, clock in ((range(0, 500), yesterday), (range(500, 1000), now)):
        with rt.sessions.begin() as session:
            for i in batch:
                if i % 2:
                    conn_id = woo_id
                    topic = "order.updated"
                    outcome = woo_translate(topic, _woo_order(rng, i), woo, clock)
                else:
                    conn_id = shop_id
                    topic, payload = _shopify_order(rng, i)
                    outcome = shopify.handle(topic, payload, shop, clock)
                events = [
                    e.replace(event_time=clock - timedelta(hours=1))
                    for e in outcome.events
                ]
                queries.record_delivery(
                    session,
                    queries.ReceiptIn(
                        platform="x",
                        connection_id=conn_id,
                        delivery_id=f"d{i}",
                        topic=topic,
                    ),
                    events,
                    now=clock,
                )
        dispatcher.run_worker(
            runtime=rt, drain=True, policy=FAST, clock=lambda c=clock: c
        )
    with rt.sessions.begin() as session:
        store.refresh_coverage(
            session, since=yesterday.date(), until=now.date(), now=now
        )
    # The recount: every sent row's keys read again from the payload Meta received.
    recount: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    sent: Counter[tuple[str, str, str]] = Counter()
    with rt.sessions() as session:
        rows = session.scalars(select(Event)).all()
        assert {EventStatus.SENT} == {r.status for r in rows}
        assert len(rows) >= 1000
        for row in rows:
            keys = [k for k in quality.MATCH_KEYS if row.payload["user_data"].get(k)]
            assert quality.keys_in(row.match_keys or 0) == keys
            day = row.sent_at.astimezone(UTC).date().isoformat()
            slot = (row.connection_id, day, row.event_name)
            sent[slot] += 1
            recount[slot].update(keys)
        stored = {}
        for conn_id in (woo_id, shop_id):
            for c in store.coverage_by_day(
                session, conn_id, since=yesterday.date(), until=now.date()
            ):
                stored[(conn_id, c.day, c.event_name)] = c
    assert set(sent) == set(stored)
    assert len(stored) >= 6  # two connections, two days, Purchase and InitiateCheckout
    for slot, cov in stored.items():
        assert sent[slot] == cov.events_sent
        assert {k: recount[slot][k] for k in quality.MATCH_KEYS} == dict(cov.key_counts)
    assert sum(c.events_sent for c in stored.values()) == len(rows)


# -- Meta's Dataset Quality ------------------------------------------------------------------


def test_daily_job_fills_meta_scores_and_tolerates_pixels_without_access(
    worker_runtime: Runtime, graph: tuple[FakeGraph, DatasetQuality, LiveServer]
) -> None:
    """Scores come from Meta's answer; a pixel or token without access is recorded, not retried in a loop."""
    rt = worker_runtime
    _, dq, _ = graph
    good = add_connection(rt, "shopify", "good.myshopify.com", "1001")
    foreign = add_connection(rt, "shopify", "foreign.myshopify.com", "1002")
    dq.access = {TOKEN: {"1001"}}
    dq.answers["1001"] = [
        event_answer("Purchase", score=7.4, keys={"email": 92.0, "phone": 61.5}),
        event_answer("InitiateCheckout", score=4.1, coverage=33.0),
    ]
    now = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
    results = {
        r.connection_id: r for r in dataset_quality.check_dataset_quality(rt, now=now)
    }
    assert "ok" == results[good].outcome
    assert "no_access" == results[foreign].outcome
    with rt.sessions() as session:
        scores = {s.event_name: s for s in store.latest_meta_scores(session, good)}
        assert 7.4 == scores["Purchase"].composite_score
        assert {"email": 92.0, "phone": 61.5} == scores["Purchase"].match_key_coverage
        assert 33.0 == scores["InitiateCheckout"].event_coverage
        check = store.last_meta_check(session, foreign)
        assert check is not None
        assert "no_access" == check.outcome
        assert "missing permissions" in (check.detail or "")
        assert [] == store.latest_meta_scores(session, foreign)
    # The same day again, and again: nobody is asked twice.
    for minutes in (1, 60, 600):
        dataset_quality.check_dataset_quality(rt, now=now + timedelta(minutes=minutes))
    assert (1, 1) == (dq.calls_for("1001"), dq.calls_for("1002"))
    # The next day both are asked once more; a new pixel is asked at once.
    dataset_quality.check_dataset_quality(rt, now=now + timedelta(hours=21))
    assert (2, 2) == (dq.calls_for("1001"), dq.calls_for("1002"))
    with rt.sessions.begin() as session:
        conn = queries.get_connection(session, foreign)
        conn.pixel_id = "1001"
    dataset_quality.check_dataset_quality(rt, now=now + timedelta(hours=22))
    with rt.sessions() as session:
        check = session.get(MetaQualityCheck, foreign)
        assert check is not None
        assert "ok" == check.outcome
    # A new token is asked at once too.
    with rt.sessions.begin() as session:
        queries.get_connection(session, good).meta_token = "meta-token-new"
    results = dataset_quality.check_dataset_quality(rt, now=now + timedelta(hours=23))
    assert [(good, "no_access")] == [(r.connection_id, r.outcome) for r in results]


def test_an_invalid_token_is_no_access(
    worker_runtime: Runtime, graph: tuple[FakeGraph, DatasetQuality, LiveServer]
) -> None:
    """Meta's code 190 (token invalidated) is recorded as no access, with Meta's reason."""
    rt = worker_runtime
    graph[1].invalid_tokens.add(TOKEN)
    conn_id = add_connection(rt, "shopify", "dead.myshopify.com", "1003")
    (result,) = dataset_quality.check_dataset_quality(
        rt, now=datetime(2026, 7, 1, tzinfo=UTC)
    )
    assert ("no_access", conn_id) == (result.outcome, result.connection_id)
    assert "190" in (result.detail or "")


def test_meta_unreachable_is_an_error_tried_the_next_day(
    runtime: Runtime,
) -> None:
    """A refused connection is an error (not no_access), recorded once for the day."""
    rt = replace(
        runtime,
        settings=replace(
            runtime.settings, meta_graph_url="http://127.0.0.1:9", http_timeout=1.0
        ),
    )
    add_connection(rt, "shopify", "far.myshopify.com", "1004")
    now = datetime(2026, 7, 1, tzinfo=UTC)
    (result,) = dataset_quality.check_dataset_quality(rt, now=now)
    assert "error" == result.outcome
    assert [] == dataset_quality.check_dataset_quality(rt, now=now + timedelta(hours=1))


def test_an_error_object_in_a_200_answer_is_not_a_score(runtime: Runtime) -> None:
    """The Graph API can answer 200 with an error object: it is Meta's refusal, not data."""
    from flask import Flask

    app = Flask(__name__)

    @app.get("/<version>/dataset_quality")
    def answer(version: str) -> dict[str, Any]:
        return {
            "error": {
                "message": "Unsupported get request.",
                "type": "GraphMethodException",
                "code": 100,
                "error_subcode": 33,
            }
        }

    server = LiveServer(app).start()
    try:
        rt = replace(
            runtime, settings=replace(runtime.settings, meta_graph_url=server.url)
        )
        conn_id = add_connection(rt, "shopify", "odd.myshopify.com", "1005")
        (result,) = dataset_quality.check_dataset_quality(
            rt, now=datetime(2026, 7, 1, tzinfo=UTC)
        )
    finally:
        server.stop()
    assert ("no_access", conn_id) == (result.outcome, result.connection_id)
    assert "Unsupported get request" in (result.detail or "")


# -- dedup audit --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kinds"),
    [
        pytest.param(event_answer("Purchase"), [], id="deduplicated"),
        pytest.param(
            event_answer("Purchase", browser_event_id=12.0, overall_event_id=5.0),
            ["dedup_event_id_missing"],
            id="pixel-sends-no-event-id",
        ),
        pytest.param(
            event_answer("Purchase", browser_event_id=100.0, overall_event_id=3.0),
            ["dedup_event_id_mismatch"],
            id="pixel-sends-another-event-id",
        ),
        pytest.param(
            event_answer("Purchase", server_event_id=48.0),
            ["other_server_sender"],
            id="another-server-integration",
        ),
    ],
)
def test_dedup_feedback_becomes_warnings(
    answer: dict[str, Any], kinds: list[str]
) -> None:
    """Meta's dedupe_key_feedback for event_id says what the pixel or another sender does wrong."""
    warnings = quality.dedup_warnings(quality.parse_dataset_quality({"web": [answer]}))
    assert kinds == [w.kind for w in warnings]
    for w in warnings:
        assert "Purchase" in w.message
        assert "eventID" in w.message or "Turn off" in w.message


def test_dedup_warnings_are_stored_and_cleared(
    worker_runtime: Runtime, graph: tuple[FakeGraph, DatasetQuality, LiveServer]
) -> None:
    """The daily read raises a connection warning a dashboard can show, and clears it once fixed."""
    rt = worker_runtime
    _, dq, _ = graph
    conn_id = add_connection(rt, "woocommerce", "https://dup.example", "1005")
    dq.access = {TOKEN: {"1005"}}
    dq.answers["1005"] = [
        event_answer("Purchase", browser_event_id=100.0, overall_event_id=3.0)
    ]
    now = datetime(2026, 7, 1, tzinfo=UTC)
    dataset_quality.check_dataset_quality(rt, now=now)
    with rt.sessions() as session:
        (warning,) = store.active_warnings(session, conn_id)
    assert "dedup_event_id_mismatch" == warning["kind"]
    assert "eventID = the order id" in warning["message"]
    dq.answers["1005"] = [event_answer("Purchase")]
    dataset_quality.check_dataset_quality(rt, now=now + timedelta(days=1))
    with rt.sessions() as session:
        assert [] == store.active_warnings(session, conn_id)


def test_the_quality_jobs_are_registered_with_the_worker() -> None:
    """The worker runs the Dataset Quality read and the coverage recount as periodic jobs."""
    names = {job.name for job in jobs.collect_periodic_jobs()}
    assert {"meta-dataset-quality", "match-coverage-recount"} <= names


def test_recount_is_idempotent_and_forgets_deleted_events(runtime: Runtime) -> None:
    """Recounting twice changes nothing; events deleted by a privacy request leave the counts."""
    conn_id = add_connection(runtime, "shopify", "forget.myshopify.com", "1006")
    now = datetime(2026, 7, 2, 12, 0, tzinfo=UTC)
    mask = quality.bit("em") | quality.bit("fbp")
    with runtime.sessions.begin() as session:
        for i, sent_at in enumerate((now, now, now - timedelta(days=1))):
            session.add(
                Event(
                    connection_id=conn_id,
                    event_name="Purchase",
                    event_id=f"f{i}",
                    event_time=sent_at - timedelta(minutes=5),
                    payload={"user_data": {"em": ["a" * 64], "fbp": "fb.1.1.1"}},
                    status=EventStatus.SENT,
                    sent_at=sent_at,
                    # the oldest row predates match_keys: its payload is read instead
                    match_keys=None if i == 2 else mask,
                )
            )
    for _ in range(2):
        with runtime.sessions.begin() as session:
            store.refresh_coverage(
                session, since=now.date() - timedelta(days=1), until=now.date(), now=now
            )
    with runtime.sessions() as session:
        days = store.coverage_by_day(
            session, conn_id, since=now.date() - timedelta(days=1), until=now.date()
        )
    assert [("2026-07-01", 1), ("2026-07-02", 2)] == [
        (c.day, c.events_sent) for c in days
    ]
    assert [1, 2] == [c.key_counts["fbp"] for c in days]
    assert [0, 0] == [c.key_counts["ph"] for c in days]
    with runtime.sessions.begin() as session:
        queries.redact_store(session, conn_id)
        store.refresh_coverage(
            session, since=now.date() - timedelta(days=1), until=now.date(), now=now
        )
    with runtime.sessions() as session:
        assert [] == store.coverage_by_day(
            session, conn_id, since=now.date() - timedelta(days=1), until=now.date()
        )
