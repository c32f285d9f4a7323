"""The retry policy: what each of Meta's answers means for the events and their connection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import GraphError
from connector.retry import (
    FAILING_RECHECK,
    Dead,
    Failing,
    Hold,
    RateLimited,
    RetryAt,
    RetryPolicy,
    Sent,
    Split,
    check_event_time,
    classify,
    rate_limit_delay,
    transient_delay,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def err(
    code: int | None,
    subcode: int | None = None,
    *,
    type: str | None = "OAuthException",
    is_transient: bool = False,
    status: int | None = 400,
) -> GraphError:
    return GraphError(
        "Meta says no",
        code=code,
        subcode=subcode,
        type=type,
        is_transient=is_transient,
        http_status=status,
    )


def decide(error: GraphError | None, batch_size: int = 10, attempts: int = 0) -> object:
    return classify(
        error, batch_size=batch_size, attempts=attempts, now=NOW, rand=lambda: 0.5
    )


def test_no_error_means_sent() -> None:
    """Meta accepted the request: the events are sent."""
    assert decide(None) == Sent()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # token expired, revoked or invalid
        pytest.param(err(190), Hold, id="190-token"),
        pytest.param(err(190, 463), Hold, id="190-463-expired"),
        pytest.param(err(190, 467), Hold, id="190-467-invalid"),
        pytest.param(err(102), Hold, id="102-session"),
        # permission lost
        pytest.param(err(10), Hold, id="10-permission"),
        pytest.param(err(200), Hold, id="200-permission"),
        pytest.param(err(299), Hold, id="299-permission"),
        # the pixel is gone or not ours
        pytest.param(
            err(100, 33, type="GraphMethodException"), Hold, id="100-33-no-object"
        ),
        pytest.param(err(33), Hold, id="33-no-object"),
        # a request-level refusal (appsecret_proof): hold rather than kill every event
        pytest.param(err(100, type="GraphMethodException"), Hold, id="100-method"),
        # throttling
        pytest.param(err(4), RateLimited, id="4-app-limit"),
        pytest.param(err(17), RateLimited, id="17-user-limit"),
        pytest.param(err(32), RateLimited, id="32-page-limit"),
        pytest.param(err(613), RateLimited, id="613-rate-limit"),
        pytest.param(err(80003), RateLimited, id="80003-custom-audience"),
        pytest.param(err(80004), RateLimited, id="80004-ad-account"),
        pytest.param(
            err(17, is_transient=True), RateLimited, id="throttle-beats-transient"
        ),
        # transient
        pytest.param(err(1), RetryAt, id="1-unknown"),
        pytest.param(err(2, status=500), RetryAt, id="2-service"),
        pytest.param(err(341), RetryAt, id="341-app-limit"),
        pytest.param(err(5000), RetryAt, id="5000"),
        pytest.param(err(21009), RetryAt, id="21009"),
        pytest.param(err(12345, is_transient=True), RetryAt, id="is-transient"),
        pytest.param(err(987654), RetryAt, id="unknown-code-retried"),
        pytest.param(err(None, status=None), RetryAt, id="timeout"),
        pytest.param(err(None, status=502), RetryAt, id="non-json"),
        # invalid events in a batch
        pytest.param(err(100, 2804003), Split, id="100-2804003-batch"),
        pytest.param(err(100, 2804050), Split, id="100-2804050-batch"),
        pytest.param(err(100), Split, id="100-invalid-parameter-batch"),
    ],
)
def test_each_answer_maps_to_its_decision(error: GraphError, expected: type) -> None:
    """Meta's codes decide: hold, back off, retry, or split the batch."""
    assert type(decide(error)) is expected


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(err(100, 2804003), id="too-old"),
        pytest.param(err(100, 2804024), id="unhashed"),
        pytest.param(err(100), id="invalid-parameter"),
    ],
)
def test_an_invalid_single_event_is_dead_with_metas_message(error: GraphError) -> None:
    """Once bisection has narrowed a refusal to one event, that event is dead with the reason."""
    decision = decide(error, batch_size=1)
    assert isinstance(decision, Dead)
    assert decision.kind == "invalid"
    assert "Meta says no" in decision.reason
    assert "code 100" in decision.reason


def test_a_hold_names_what_the_owner_must_do() -> None:
    """A held connection's reason says to reconnect Meta and carries Meta's code."""
    decision = decide(err(190, 460))
    assert isinstance(decision, Hold)
    assert "reconnect Meta" in decision.reason
    assert "code 190" in decision.reason


def test_transient_backoff_is_full_jitter_doubling_to_a_cap() -> None:
    """The retry time is now + rand * min(cap, base * 2**attempts)."""
    policy = RetryPolicy(base=timedelta(seconds=5), cap=timedelta(minutes=30))
    for attempts, ceiling in [(0, 5), (1, 10), (3, 40), (20, 1800)]:
        decision = classify(
            err(2),
            batch_size=1,
            attempts=attempts,
            now=NOW,
            policy=policy,
            rand=lambda: 0.5,
        )
        assert isinstance(decision, RetryAt)
        assert decision.when == NOW + timedelta(seconds=ceiling / 2)


@given(attempts=st.integers(0, 10_000), draw=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_its_bounds(attempts: int, draw: float) -> None:
    """Jitter never yields a negative wait nor one beyond the cap, however many attempts."""
    policy = RetryPolicy()
    delay = transient_delay(attempts, policy, rand=lambda: draw)
    assert timedelta(0) <= delay <= policy.cap
    limited = rate_limit_delay(attempts, policy, rand=lambda: draw)
    assert policy.rate_limit_base / 2 <= limited <= policy.rate_limit_cap


def test_a_rate_limit_rests_the_connection_longer_than_a_transient_retry() -> None:
    """Throttling waits at least half its ceiling; a transient retry may come at once."""
    retry = classify(err(2), batch_size=1, attempts=0, now=NOW, rand=lambda: 0.0)
    limited = classify(err(17), batch_size=1, attempts=0, now=NOW, rand=lambda: 0.0)
    assert isinstance(retry, RetryAt)
    assert isinstance(limited, RateLimited)
    assert retry.when == NOW
    assert limited.until == NOW + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("age", "kind"),
    [
        pytest.param(timedelta(days=7, seconds=1), "too_old", id="just-over-7-days"),
        pytest.param(timedelta(days=30), "too_old", id="a-month"),
        pytest.param(-timedelta(seconds=61), "future", id="a-minute-ahead"),
        pytest.param(timedelta(days=6, hours=23), None, id="six-days"),
        pytest.param(-timedelta(seconds=30), None, id="clock-skew"),
        pytest.param(timedelta(0), None, id="now"),
    ],
)
def test_event_time_window(age: timedelta, kind: str | None) -> None:
    """Rows outside Meta's window (7 days back, a minute ahead) are dead before any send."""
    verdict = check_event_time(NOW - age, NOW)
    assert (verdict.kind if verdict else None) == kind


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # Meta's own "is_transient: true" wins over a code that would otherwise split or hold
        pytest.param(err(100, 2804050, is_transient=True), RetryAt, id="transient-100"),
        pytest.param(err(100, is_transient=True), RetryAt, id="transient-100-no-sub"),
        # the same answers without it keep their meaning
        pytest.param(err(100, 2804050), Split, id="event-error"),
        # a retired API version and an endpoint that is not there fail every request alike
        pytest.param(err(2635), Failing, id="deprecated-version"),
        pytest.param(err(None, status=404, is_transient=True), Failing, id="html-404"),
        pytest.param(err(None, status=413, is_transient=True), Failing, id="html-413"),
        pytest.param(err(None, status=502, is_transient=True), RetryAt, id="html-502"),
    ],
)
def test_metas_transience_and_configuration_errors(
    error: GraphError, expected: type
) -> None:
    """is_transient is read; configuration errors are surfaced at once, not retried for a week."""
    decision = classify(error, batch_size=10, attempts=0, now=NOW, rand=lambda: 0.5)
    assert isinstance(decision, expected)
    if isinstance(decision, Failing):
        assert decision.until - NOW == FAILING_RECHECK
        assert "META_API_VERSION" in decision.reason
