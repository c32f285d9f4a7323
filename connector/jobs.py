"""Periodic jobs: each runs once per interval across the cluster, on a thread of its own.

Delivery never waits for a job: the runner is a separate thread of the worker process
(``connector worker``, and ``connector serve``'s in-process worker), started and stopped
beside the dispatcher loop.

Once per cluster: a job's interval divides time into ticks (``floor(epoch / interval)``);
before running, a process inserts the row ``(job, tick)`` into ``job_runs`` with
``INSERT ... ON CONFLICT DO NOTHING``. Only the process whose insert added the row runs the
job for that tick, however many worker processes share the database (the lease scheme of
procrastinate's periodic tasks, https://procrastinate.readthedocs.io/en/stable/howto/advanced/cron.html).
On SQLite the single process takes every tick the same way.

Shutdown: :meth:`JobRunner.stop` sets the stop event; jobs poll :func:`stop_requested`
between units of work (a connection, a page of orders) and return early, leaving their
progress marks where they were, so the next tick resumes. The runner waits at most
``JOB_STOP_SECONDS``, well inside the worker's 20 s shutdown promise; a job stuck in one
HTTP request beyond that is abandoned with the daemon thread (its tick stays claimed and
unfinished; the work it did is idempotent).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector import meta_oauth, registry
from connector.platform import PeriodicJob
from connector.runtime import Runtime
from connector.store.models import JobRun

log = logging.getLogger(__name__)

JOB_RUNS = cast(Table, JobRun.__table__)
#: how long stop() waits for a running job; the worker promises to exit within 20 s
JOB_STOP_SECONDS = 12.0
#: the runner looks for due jobs at least this often (seconds)
POLL_SECONDS = 5.0
#: lease rows older than this are deleted
KEEP_RUNS = timedelta(days=7)

_local = threading.local()
#: when SIGTERM/SIGINT arrived (monotonic seconds): the shutdown budget counts from there
_signalled: dict[str, float] = {}
#: an unfinished run younger than this many intervals (at least STALE_RUN) holds later ticks
RUNNING_INTERVALS = 3
STALE_RUN = timedelta(hours=1)


def stop_requested() -> bool:
    """True when the job running on this thread should return now (the worker is stopping)."""
    stop: threading.Event | None = getattr(_local, "stop", None)
    return stop is not None and stop.is_set()


def wait_or_stop(seconds: float) -> bool:
    """Sleep up to ``seconds``, waking at once when the worker stops; True when stopping."""
    stop: threading.Event | None = getattr(_local, "stop", None)
    if stop is None:
        time.sleep(max(seconds, 0.0))
        return False
    return stop.wait(max(seconds, 0.0))


def install_stop_signals(stop: threading.Event) -> dict[int, object]:
    """SIGTERM and SIGINT set ``stop`` (main thread only); returns the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        _signalled.setdefault("at", time.monotonic())
        stop.set()

    return {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict[int, object]) -> None:
    """Put back the handlers ``install_stop_signals`` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


def collect_periodic_jobs(
    sweep_interval: float | None = None,
) -> list[PeriodicJob]:
    """Every platform's periodic jobs, Meta's token check, and the order sweep."""
    from connector import dataset_quality, retention, sweep

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
    jobs.extend(sweep.periodic_jobs(sweep_interval or sweep.DEFAULT_INTERVAL_SECONDS))
    jobs.extend(retention.periodic_jobs())
    return jobs


def tick_of(job: PeriodicJob, epoch: float) -> int:
    """The interval number ``epoch`` (seconds) falls in, for ``job``'s interval."""
    return math.floor(epoch / max(job.interval_seconds, 1.0))


def default_owner() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"[:64]


class JobRunner:
    """Runs periodic jobs on a thread of its own, each once per interval per cluster."""

    def __init__(
        self,
        runtime: Runtime,
        jobs: Sequence[PeriodicJob] | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.runtime = runtime
        self.jobs = list(
            collect_periodic_jobs(runtime.settings.sweep_interval)
            if jobs is None
            else jobs
        )
        self.owner = owner or default_owner()
        self.clock = clock
        self.stop_event = stop or threading.Event()
        self._thread: threading.Thread | None = None
        #: job name -> the last tick this process looked at (claimed or found taken)
        self._seen: dict[str, int] = {}

    # -- one pass -------------------------------------------------------------------

    def claim(self, job: PeriodicJob, tick: int) -> bool:
        """Insert the lease row for ``(job, tick)``; True when this process won it."""
        dialect = self.runtime.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = datetime.fromtimestamp(self.clock(), UTC)
        stmt = (
            insert(JOB_RUNS)
            .values(job=job.name[:64], tick=tick, owner=self.owner, started_at=now)
            .on_conflict_do_nothing(index_elements=["job", "tick"])
            .returning(JOB_RUNS.c.tick)
        )
        window = max(
            STALE_RUN, timedelta(seconds=RUNNING_INTERVALS * job.interval_seconds)
        )
        running = select(JOB_RUNS.c.tick).where(
            JOB_RUNS.c.job == job.name[:64],
            JOB_RUNS.c.tick < tick,
            JOB_RUNS.c.finished_at.is_(None),
            JOB_RUNS.c.started_at > now - window,
        )
        with self.runtime.sessions.begin() as session:
            if session.execute(running.limit(1)).first() is not None:
                # Still running elsewhere (a sweep longer than its interval): one at a time.
                return False
            won = session.execute(stmt).first() is not None
            if won:
                session.execute(
                    delete(JOB_RUNS).where(
                        JOB_RUNS.c.job == job.name[:64],
                        JOB_RUNS.c.started_at < now - KEEP_RUNS,
                    )
                )
        return won

    def _finish(
        self, job: PeriodicJob, tick: int, outcome: str, detail: str | None
    ) -> None:
        with self.runtime.sessions.begin() as session:
            session.execute(
                update(JOB_RUNS)
                .where(JOB_RUNS.c.job == job.name[:64], JOB_RUNS.c.tick == tick)
                .values(
                    finished_at=datetime.fromtimestamp(self.clock(), UTC),
                    outcome=outcome,
                    detail=detail[:2000] if detail else None,
                )
            )

    def run_due(self) -> list[str]:
        """Run every job whose current tick no process has taken yet; the names run."""
        ran: list[str] = []
        _local.stop = self.stop_event
        for job in self.jobs:
            if self.stop_event.is_set():
                break
            tick = tick_of(job, self.clock())
            if self._seen.get(job.name) == tick:
                continue
            try:
                won = self.claim(job, tick)
            except Exception:
                # The database is away: try again at the next poll, never crash the worker.
                log.exception("could not claim periodic job %s", job.name)
                continue
            self._seen[job.name] = tick
            if not won:
                continue
            outcome, detail = "ok", None
            started = time.monotonic()
            try:
                job.run(self.runtime)
            except Exception as exc:
                outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("periodic job %s failed; it runs again later", job.name)
            if outcome == "ok" and self.stop_event.is_set():
                outcome = "interrupted"
            ran.append(job.name)
            log.info(
                "periodic job %s %s in %.1f s",
                job.name,
                outcome,
                time.monotonic() - started,
            )
            try:
                self._finish(job, tick, outcome, detail)
            except Exception:
                log.exception("could not record the end of periodic job %s", job.name)
        return ran

    def seconds_to_next(self) -> float:
        """How long until the earliest next tick of any job (at most ``POLL_SECONDS``)."""
        now = self.clock()
        waits = [
            (tick_of(job, now) + 1) * max(job.interval_seconds, 1.0) - now
            for job in self.jobs
        ]
        return max(0.05, min([POLL_SECONDS, *waits]))

    # -- the thread -----------------------------------------------------------------

    def _loop(self) -> None:
        log.info("periodic jobs started: %s", ", ".join(j.name for j in self.jobs))
        while not self.stop_event.is_set():
            try:
                self.run_due()
            except Exception:  # run_due guards each job; this is for the unforeseen
                log.exception("the periodic job runner failed; it goes on")
            self.stop_event.wait(self.seconds_to_next())
        log.info("periodic jobs stopped")

    def start(self) -> JobRunner:
        """Start the runner's thread (a daemon: a job stuck past shutdown cannot hold the exit)."""
        if not self.jobs:
            return self
        self._thread = threading.Thread(
            target=self._loop, name="connector-jobs", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the running job to return and wait up to ``timeout`` s; True when it did.

        Without ``timeout``: what is left of ``JOB_STOP_SECONDS`` since SIGTERM arrived (the
        job has been stopping since then, while the dispatcher finished its batch).
        """
        self.stop_event.set()
        if self._thread is None:
            return True
        if timeout is None:
            since = time.monotonic() - _signalled.get("at", time.monotonic())
            timeout = max(0.5, JOB_STOP_SECONDS - since)
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if not stopped:
            log.warning(
                "a periodic job did not stop within %.0f s; it is abandoned", timeout
            )
        return stopped
