"""What to do after a send (pure): sent, retry at T, back the connection off, hold, split or dead.

Nothing here reads the clock or draws randomness on its own: ``now`` and the jitter source
are parameters, so every decision can be replayed in a test.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from connector.errors import GraphError

#: Meta rejects a whole request when any event in it is older than this
MAX_EVENT_AGE = timedelta(days=7)
#: Meta's window for physical_store events
PHYSICAL_STORE_MAX_AGE = timedelta(days=62)
#: clocks drift; past this, an event "from the future" is a bug at the source
MAX_CLOCK_SKEW = timedelta(minutes=1)

#: the token is expired, revoked or invalid (OAuthException and API session)
TOKEN_CODES = frozenset({190, 102})
#: OAuth subcodes that say the same whatever the code (expired, password changed, invalid ...)
TOKEN_SUBCODES = frozenset({458, 459, 460, 463, 464, 467})
#: Graph throttling: application, user, page, custom-level and ads-management limits
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80003, 80004})
#: Meta's "temporary issue, wait and retry" codes
TRANSIENT_CODES = frozenset({1, 2, 341, 5000, 21009})
#: "object does not exist or cannot be loaded": the pixel id or its permission is wrong
UNKNOWN_OBJECT_CODE = 33
INVALID_PARAMETER_CODE = 100
#: "this Graph API version is deprecated": every request fails until META_API_VERSION changes
DEPRECATED_VERSION_CODE = 2635
#: HTTP statuses that, without Meta's JSON error, mean the request itself is wrong: no such
#: endpoint (a wrong META_GRAPH_URL or version) or a body larger than the endpoint takes
CONFIGURATION_STATUSES = frozenset({404, 405, 413, 414})
#: how long a connection with a configuration error waits before its events are tried again
FAILING_RECHECK = timedelta(hours=1)
#: Conversions API event errors use the 2804xxx subcode family
EVENT_SUBCODES = range(2_804_000, 2_805_000)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Backoff tuning; the defaults suit production, tests pass small ones."""

    #: transient failures: full jitter over min(cap, base * 2**attempts)
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=30)
    #: rate limits: the whole connection waits at least half of min(cap, base * 2**attempts)
    rate_limit_base: timedelta = timedelta(minutes=1)
    rate_limit_cap: timedelta = timedelta(hours=1)


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True, kw_only=True)
class Sent:
    """Meta accepted the request."""


@dataclass(frozen=True, kw_only=True)
class RetryAt:
    """A transient failure: try these events again at ``when``."""

    when: datetime
    reason: str


@dataclass(frozen=True, kw_only=True)
class RateLimited:
    """Meta throttles: nothing of this connection goes out before ``until``."""

    until: datetime
    reason: str


@dataclass(frozen=True, kw_only=True)
class Hold:
    """The connection cannot send (token or permission lost, pixel unreachable): hold its events."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Split:
    """An invalid event sank a multi-event request: send the halves to find it."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Dead:
    """This event can never be accepted as it is; a person must look (``events replay``)."""

    reason: str
    #: a short machine word first in ``last_error``: invalid, too_old, future
    kind: str = "invalid"


@dataclass(frozen=True, kw_only=True)
class Failing:
    """Meta refuses the request for a reason no retry fixes soon (a retired API version, an
    endpoint that is not there): say so on the connection now, and only look again later."""

    reason: str
    until: datetime


Decision = Sent | RetryAt | RateLimited | Hold | Split | Dead | Failing


def transient_delay(
    attempts: int, policy: RetryPolicy = DEFAULT_POLICY, *, rand: Callable[[], float]
) -> timedelta:
    """Full jitter (AWS's "Exponential Backoff and Jitter"): uniform in [0, min(cap, base*2**n))."""
    ceiling = _exp(policy.base, policy.cap, attempts)
    return ceiling * rand()


def rate_limit_delay(
    attempts: int, policy: RetryPolicy = DEFAULT_POLICY, *, rand: Callable[[], float]
) -> timedelta:
    """Equal jitter: never less than half the ceiling, so a throttled connection really rests."""
    ceiling = _exp(policy.rate_limit_base, policy.rate_limit_cap, attempts)
    return ceiling / 2 + (ceiling / 2) * rand()


def _exp(base: timedelta, cap: timedelta, attempts: int) -> timedelta:
    # 2**attempts overflows timedelta quickly; stop doubling once past the cap.
    exponent = max(0, min(attempts, 40))
    return min(cap, base * (1 << exponent))


def classify(
    error: GraphError | None,
    *,
    batch_size: int,
    attempts: int,
    now: datetime,
    policy: RetryPolicy = DEFAULT_POLICY,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Decide what a send's outcome means; ``error`` is None when Meta accepted the request."""
    if error is None:
        return Sent()
    code, subcode = error.code, error.subcode
    detail = _describe(error)
    if code in TOKEN_CODES or subcode in TOKEN_SUBCODES:
        return Hold(reason=f"Meta refused the access token ({detail}); reconnect Meta")
    if code == 10 or (code is not None and 200 <= code <= 299):
        return Hold(
            reason=f"the Meta token lost a permission it needs ({detail}); reconnect Meta"
        )
    if code == UNKNOWN_OBJECT_CODE or (
        code == INVALID_PARAMETER_CODE and subcode == UNKNOWN_OBJECT_CODE
    ):
        return Hold(
            reason=f"the pixel does not exist or this token cannot use it ({detail}); "
            "reconnect Meta and pick the pixel again"
        )
    if code == DEPRECATED_VERSION_CODE or (
        code is None and error.status in CONFIGURATION_STATUSES
    ):
        return Failing(
            reason=f"Meta refuses every request of this connector ({detail}); check "
            "META_GRAPH_URL and META_API_VERSION",
            until=now + FAILING_RECHECK,
        )
    if code in RATE_LIMIT_CODES:
        return RateLimited(
            until=now + rate_limit_delay(attempts, policy, rand=rand),
            reason=f"rate limited by Meta ({detail})",
        )
    if error.is_transient and code is not None:
        # Meta's own word: "is_transient: true" means the same request may succeed later.
        return RetryAt(
            when=now + transient_delay(attempts, policy, rand=rand),
            reason=f"transient: {detail}",
        )
    if code == INVALID_PARAMETER_CODE and _is_event_error(error):
        if batch_size > 1:
            return Split(reason=f"Meta rejected the batch ({detail})")
        return Dead(reason=f"Meta rejected the event ({detail})")
    if code == INVALID_PARAMETER_CODE:
        # A GraphMethodException is about the request (appsecret_proof, the object), not the
        # events: dead-lettering them one by one would lose nothing but help nobody.
        return Hold(reason=f"Meta refused the request ({detail})")
    # Transient codes, is_transient, timeouts, 5xx, non-JSON and codes we do not know: retry.
    return RetryAt(
        when=now + transient_delay(attempts, policy, rand=rand),
        reason=f"transient: {detail}",
    )


def _is_event_error(error: GraphError) -> bool:
    if error.subcode is not None:
        return error.subcode in EVENT_SUBCODES
    return error.type != "GraphMethodException"


def _describe(error: GraphError) -> str:
    parts = [str(error)]
    codes = []
    if error.code is not None:
        codes.append(f"code {error.code}")
    if error.subcode is not None:
        codes.append(f"subcode {error.subcode}")
    if error.status is not None:
        codes.append(f"HTTP {error.status}")
    if error.fbtrace_id:
        codes.append(f"fbtrace_id {error.fbtrace_id}")
    if codes:
        parts.append(f"[{', '.join(codes)}]")
    return " ".join(parts)


def check_event_time(
    event_time: datetime, now: datetime, *, action_source: str | None = None
) -> Dead | None:
    """Dead-letter an event Meta would reject for its time, before it can sink a batch.

    Meta accepts ``event_time`` up to 7 days back, and up to 62 days back for
    ``physical_store`` events
    (https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event#event-time).
    The reason is written for the store owner.
    """
    days = (
        PHYSICAL_STORE_MAX_AGE if action_source == "physical_store" else MAX_EVENT_AGE
    )
    if event_time < now - days:
        return Dead(
            kind="too_old",
            reason=f"this conversion happened on {event_time:%Y-%m-%d %H:%M} UTC, more than "
            f"{days.days} days ago; Meta only accepts conversions from the last {days.days} days, "
            "so it could not be sent (it is kept here for your records)",
        )
    if event_time > now + MAX_CLOCK_SKEW:
        return Dead(
            kind="future",
            reason=f"event_time {event_time.isoformat()} is in the future "
            f"(now {now.isoformat()}): Meta rejects it",
        )
    return None
