"""The worker loop: claim due outbox rows, send them to Meta, record what Meta said (glue only).

Decisions live in ``connector.retry`` and the wire format in ``connector.capi``; this module
only moves rows between states, in short transactions, right after each answer.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, cast

from sqlalchemy import Table, and_, case, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from connector import dataset_quality, meta_oauth, registry
from connector.capi import GraphClient, SendResult, event_problem
from connector.errors import GraphError
from connector.platform import PeriodicJob
from connector.retry import (
    DEFAULT_POLICY,
    Dead,
    Hold,
    RateLimited,
    RetryAt,
    RetryPolicy,
    Sent,
    Split,
    check_event_time,
    classify,
)
from connector.runtime import Runtime
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus

log = logging.getLogger(__name__)

#: SIGTERM to exit: Heroku-like hosts send SIGKILL 30 s after SIGTERM; we promise 20
SHUTDOWN_GRACE_SECONDS = 20.0
#: a send must end well inside the grace period, whatever http_timeout says
MAX_SEND_SECONDS = 15.0
#: tries to record Meta's answer when the database connection drops meanwhile
RECORD_ATTEMPTS = 4

EVENTS = cast(Table, Event.__table__)
CONNECTIONS = cast(Table, Connection.__table__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One leased outbox row, as much of it as a send needs."""

    id: int
    connection_id: str
    event_time: datetime
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class Target:
    """Where a connection's events go, and whether they may go at all."""

    id: str
    status: str
    status_reason: str | None
    pixel_id: str | None
    meta_token: str | None
    test_event_code: str | None
    backoff_until: datetime | None

    def hold_reason(self) -> str | None:
        """Why this connection's events must wait for a person, or None when they may go."""
        if self.status == ConnectionStatus.NEEDS_RECONNECT:
            why = f" ({self.status_reason})" if self.status_reason else ""
            return f"held: the connection needs Meta reconnected{why}"
        if self.status == ConnectionStatus.UNINSTALLED:
            return "held: the app was uninstalled from the store"
        if self.status == ConnectionStatus.DISCONNECTED:
            return "held: Meta is disconnected for this store"
        if self.status != ConnectionStatus.ACTIVE:
            return f"held: the connection is {self.status}"
        if not self.pixel_id:
            return "held: no Meta pixel chosen for this connection"
        if not self.meta_token:
            return "held: no Meta access token for this connection"
        return None


@dataclass
class Stats:
    """What a worker did; ``connector worker --drain`` prints it."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    rate_limited: int = 0
    held: int = 0
    dead: int = 0
    released: int = 0
    requests: int = 0
    #: requests where Meta's events_received differed from the number sent
    mismatches: int = 0
    #: rows whose lease another worker took before this one recorded its answer
    lease_lost: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "retried": self.retried,
            "rate_limited": self.rate_limited,
            "held": self.held,
            "dead": self.dead,
            "released": self.released,
            "requests": self.requests,
            "mismatches": self.mismatches,
            "lease_lost": self.lease_lost,
            "seconds": round(elapsed, 3),
            "events_per_second": round(self.sent / elapsed, 1) if elapsed > 0 else 0.0,
        }


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"[:64]


class Dispatcher:
    """Claims, sends and records; one per worker thread."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        client: GraphClient | None = None,
        worker_id: str | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        rand: Callable[[], float] = random.random,
        clock: Clock = utc_now,
        stop: threading.Event | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.client = client or GraphClient(runtime.settings)
        self.client.timeout = min(self.client.timeout, MAX_SEND_SECONDS)
        self.worker_id = worker_id or default_worker_id()
        self.policy = policy
        self.rand = rand
        self.clock = clock
        self.stop = stop or threading.Event()
        self.stats = Stats()
        self.batch_size = max(1, min(self.settings.batch_size, 1000))
        self.is_postgres = runtime.engine.dialect.name == "postgresql"

    # -- claiming -----------------------------------------------------------------------

    def claim(self) -> list[Claimed]:
        """Lease up to one batch of due rows: pending and due, or leased by a worker that died."""
        now = self.clock()
        t = EVENTS
        backed_off = select(CONNECTIONS.c.id).where(CONNECTIONS.c.backoff_until > now)
        due = (
            select(t.c.id)
            .where(
                or_(
                    and_(
                        t.c.status == EventStatus.PENDING,
                        t.c.next_attempt_at <= now,
                    ),
                    and_(
                        t.c.status == EventStatus.SENDING,
                        t.c.lease_expires_at <= now,
                    ),
                ),
                t.c.connection_id.not_in(backed_off),
            )
            .order_by(t.c.id)
            .limit(self.batch_size)
        )
        if self.is_postgres:
            # SKIP LOCKED: concurrent workers take disjoint rows instead of queueing on each other.
            due = due.with_for_update(skip_locked=True, of=t)
        stmt = (
            update(t)
            .where(t.c.id.in_(due.scalar_subquery()))
            .values(
                status=EventStatus.SENDING,
                lease_owner=self.worker_id,
                lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds),
                # A lease that ran out belonged to a worker that died, perhaps after Meta
                # counted its request: sending again is a possible re-send, so count it.
                send_count=case(
                    (t.c.status == EventStatus.SENDING, t.c.send_count + 1),
                    else_=t.c.send_count,
                ),
            )
            .returning(
                t.c.id, t.c.connection_id, t.c.event_time, t.c.payload, t.c.attempts
            )
        )
        with self.runtime.sessions.begin() as session:
            rows = session.execute(stmt).all()
        claimed = [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        claimed.sort(key=lambda c: c.id)
        self.stats.claimed += len(claimed)
        return claimed

    def _targets(self, ids: Iterable[str]) -> dict[str, Target]:
        cols = (
            Connection.id,
            Connection.status,
            Connection.status_reason,
            Connection.pixel_id,
            Connection.meta_token,
            Connection.test_event_code,
            Connection.backoff_until,
        )
        with self.runtime.sessions() as session:
            rows = session.execute(select(*cols).where(Connection.id.in_(list(ids))))
            return {r[0]: Target(*r) for r in rows}

    # -- one batch ----------------------------------------------------------------------

    def process(self, claimed: Sequence[Claimed]) -> None:
        """Send a claimed batch, connection by connection, and record every outcome."""
        groups: dict[str, list[Claimed]] = {}
        for row in claimed:
            groups.setdefault(row.connection_id, []).append(row)
        targets = self._targets(groups)
        for conn_id, rows in groups.items():
            target = targets.get(conn_id)
            if (
                target is None
            ):  # the store was redacted meanwhile; its rows went with it
                continue
            if self.stop.is_set():
                self._release(rows)
                continue
            reason = target.hold_reason()
            if reason is not None:
                self._hold(rows, reason)
                continue
            now = self.clock()
            if target.backoff_until is not None and target.backoff_until > now:
                self._release(rows, at=target.backoff_until)
                continue
            rows = self._dead_letter_unsendable(rows, now)
            if rows and target.pixel_id and target.meta_token:
                self._send(target, target.pixel_id, target.meta_token, rows)

    def _dead_letter_unsendable(
        self, rows: list[Claimed], now: datetime
    ) -> list[Claimed]:
        """Set aside, visibly, the rows Meta would refuse: each would sink its whole request."""
        keep: list[Claimed] = []
        for row in rows:
            verdict = check_event_time(row.event_time, now)
            if verdict is None:
                problem = event_problem(row.payload)
                if problem is not None:
                    verdict = Dead(reason=f"not sent, Meta refuses it: {problem}")
            if verdict is None:
                keep.append(row)
            else:
                self._dead([row], verdict)
        return keep

    def _send(
        self, target: Target, pixel_id: str, token: str, rows: list[Claimed]
    ) -> None:
        pending: list[list[Claimed]] = [rows]
        while pending:
            chunk = pending.pop()
            if self.stop.is_set():
                self._release([r for c in [chunk, *pending] for r in c])
                return
            result: SendResult | None = None
            error: GraphError | None = None
            try:
                result = self.client.send_events(
                    pixel_id,
                    token,
                    [r.payload for r in chunk],
                    test_event_code=target.test_event_code,
                )
            except GraphError as exc:
                error = exc
            except ValueError as exc:
                # The connection's settings cannot make a request (a pixel id that is not
                # digits): no retry can help, and a crash would loop on the same rows.
                rest = [r for c in [chunk, *pending] for r in c]
                self._hold_connection(target, rest, f"cannot send to Meta: {exc}")
                return
            self.stats.requests += 1
            decision = classify(
                error,
                batch_size=len(chunk),
                attempts=max(r.attempts for r in chunk),
                now=self.clock(),
                policy=self.policy,
                rand=self.rand,
            )
            # Only a request Meta may have processed counts as a send: a 4xx refusal counts nothing.
            reached = error is None or _may_have_reached_meta(error)
            if isinstance(decision, Sent) and result is not None:
                self._sent(target, chunk, result)
            elif isinstance(decision, Split):
                mid = len(chunk) // 2
                log.info(
                    "pixel %s refused %d events; splitting to find the invalid ones",
                    target.pixel_id,
                    len(chunk),
                )
                pending.extend([chunk[mid:], chunk[:mid]])
            elif isinstance(decision, Dead):
                self._dead(chunk, decision)
            elif isinstance(decision, RetryAt):
                self._retry(chunk, decision.when, decision.reason, reached=reached)
            elif isinstance(decision, RateLimited):
                self._rate_limited(target, chunk, decision, reached=reached)
                rest = [r for c in pending for r in c]
                if rest:
                    self._rate_limited(target, rest, decision, reached=False)
                return
            elif isinstance(decision, Hold):
                rest = [r for c in [chunk, *pending] for r in c]
                self._hold_connection(target, rest, decision.reason)
                return

    # -- recording outcomes -------------------------------------------------------------

    def _update_leased(self, rows: Sequence[Claimed], **values: Any) -> int:
        ids = [r.id for r in rows]
        stmt = (
            update(EVENTS)
            .where(EVENTS.c.id.in_(ids), EVENTS.c.lease_owner == self.worker_id)
            .values(lease_owner=None, lease_expires_at=None, **values)
        )
        for attempt in range(RECORD_ATTEMPTS):
            try:
                with self.runtime.sessions.begin() as session:
                    result = session.execute(stmt)
                    changed = int(result.rowcount or 0)  # type: ignore[attr-defined]
                break
            except DBAPIError as exc:
                # Meta's answer is in hand: a dropped database connection must not lose it
                # (the rows would be re-sent when their lease runs out). Retry on a fresh one.
                if attempt + 1 == RECORD_ATTEMPTS or not (
                    exc.connection_invalidated or isinstance(exc, OperationalError)
                ):
                    raise
                log.warning(
                    "recording Meta's answer failed (%s); retrying", type(exc).__name__
                )
                time.sleep(
                    0.2 * 2**attempt
                )  # even while stopping: the answer must be kept
        if changed != len(ids):
            self.stats.lease_lost += len(ids) - changed
            log.warning(
                "%d of %d rows were re-leased by another worker before this answer was recorded",
                len(ids) - changed,
                len(ids),
            )
        return changed

    def _sent(
        self, target: Target, rows: Sequence[Claimed], result: SendResult
    ) -> None:
        now = self.clock()
        self._update_leased(
            rows,
            status=EventStatus.SENT,
            events_received=result.events_received,
            fbtrace_id=(result.fbtrace_id or "")[:64] or None,
            sent_at=now,
            send_count=EVENTS.c.send_count + 1,
            last_error=None,
        )
        self.stats.sent += len(rows)
        if result.events_received != len(rows):
            self.stats.mismatches += 1
            log.warning(
                "pixel %s: sent %d events, Meta counted %d (fbtrace_id %s)",
                target.pixel_id,
                len(rows),
                result.events_received,
                result.fbtrace_id,
            )
        else:
            log.info(
                "pixel %s: %d events sent (fbtrace_id %s)",
                target.pixel_id,
                len(rows),
                result.fbtrace_id,
            )

    def _retry(
        self, rows: Sequence[Claimed], when: datetime, reason: str, *, reached: bool
    ) -> None:
        self._update_leased(
            rows,
            status=EventStatus.PENDING,
            attempts=EVENTS.c.attempts + 1,
            send_count=EVENTS.c.send_count + (1 if reached else 0),
            next_attempt_at=when,
            last_error=_clip(reason),
        )
        self.stats.retried += len(rows)
        log.warning(
            "%d events retry at %s: %s", len(rows), when.isoformat(), _clip(reason, 300)
        )

    def _rate_limited(
        self,
        target: Target,
        rows: Sequence[Claimed],
        decision: RateLimited,
        *,
        reached: bool,
    ) -> None:
        with self.runtime.sessions.begin() as session:
            # Never shorten a longer backoff another worker set.
            session.execute(
                update(CONNECTIONS)
                .where(
                    CONNECTIONS.c.id == target.id,
                    or_(
                        CONNECTIONS.c.backoff_until.is_(None),
                        CONNECTIONS.c.backoff_until < decision.until,
                    ),
                )
                .values(backoff_until=decision.until)
            )
        self._update_leased(
            rows,
            status=EventStatus.PENDING,
            attempts=EVENTS.c.attempts + 1,
            send_count=EVENTS.c.send_count + (1 if reached else 0),
            next_attempt_at=decision.until,
            last_error=_clip(decision.reason),
        )
        self.stats.rate_limited += len(rows)
        log.warning(
            "connection %s backs off until %s: %s",
            target.id,
            decision.until.isoformat(),
            _clip(decision.reason, 300),
        )

    def _hold(self, rows: Sequence[Claimed], reason: str) -> None:
        self._update_leased(rows, status=EventStatus.HELD, last_error=_clip(reason))
        self.stats.held += len(rows)

    def _hold_connection(
        self, target: Target, rows: Sequence[Claimed], reason: str
    ) -> None:
        with self.runtime.sessions.begin() as session:
            session.execute(
                update(CONNECTIONS)
                .where(
                    CONNECTIONS.c.id == target.id,
                    CONNECTIONS.c.status == ConnectionStatus.ACTIVE,
                )
                .values(
                    status=ConnectionStatus.NEEDS_RECONNECT,
                    status_reason=_clip(reason, 500),
                    updated_at=self.clock(),
                )
            )
            # The rest of its outbox would meet the same refusal: hold it now, visibly.
            session.execute(
                update(EVENTS)
                .where(
                    EVENTS.c.connection_id == target.id,
                    EVENTS.c.status == EventStatus.PENDING,
                )
                .values(status=EventStatus.HELD, last_error=_clip(f"held: {reason}"))
            )
        self._hold(rows, f"held: {reason}")
        log.error(
            "connection %s needs Meta reconnected; its events are held: %s",
            target.id,
            _clip(reason, 300),
        )

    def _dead(self, rows: Sequence[Claimed], verdict: Dead) -> None:
        self._update_leased(
            rows,
            status=EventStatus.DEAD,
            last_error=_clip(f"{verdict.kind}: {verdict.reason}"),
        )
        self.stats.dead += len(rows)
        log.warning(
            "dead-lettered %d event(s) (ids %s): %s: %s",
            len(rows),
            ",".join(str(r.id) for r in rows[:10]),
            verdict.kind,
            _clip(verdict.reason, 300),
        )

    def _release(self, rows: Sequence[Claimed], at: datetime | None = None) -> None:
        """Give rows back untouched, for this or another worker to send later."""
        if not rows:
            return
        values: dict[str, Any] = {"status": EventStatus.PENDING}
        if at is not None:
            values["next_attempt_at"] = at
        self._update_leased(rows, **values)
        self.stats.released += len(rows)

    # -- the loop -----------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim and process one batch; the number of rows claimed."""
        claimed = self.claim()
        if claimed:
            self.process(claimed)
        return len(claimed)


def _may_have_reached_meta(error: GraphError) -> bool:
    # A timeout, a dropped connection or a 5xx leaves it open whether Meta counted the events;
    # a connection never made (refused, no DNS) does not.
    if not error.may_have_reached:
        return False
    return error.status is None or error.status >= 500 or error.code is None


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- periodic jobs ------------------------------------------------------------------------


def collect_periodic_jobs() -> list[PeriodicJob]:
    """Every platform's periodic jobs, plus Meta's token check."""
    jobs: list[PeriodicJob] = []
    try:
        adapters = registry.adapters()
    except Exception:
        # A broken platform package must not stop delivery of every other store's events.
        log.exception("could not load the platform adapters; their jobs will not run")
        adapters = {}
    for name, adapter in adapters.items():
        try:
            jobs.extend(adapter.periodic_jobs())
        except Exception:
            log.exception("platform %s could not list its periodic jobs", name)
    try:
        jobs.extend(meta_oauth.periodic_jobs())
        jobs.extend(dataset_quality.periodic_jobs())
    except Exception:
        log.exception("Meta's periodic jobs could not be listed")
    return jobs


class JobScheduler:
    """Runs each job when its interval has passed; a failing job is logged, never fatal."""

    def __init__(self, jobs: Sequence[PeriodicJob], runtime: Runtime) -> None:
        self.jobs = list(jobs)
        self.runtime = runtime
        self.next_run: dict[str, float] = {job.name: 0.0 for job in self.jobs}

    def run_due(self, stop: threading.Event) -> None:
        for job in self.jobs:
            if stop.is_set():
                return
            now = time.monotonic()
            if now < self.next_run[job.name]:
                continue
            self.next_run[job.name] = now + job.interval_seconds
            try:
                job.run(self.runtime)
            except Exception:
                log.exception("periodic job %s failed; it runs again later", job.name)


# -- entry point --------------------------------------------------------------------------


def run_worker(
    *,
    runtime: Runtime,
    drain: bool = False,
    stop: threading.Event | None = None,
    worker_id: str | None = None,
    client: GraphClient | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    rand: Callable[[], float] = random.random,
    clock: Clock = utc_now,
) -> dict[str, Any] | None:
    """Send due events until stopped; with ``drain``, until nothing is due, returning counts.

    Run from the main thread without a ``stop`` event, SIGTERM and SIGINT stop claiming and
    the current batch is finished or released before returning.
    """
    own_stop = stop is None
    stop = stop or threading.Event()
    restore = _install_signal_handlers(stop) if own_stop else {}
    dispatcher = Dispatcher(
        runtime,
        client=client,
        worker_id=worker_id,
        policy=policy,
        rand=rand,
        clock=clock,
        stop=stop,
    )
    scheduler = (
        None if drain else JobScheduler(collect_periodic_jobs(), runtime=runtime)
    )
    log.info("worker %s started%s", dispatcher.worker_id, " (drain)" if drain else "")
    try:
        while not stop.is_set():
            if scheduler is not None:
                scheduler.run_due(stop)
            try:
                claimed = dispatcher.run_once()
            except SQLAlchemyError:
                if drain:
                    raise
                # The database restarts or fails over: wait and try again, never exit.
                log.exception("database error in the worker loop; retrying")
                stop.wait(max(runtime.settings.poll_interval, 1.0))
                continue
            if claimed == 0:
                if drain:
                    break
                stop.wait(runtime.settings.poll_interval)
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
        if client is None:
            dispatcher.client.close()
    summary = dispatcher.stats.summary()
    log.info("worker %s stopped: %s", dispatcher.worker_id, summary)
    return summary if drain else None


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the current batch", signal.Signals(signum).name
        )
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    return previous
