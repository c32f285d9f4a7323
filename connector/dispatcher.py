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
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from connector import inbox, jsoncodec, logs, metrics
from connector.capi import GraphClient, SendResult, event_problem, failed_event_index
from connector.crypto import keyring
from connector.errors import CryptoError, GraphError
from connector.retry import (
    DEFAULT_POLICY,
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
)
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus

log = logging.getLogger(__name__)

#: SIGTERM to exit: Heroku-like hosts send SIGKILL 30 s after SIGTERM; we promise 20
SHUTDOWN_GRACE_SECONDS = 20.0
#: a send must end well inside the grace period, whatever http_timeout says
MAX_SEND_SECONDS = 15.0
#: share of the lease one request may use: the answer is recorded while the lease still holds
SEND_SHARE_OF_LEASE = 0.8
#: share of the lease a claim may use before it gives the rows it has not sent yet back
CLAIM_SHARE_OF_LEASE = 0.75
#: share of the lease that must be left at the latest end of a request for it to go without
#: renewing the lease first: the claim's own lease covers it, and a clock running up to half
#: a lease ahead on another worker still cannot let that worker take the rows meanwhile
FRESH_LEASE_SHARE = 0.5
#: tries to record Meta's answer at least, however short the lease
RECORD_ATTEMPTS = 4
#: a row claimed again after this many expired leases keeps killing its worker: dead-letter it
MAX_RECLAIMS = 3
#: events of one connection taken per round of a claim, so no store waits behind another
FAIR_SHARE = 100
#: refused events, with none accepted, after which a store is set aside as failing (and at
#: least a quarter of its batch: a few bad events among many good ones are only dead-lettered)
ISOLATE_AFTER = 5
#: requests one batch may cost before what is left of it waits for a later claim
MAX_REQUESTS_PER_BATCH = 64
#: seconds between two heartbeats of a worker
HEARTBEAT_SECONDS = 5.0

#: PostgreSQL: lock the first candidates still due and free, in the candidates' order
_LOCK_CANDIDATES = text(
    """
    SELECT e.id
    FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS c(id, n)
    JOIN events AS e ON e.id = c.id
    WHERE (e.status = 'pending' AND e.next_attempt_at <= :now)
       OR (e.status = 'sending' AND e.lease_expires_at <= :now)
    ORDER BY c.n
    LIMIT :limit
    FOR UPDATE OF e SKIP LOCKED
    """
)

EVENTS = cast(Table, Event.__table__)
CONNECTIONS = cast(Table, Connection.__table__)

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One leased outbox row, as much of it as a send needs."""

    id: int
    connection_id: str
    event_time: datetime
    #: the Meta event as stored (JSON text): it travels into the request as it is, so a
    #: claim holds 2 KB of text per event, not the objects a parse would make of it
    document: str
    event_id: str
    attempts: int
    #: times this row was claimed again after a lease ran out
    reclaims: int = 0
    #: when this worker leased it (``time.monotonic()``); 0 for unknown, which renews first
    leased_at: float = 0.0


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
    #: why the stored token could not be read (a key that was removed), or None
    token_problem: str | None = None

    def hold_reason(self) -> str | None:
        """Why this connection's events must wait for a person, or None when they may go."""
        if self.token_problem is not None:
            return f"held: {self.token_problem}"
        if self.status == ConnectionStatus.NEEDS_RECONNECT:
            why = f" ({self.status_reason})" if self.status_reason else ""
            return f"held: the connection needs Meta reconnected{why}"
        if self.status == ConnectionStatus.UNINSTALLED:
            return "held: the app was uninstalled from the store"
        if self.status == ConnectionStatus.DISCONNECTED:
            return "held: Meta is disconnected for this store"
        if self.status not in (ConnectionStatus.ACTIVE, ConnectionStatus.FAILING):
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
    #: rows whose lease another worker took before this one sent or recorded them
    lease_lost: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name``; sends run in several threads at once."""
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

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


class _Batch:
    """One connection's share of a claim, sent by one thread: the rows and what they cost."""

    def __init__(self, target: Target, rows: list[Claimed], started: float) -> None:
        self.target = target
        self.rows = rows
        self.started = started
        self.requests = 0
        self.accepted = False
        self.refused_singles = 0
        #: the recording of the last accepted request, while the next request is out
        self.recording: Future[None] | None = None


class Dispatcher:
    """Claims, sends and records; one per worker process (or ``serve`` thread).

    Requests for different batches run in parallel (``CONNECTOR_SEND_CONCURRENCY``), each
    row's lease is renewed right before the request that carries it, and every database
    write is a short transaction of its own.
    """

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
        concurrency: int | None = None,
        claim_size: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.client = client or GraphClient(runtime.settings)
        self.lease_seconds = float(self.settings.lease_seconds)
        #: the whole exchange of one request, DNS and a trickling answer included
        self.send_deadline = min(
            self.settings.http_timeout,
            MAX_SEND_SECONDS,
            self.lease_seconds * SEND_SHARE_OF_LEASE,
        )
        self.client.timeout = min(self.client.timeout, self.send_deadline)
        self.worker_id = worker_id or default_worker_id()
        self.policy = policy
        self.rand = rand
        self.clock = clock
        self.stop = stop or threading.Event()
        self.stats = Stats()
        self.batch_size = max(1, min(self.settings.batch_size, 1000))
        self.concurrency = max(1, concurrency or self.settings.send_concurrency)
        # A claim feeds every sending thread: up to four requests' worth of rows per thread.
        self.claim_size = claim_size or self.batch_size * min(self.concurrency, 4)
        self.is_postgres = runtime.engine.dialect.name == "postgresql"
        self._senders = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="connector-send"
        )
        # The HTTP exchanges run apart so that a send can be given up at its deadline; a
        # few spare threads take the place of exchanges that are still dangling.
        self._http = ThreadPoolExecutor(
            self.concurrency + 4, thread_name_prefix="connector-http"
        )
        # One claim ahead at most, on its own database connection; only when its rows cannot
        # outlive their lease while the claim before is processed (that takes at most
        # CLAIM_SHARE_OF_LEASE of the lease, one last request and its recording).
        self.claims_ahead = (
            self.lease_seconds * (1 - CLAIM_SHARE_OF_LEASE) > 1.5 * self.send_deadline
        )
        self._claimer = ThreadPoolExecutor(1, thread_name_prefix="connector-claim")
        # Meta's answers are recorded while each batch's next request is out.
        self._recorder = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="connector-record"
        )
        self._last_beat = 0.0

    def close(self) -> None:
        """Wait for the sending threads; drop exchanges past their deadline."""
        self._claimer.shutdown(wait=True)
        self._senders.shutdown(wait=True)
        self._recorder.shutdown(wait=True)
        self._http.shutdown(wait=False, cancel_futures=True)

    def claim_ahead(self) -> Future[list[Claimed]]:
        """:meth:`claim` on a thread of its own, to overlap the requests of the claim before.

        Its rows are leased as soon as it runs: process them, or :meth:`give_back` them.
        """
        return self._claimer.submit(self.claim)

    def give_back(self, ahead: Future[list[Claimed]]) -> None:
        """Release the rows of a claim made ahead that will not be processed (a stop)."""
        try:
            rows = ahead.result()
        except SQLAlchemyError:
            # The claim failed: it leased nothing, or its rows go again once the lease ends.
            log.warning(
                "a claim made ahead failed; its rows go again after their lease"
            )
            return
        self._release(rows)

    def _row_ids(self, ids: Sequence[int]) -> ColumnElement[bool]:
        """``events.id`` is one of ``ids``.

        PostgreSQL gets one array parameter (``id = ANY(:ids)``): the statement's text is the
        same for any number of rows, so it is compiled and parsed once, not once per batch
        with a thousand placeholders. SQLite has no arrays and gets ``IN (...)``.
        """
        if self.is_postgres:
            return EVENTS.c.id == any_(
                bindparam(None, list(ids), type_=ARRAY(BigInteger()))
            )
        return EVENTS.c.id.in_(list(ids))

    # -- claiming -----------------------------------------------------------------------

    def claim(self) -> list[Claimed]:
        """Lease due rows, fairly across connections: pending and due, or leased by a dead worker.

        Rows are taken round by round, ``FAIR_SHARE`` of each connection per round, oldest
        first, so a store with a large backlog cannot starve one with a few events. Only
        rows in the partial index ``ix_events_claimable`` are read: the cost follows the due
        rows, never the sent history.
        """
        now = self.clock()
        t = EVENTS
        due = or_(
            and_(t.c.status == EventStatus.PENDING, t.c.next_attempt_at <= now),
            and_(t.c.status == EventStatus.SENDING, t.c.lease_expires_at <= now),
        )
        backed_off = select(CONNECTIONS.c.id).where(CONNECTIONS.c.backoff_until > now)
        rank = func.row_number().over(partition_by=t.c.connection_id, order_by=t.c.id)
        ranked = (
            select(t.c.id.label("id"), ((rank - 1) // FAIR_SHARE).label("round"))
            .where(
                # Spelled as the partial index's predicate, so the planner can use it.
                t.c.status.in_([EventStatus.PENDING, EventStatus.SENDING]),
                due,
                t.c.connection_id.not_in(backed_off),
            )
            .subquery("ranked")
        )
        # Candidates in fair order, a few claims' worth so that rows other workers hold
        # leave enough; then lock the first ones still free. Two statements, not a join:
        # with stale statistics a join re-ran the ranking for every candidate.
        candidates = (
            select(ranked.c.id)
            .order_by(ranked.c.round, ranked.c.id)
            .limit(self.claim_size * 3)
        )
        expired = t.c.status == EventStatus.SENDING
        stmt = (
            update(t)
            .values(
                status=EventStatus.SENDING,
                lease_owner=self.worker_id,
                lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                # A lease that ran out belonged to a worker that died, perhaps after Meta
                # counted its request: sending again is a possible re-send, so count it, and
                # count the try, so a row that kills every worker ends dead, not in a loop.
                send_count=case((expired, t.c.send_count + 1), else_=t.c.send_count),
                attempts=case((expired, t.c.attempts + 1), else_=t.c.attempts),
                reclaims=case((expired, t.c.reclaims + 1), else_=t.c.reclaims),
            )
            .returning(
                t.c.id,
                t.c.connection_id,
                t.c.event_time,
                sql_cast(t.c.payload, Text),
                t.c.event_id,
                t.c.attempts,
                t.c.reclaims,
            )
        )
        leased_at = time.monotonic()
        with self.runtime.sessions.begin() as session:
            order = [int(i) for i in session.execute(candidates).scalars()]
            if not order:
                return []
            if self.is_postgres:
                # SKIP LOCKED: concurrent workers take disjoint rows instead of queueing on
                # each other; the row's due-ness is checked again under the lock. Joined to
                # the candidates in their order (one primary-key lookup each), and leased by
                # the same statement: one round trip.
                locked = (
                    _LOCK_CANDIDATES.bindparams(
                        ids=order, now=now, limit=self.claim_size
                    )
                    .columns(id=BigInteger())
                    .subquery("locked")
                )
                rows = session.execute(
                    stmt.where(t.c.id.in_(select(locked.c.id)))
                ).all()
            else:
                # SQLite: BEGIN IMMEDIATE already made this transaction the only writer.
                picked = order[: self.claim_size]
                rows = session.execute(stmt.where(self._row_ids(picked))).all()
        claimed = [
            Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6], leased_at) for r in rows
        ]
        claimed.sort(key=lambda c: c.id)
        self.stats.add("claimed", len(claimed))
        return claimed

    def _targets(self, ids: Iterable[str]) -> dict[str, Target]:
        cols = (
            CONNECTIONS.c.id,
            CONNECTIONS.c.status,
            CONNECTIONS.c.status_reason,
            CONNECTIONS.c.pixel_id,
            # The ciphertext: each connection's token is decrypted on its own, so one that
            # cannot be read holds that connection and no other.
            type_coerce(CONNECTIONS.c.meta_token, Text),
            CONNECTIONS.c.test_event_code,
            CONNECTIONS.c.backoff_until,
        )
        stmt = select(*cols).where(CONNECTIONS.c.id.in_(list(ids)))
        raw = self._db(lambda session: [tuple(r) for r in session.execute(stmt)])
        rv: dict[str, Target] = {}
        for conn_id, status, reason, pixel, sealed, test_code, backoff in raw:
            token: str | None = None
            problem: str | None = None
            if sealed is not None:
                try:
                    token = keyring.decrypt(sealed)
                except CryptoError:
                    problem = (
                        "the stored Meta token cannot be decrypted with "
                        "CONNECTOR_ENCRYPTION_KEYS (its key was removed?); add the key back "
                        "or reconnect Meta"
                    )
            rv[conn_id] = Target(
                conn_id, status, reason, pixel, token, test_code, backoff, problem
            )
        return rv

    # -- one claim ----------------------------------------------------------------------

    def process(self, claimed: Sequence[Claimed]) -> None:
        """Send a claim, each connection's rows as batches of their own, several at once."""
        started = time.monotonic()
        claimed = self._dead_letter_reclaimed(claimed)
        groups: dict[str, list[Claimed]] = {}
        for row in claimed:
            groups.setdefault(row.connection_id, []).append(row)
        targets = self._targets(groups)
        work: list[_Batch] = []
        for conn_id, rows in groups.items():
            target = targets.get(conn_id)
            if (
                target is None
            ):  # the store was redacted meanwhile; its rows went with it
                continue
            if self.stop.is_set():
                self._release(rows)
                continue
            if target.token_problem is not None:
                self._hold_connection(
                    target, rows, target.token_problem, sent_with=None
                )
                continue
            reason = target.hold_reason()
            if reason is not None:
                metrics.count_events("held", len(rows), reason="connection_not_ready")
                self._hold(rows, reason)
                continue
            now = self.clock()
            if target.backoff_until is not None and target.backoff_until > now:
                self._release(rows, at=target.backoff_until)
                continue
            rows = self._dead_letter_unsendable(rows, now)
            if rows:
                # A connection's requests go one after another, so that a rate limit or a
                # refused token stops the next one; different connections go in parallel.
                work.append(_Batch(target, rows, started))
        futures = [self._senders.submit(self._send_safely, batch) for batch in work]
        for future in futures:
            future.result()

    def _dead_letter_reclaimed(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        keep: list[Claimed] = []
        for row in claimed:
            if row.reclaims > MAX_RECLAIMS:
                self._dead(
                    [row],
                    Dead(
                        kind="stuck",
                        reason=f"its worker stopped without an answer {row.reclaims} times "
                        "while holding it; look at the worker logs before a replay",
                    ),
                )
            else:
                keep.append(row)
        return keep

    def _dead_letter_unsendable(
        self, rows: list[Claimed], now: datetime
    ) -> list[Claimed]:
        """Set aside, visibly, the rows Meta would refuse: each would sink its whole request."""
        keep: list[Claimed] = []
        for row in rows:
            try:
                # Read for the checks only, and let go: the request carries the text.
                event = jsoncodec.loads(row.document)
            except ValueError:
                event = None
            verdict: Dead | None
            if not isinstance(event, dict):
                verdict = Dead(reason="not sent: its stored event is not a JSON object")
            else:
                verdict = check_event_time(
                    row.event_time, now, action_source=event.get("action_source")
                )
                if verdict is None:
                    problem = event_problem(event)
                    if problem is not None:
                        verdict = Dead(reason=f"not sent, Meta refuses it: {problem}")
            if verdict is None:
                keep.append(row)
            else:
                metrics.count_events("dead", 1, reason=verdict.kind)
                self._dead([row], verdict)
        return keep

    def _send_safely(self, batch: _Batch) -> None:
        # On the sender's thread: its log lines name the connection and the events they concern.
        logs.bind(
            connection_id=batch.target.id,
            event_ids=[r.event_id for r in batch.rows],
        )
        try:
            self._send(batch)
        except Exception:
            # One batch's failure (the database gone mid-way, a bug) must not stop the others;
            # its rows keep their lease and go again once it runs out.
            log.exception(
                "sending a batch of connection %s failed; its rows go again after their lease",
                batch.target.id,
            )
        finally:
            logs.bind(connection_id=None, event_ids=None)

    def _send(self, batch: _Batch) -> None:
        try:
            self._send_chunks(batch)
        finally:
            self._settle(batch)

    def _record_later(
        self, batch: _Batch, chunk: list[Claimed], result: SendResult, lease_end: float
    ) -> None:
        """Record an accepted request while the batch's next request is out.

        At most two recordings per batch at once (this one and the one before, which is then
        waited for); every other outcome waits for them (see :meth:`_settle`).
        """
        previous, batch.recording = batch.recording, None
        # The answer in hand is recorded whatever became of the one before...
        batch.recording = self._recorder.submit(
            self._record_sent, batch, chunk, result, lease_end
        )
        if previous is not None:
            # ...whose failure then stops the batch (its rest goes again after the lease).
            previous.result()

    def _record_sent(
        self, batch: _Batch, chunk: list[Claimed], result: SendResult, lease_end: float
    ) -> None:
        logs.bind(connection_id=batch.target.id, event_ids=[r.event_id for r in chunk])
        try:
            self._sent(batch.target, chunk, result, lease_end)
        finally:
            logs.bind(connection_id=None, event_ids=None)

    @staticmethod
    def _settle(batch: _Batch) -> None:
        """Wait for the batch's recording in flight; its failure is the batch's failure."""
        recording, batch.recording = batch.recording, None
        if recording is not None:
            recording.result()

    def _send_chunks(self, batch: _Batch) -> None:
        target = batch.target
        pixel_id, token = target.pixel_id or "", target.meta_token or ""
        size = self.batch_size
        chunks = [batch.rows[i : i + size] for i in range(0, len(batch.rows), size)]
        pending: list[list[Claimed]] = chunks[::-1]
        while pending:
            chunk = pending.pop()
            rest = [r for c in pending for r in c]
            if self.stop.is_set():
                self._release([*chunk, *rest])
                return
            if (
                time.monotonic() - batch.started
                > self.lease_seconds * CLAIM_SHARE_OF_LEASE
                or batch.requests >= MAX_REQUESTS_PER_BATCH
            ):
                # This claim has had its time: what is left goes back for a later claim.
                self._release([*chunk, *rest])
                return
            oldest = min(r.leased_at for r in chunk)
            if (
                time.monotonic() - oldest + self.send_deadline
                < self.lease_seconds * FRESH_LEASE_SHARE
            ):
                # Claimed moments ago: the claim's lease covers this request, with half of
                # it to spare at the request's latest end, so no write renews it; a read
                # still makes sure each row is here and ours (not deleted by a redaction,
                # not sent meanwhile from another claim of this worker).
                live = self._still_ours(chunk)
                if not live:
                    continue
                chunk = live
                lease_end = oldest + self.lease_seconds
            else:
                live = self._renew(chunk)
                if not live:
                    continue
                chunk = live
                lease_end = time.monotonic() + self.lease_seconds
            result, error = self._exchange(target, pixel_id, token, chunk)
            if error is not None:
                # Whatever this answer leads to (a hold, a backoff, a split) comes after the
                # answers before it are on record.
                self._settle(batch)
            if isinstance(error, ValueError):
                # The connection's settings cannot make a request (a pixel id that is not
                # digits): no retry can help, and a crash would loop on the same rows.
                self._hold_connection(
                    target,
                    [*chunk, *rest],
                    f"cannot send to Meta: {error}",
                    sent_with=None,
                )
                return
            graph_error = error if isinstance(error, GraphError) else None
            batch.requests += 1
            self.stats.add("requests")
            decision = classify(
                graph_error,
                batch_size=len(chunk),
                attempts=max(r.attempts for r in chunk),
                now=self.clock(),
                policy=self.policy,
                rand=self.rand,
            )
            metrics.count_decision(
                decision, len(chunk), graph_error.code if graph_error else None
            )
            # Only a request Meta may have processed counts as a send: a 4xx refusal counts nothing.
            reached = graph_error is None or _may_have_reached_meta(graph_error)
            sent_with = (pixel_id, token)
            if isinstance(decision, Sent) and result is not None:
                batch.accepted = True
                self._record_later(batch, chunk, result, lease_end)
            elif isinstance(decision, Split):
                index = (
                    None
                    if graph_error is None
                    else failed_event_index(graph_error, len(chunk))
                )
                if index is not None:
                    # Meta named the event: it alone is dead, the others go again together.
                    bad = chunk[index]
                    others = chunk[:index] + chunk[index + 1 :]
                    verdict = Dead(reason=f"Meta rejected the event ({graph_error})")
                    self._dead([bad], verdict)
                    metrics.count_events(
                        "dead",
                        1,
                        reason=verdict.kind,
                        code=graph_error.code if graph_error else None,
                    )
                    batch.refused_singles += 1
                    if others:
                        pending.append(others)
                else:
                    mid = len(chunk) // 2
                    log.info(
                        "pixel %s refused %d events; splitting to find the invalid ones",
                        target.pixel_id,
                        len(chunk),
                    )
                    pending.extend([chunk[mid:], chunk[:mid]])
            elif isinstance(decision, Dead):
                self._dead(chunk, decision)
                batch.refused_singles += len(chunk)
            elif isinstance(decision, RetryAt):
                self._retry(chunk, decision.when, decision.reason, reached=reached)
            elif isinstance(decision, RateLimited):
                self._rate_limited(target, chunk, decision, reached=reached)
                if rest:
                    self._rate_limited(target, rest, decision, reached=False)
                return
            elif isinstance(decision, Hold):
                self._hold_connection(
                    target, [*chunk, *rest], decision.reason, sent_with=sent_with
                )
                return
            elif isinstance(decision, Failing):
                self._fail_connection(target, [*chunk, *rest], decision, sent_with)
                return
            if (
                batch.refused_singles >= max(ISOLATE_AFTER, len(batch.rows) // 4)
                and not batch.accepted
                and pending
            ):
                # Every event tried was refused: the store's events are broken at the source.
                # It costs its own requests only, and waits while a person looks.
                left = [r for c in pending for r in c]
                self._fail_connection(
                    target,
                    left,
                    Failing(
                        reason=f"Meta refused each of the {batch.refused_singles} events "
                        "of this store that were tried (see the dead events); the rest wait",
                        until=self.clock() + timedelta(hours=1),
                    ),
                    sent_with,
                )
                return

    def _exchange(
        self, target: Target, pixel_id: str, token: str, chunk: Sequence[Claimed]
    ) -> tuple[SendResult | None, Exception | None]:
        """One request, bounded as a whole by ``send_deadline`` (DNS and slow answers too)."""
        future = self._http.submit(
            self.client.send_events,
            pixel_id,
            token,
            [jsoncodec.raw(r.document) for r in chunk],
            test_event_code=target.test_event_code,
        )
        try:
            return future.result(timeout=self.send_deadline + 1.0), None
        except (GraphError, ValueError) as exc:
            return None, exc
        except FuturesTimeout:
            started = not future.cancel()
            # Still running: Meta may yet count it, so it is a possible send; never started
            # (every HTTP thread busy with dangling exchanges): it reached nobody.
            return None, GraphError(
                f"Meta did not answer within {self.send_deadline:g} s",
                is_transient=True,
                may_have_reached=started,
            )

    # -- leases -------------------------------------------------------------------------

    def _still_ours(self, rows: Sequence[Claimed]) -> list[Claimed]:
        """The rows still leased to this worker, read without a write; only those may go."""
        stmt = select(EVENTS.c.id).where(
            self._row_ids([r.id for r in rows]),
            EVENTS.c.lease_owner == self.worker_id,
            EVENTS.c.status == EventStatus.SENDING,
        )
        ours = self._db(
            lambda session: {int(i) for i in session.execute(stmt).scalars()}
        )
        return self._keep_ours(rows, ours)

    def _keep_ours(self, rows: Sequence[Claimed], ours: set[int]) -> list[Claimed]:
        lost = len(rows) - len(ours)
        if lost:
            self.stats.add("lease_lost", lost)
            log.warning(
                "%d of %d rows are no longer leased to this worker; they are not sent by it",
                lost,
                len(rows),
            )
        return [r for r in rows if r.id in ours]

    def _renew(self, rows: Sequence[Claimed]) -> list[Claimed]:
        """Extend the lease of the rows still ours; only those may be sent now."""
        now = self.clock()
        stmt = (
            update(EVENTS)
            .where(
                self._row_ids([r.id for r in rows]),
                EVENTS.c.lease_owner == self.worker_id,
                EVENTS.c.status == EventStatus.SENDING,
            )
            .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds))
            .returning(EVENTS.c.id)
        )
        ours = self._db(
            lambda session: {int(i) for i in session.execute(stmt).scalars()}
        )
        return self._keep_ours(rows, ours)

    # -- recording outcomes -------------------------------------------------------------

    def _db(self, work: Callable[[Session], T], *, until: float | None = None) -> T:
        """Run ``work`` in a transaction; on a dropped connection, again on a fresh one.

        Tried at least ``RECORD_ATTEMPTS`` times and until ``until`` (a monotonic time; half
        a lease from now when None): a database that fails over or restarts for a few
        seconds must not leave rows in ``sending`` until their lease runs out.
        """
        deadline = (
            until if until is not None else time.monotonic() + self.lease_seconds / 2
        )
        attempt = 0
        while True:
            try:
                with self.runtime.sessions.begin() as session:
                    return work(session)
            except (DBAPIError, PoolTimeout) as exc:
                attempt += 1
                # PoolTimeout: every pooled connection busy for a while; one frees up soon.
                retryable = isinstance(exc, PoolTimeout | OperationalError) or bool(
                    exc.connection_invalidated
                )
                if not retryable or (
                    attempt >= RECORD_ATTEMPTS and time.monotonic() >= deadline
                ):
                    raise
                log.warning("database write failed (%s); retrying", type(exc).__name__)
                time.sleep(min(1.0, 0.2 * 2 ** min(attempt, 4)))

    def _update_leased(
        self,
        rows: Sequence[Claimed],
        *,
        keep_until: float | None = None,
        **values: Any,
    ) -> int:
        """Write an outcome to the rows this worker still leases; the number written.

        With ``keep_until`` (a monotonic time, the lease's end) a write that fails on a
        dropped database connection is tried again until then: Meta's answer is in hand,
        and losing it means sending the events again.
        """
        ids = [r.id for r in rows]
        stmt = (
            update(EVENTS)
            .where(self._row_ids(ids), EVENTS.c.lease_owner == self.worker_id)
            .values(lease_owner=None, lease_expires_at=None, **values)
        )

        def write(session: Session) -> int:
            return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]

        # Even while stopping: an answer in hand must be kept. The lease-owner guard makes a
        # late write safe: it writes nothing if another worker took the rows meanwhile.
        changed = self._db(write, until=keep_until)
        if changed != len(ids):
            self.stats.add("lease_lost", len(ids) - changed)
            log.warning(
                "%d of %d rows were re-leased by another worker before this answer was recorded",
                len(ids) - changed,
                len(ids),
            )
        return changed

    def _sent(
        self,
        target: Target,
        rows: Sequence[Claimed],
        result: SendResult,
        lease_end: float,
    ) -> None:
        now = self.clock()
        written = self._update_leased(
            rows,
            keep_until=lease_end,
            status=EventStatus.SENT,
            events_received=result.events_received,
            fbtrace_id=(result.fbtrace_id or "")[:64] or None,
            sent_at=now,
            send_count=EVENTS.c.send_count + 1,
            last_error=None,
        )
        # Rows another worker took meanwhile are its to count, not ours.
        self.stats.add("sent", written)
        if target.status == ConnectionStatus.FAILING:
            self._heal(target)
        if result.events_received != len(rows):
            self.stats.add("mismatches")
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

    def _heal(self, target: Target) -> None:
        with self.runtime.sessions.begin() as session:
            session.execute(
                update(CONNECTIONS)
                .where(
                    CONNECTIONS.c.id == target.id,
                    CONNECTIONS.c.status == ConnectionStatus.FAILING,
                )
                .values(
                    status=ConnectionStatus.ACTIVE,
                    status_reason=None,
                    updated_at=self.clock(),
                )
            )
        log.info("connection %s sends again", target.id)

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
        self.stats.add("retried", len(rows))
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
        self._back_off(target.id, decision.until)
        self._update_leased(
            rows,
            status=EventStatus.PENDING,
            attempts=EVENTS.c.attempts + 1,
            send_count=EVENTS.c.send_count + (1 if reached else 0),
            next_attempt_at=decision.until,
            last_error=_clip(decision.reason),
        )
        self.stats.add("rate_limited", len(rows))
        log.warning(
            "connection %s backs off until %s: %s",
            target.id,
            decision.until.isoformat(),
            _clip(decision.reason, 300),
        )

    def _back_off(self, conn_id: str, until: datetime) -> None:
        with self.runtime.sessions.begin() as session:
            # Never shorten a longer backoff another worker set.
            session.execute(
                update(CONNECTIONS)
                .where(
                    CONNECTIONS.c.id == conn_id,
                    or_(
                        CONNECTIONS.c.backoff_until.is_(None),
                        CONNECTIONS.c.backoff_until < until,
                    ),
                )
                .values(backoff_until=until)
            )

    def _hold(self, rows: Sequence[Claimed], reason: str) -> None:
        self._update_leased(rows, status=EventStatus.HELD, last_error=_clip(reason))
        self.stats.add("held", len(rows))

    def _still_sends_with(
        self, session: Any, target: Target, sent_with: tuple[str, str] | None
    ) -> bool:
        """Lock the connection; True when it still has the pixel and token a request used.

        A refusal of a token the owner has just replaced says nothing about the new one.
        """
        row = session.execute(
            select(CONNECTIONS.c.pixel_id, type_coerce(CONNECTIONS.c.meta_token, Text))
            .where(CONNECTIONS.c.id == target.id)
            .with_for_update()
        ).first()
        if row is None:
            return False
        if sent_with is None:
            return True
        pixel, sealed = row
        try:
            token = keyring.decrypt(sealed) if sealed is not None else None
        except CryptoError:
            return True
        return (pixel, token) == sent_with

    def _set_sending_status(
        self,
        session: Session,
        target: Target,
        status: str,
        reason: str,
        **values: Any,
    ) -> None:
        """Move a connection that was sending (active or failing) to ``status``, with why.

        A connection a person or another worker has meanwhile set otherwise (disconnected,
        uninstalled) keeps that state.
        """
        session.execute(
            update(CONNECTIONS)
            .where(
                CONNECTIONS.c.id == target.id,
                CONNECTIONS.c.status.in_(
                    [ConnectionStatus.ACTIVE, ConnectionStatus.FAILING]
                ),
            )
            .values(
                status=status,
                status_reason=_clip(reason, 500),
                updated_at=self.clock(),
                **values,
            )
        )

    def _hold_connection(
        self,
        target: Target,
        rows: Sequence[Claimed],
        reason: str,
        *,
        sent_with: tuple[str, str] | None,
    ) -> None:
        with self.runtime.sessions.begin() as session:
            current = self._still_sends_with(session, target, sent_with)
            if current:
                self._set_sending_status(
                    session, target, ConnectionStatus.NEEDS_RECONNECT, reason
                )
                # The rest of its outbox would meet the same refusal: hold it now, visibly.
                session.execute(
                    update(EVENTS)
                    .where(
                        EVENTS.c.connection_id == target.id,
                        EVENTS.c.status == EventStatus.PENDING,
                    )
                    .values(
                        status=EventStatus.HELD, last_error=_clip(f"held: {reason}")
                    )
                )
        if not current:
            log.warning(
                "connection %s changed its Meta token or pixel during the request; "
                "the refusal of the old one is ignored",
                target.id,
            )
            self._release(rows)
            return
        self._hold(rows, f"held: {reason}")
        log.error(
            "connection %s needs Meta reconnected; its events are held: %s",
            target.id,
            _clip(reason, 300),
        )

    def _fail_connection(
        self,
        target: Target,
        rows: Sequence[Claimed],
        decision: Failing,
        sent_with: tuple[str, str],
    ) -> None:
        """Show the connection as failing with Meta's reason; its events wait, not held."""
        with self.runtime.sessions.begin() as session:
            current = self._still_sends_with(session, target, sent_with)
            if current:
                self._set_sending_status(
                    session,
                    target,
                    ConnectionStatus.FAILING,
                    decision.reason,
                    backoff_until=decision.until,
                )
        if not current:
            self._release(rows)
            return
        self._update_leased(
            rows,
            status=EventStatus.PENDING,
            next_attempt_at=decision.until,
            last_error=_clip(decision.reason),
        )
        self.stats.add("retried", len(rows))
        log.error(
            "connection %s is failing until %s: %s",
            target.id,
            decision.until.isoformat(),
            _clip(decision.reason, 300),
        )

    def _dead(self, rows: Sequence[Claimed], verdict: Dead) -> None:
        self._update_leased(
            rows,
            status=EventStatus.DEAD,
            last_error=_clip(f"{verdict.kind}: {verdict.reason}"),
        )
        self.stats.add("dead", len(rows))
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
        self.stats.add("released", len(rows))

    # -- the loop -----------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim and process one batch; the number of rows claimed."""
        self.heartbeat()
        claimed = self.claim()
        if claimed:
            self.process(claimed)
        return len(claimed)

    def heartbeat(self, *, force: bool = False) -> None:
        """Tell the health check this worker is alive, at most every ``HEARTBEAT_SECONDS``."""
        if not force and time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = time.monotonic()
        with self.runtime.sessions.begin() as session:
            queries.beat(
                session,
                self.worker_id,
                now=self.clock(),
                claimed=self.stats.claimed,
                sent=self.stats.sent,
            )

    def forget(self) -> None:
        """Remove this worker's heartbeat on a clean exit."""
        try:
            with self.runtime.sessions.begin() as session:
                queries.forget_worker(session, self.worker_id)
        except SQLAlchemyError:
            log.warning("could not remove the heartbeat of worker %s", self.worker_id)


def _may_have_reached_meta(error: GraphError) -> bool:
    # A timeout, a dropped connection or a 5xx leaves it open whether Meta counted the events;
    # a connection never made (refused, no DNS) does not.
    if not error.may_have_reached:
        return False
    return error.status is None or error.status >= 500 or error.code is None


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    concurrency: int | None = None,
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
        concurrency=concurrency,
    )
    log.info("worker %s started%s", dispatcher.worker_id, " (drain)" if drain else "")
    ahead: Future[list[Claimed]] | None = None
    try:
        while not stop.is_set():
            try:
                dispatcher.heartbeat()
                # Deliveries the web process left for the worker become events first
                # (CONNECTOR_WEBHOOK_TRANSLATION=worker; nothing waits otherwise).
                translated = inbox.translate_waiting(runtime)
                taken, ahead = ahead, None
                claimed = taken.result() if taken is not None else []
                if not claimed:
                    # Nothing claimed ahead (or rows went back meanwhile): ask now.
                    claimed = dispatcher.claim()
                if claimed:
                    # The next claim's database work runs while this one's requests are
                    # out; it is processed only once this one is done, so a connection's
                    # requests still go one after another, and a backoff or a hold this one
                    # meets is read afresh before the next one sends.
                    if dispatcher.claims_ahead:
                        ahead = dispatcher.claim_ahead()
                    dispatcher.process(claimed)
            except SQLAlchemyError:
                if drain:
                    raise
                # The database restarts or fails over: wait and try again, never exit.
                log.exception("database error in the worker loop; retrying")
                stop.wait(max(runtime.settings.poll_interval, 1.0))
                continue
            if not claimed and not translated:
                if drain:
                    break
                stop.wait(runtime.settings.poll_interval)
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
        if ahead is not None:
            dispatcher.give_back(ahead)
        dispatcher.close()
        dispatcher.forget()
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
