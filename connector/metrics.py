"""Prometheus metrics: every counter and histogram of the connector, as module-level objects.

Labels are few and bounded (platform, topic, outcome, reason, Meta's error code); never a
shop, an order or a connection id.

Several processes (gunicorn's workers) each count in their own memory, so a scrape would
see one of them at random. prometheus-client's multiprocess mode fixes that: every process
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. The
variable must be set before the first metric is created, in every process, and point to the
same, initially empty folder (https://prometheus.github.io/client_python/multiprocess/).
The web server's configuration (``gunicorn.conf.py``'s ``on_starting``) sets it, before
any worker starts, to a fresh private folder (``mkdtemp``: unpredictable name, mode 0700), and
its ``child_exit`` hook calls :func:`mark_process_dead`. When it is not set and this module is
imported inside a gunicorn worker started without that configuration, a folder named after the
gunicorn master (process id and start time) is used, but only if it is a real folder owned by
this user and closed to others (else this process counts on its own). Should the folder
disappear (a cleaner of the temporary folder), ``/metrics`` makes it again and answers with
what it can instead of failing, and counting never fails a request.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


log = logging.getLogger(__name__)

#: how the folders this module and ``gunicorn.conf.py`` make are named
DIR_PREFIX = "capi-connector-metrics-"


def usable_dir(path: str) -> bool:
    """True when ``path`` is a real folder (not a link) owned by this user, closed to others."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and stat.S_IMODE(st.st_mode) & 0o077 == 0
    )


def ensure_dir(path: str) -> bool:
    """Make the folder ``path`` (mode 0700) when it is missing; True when it is a folder then."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return os.path.isdir(path)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # the command name (field 2) may hold spaces: count fields after its ")"
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _multiprocess_dir() -> str | None:
    """The shared folder for this process's metrics, or None for single-process mode."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        return configured
    if "gunicorn.arbiter" in sys.modules:
        # A gunicorn worker started without gunicorn.conf.py (the app is loaded after the
        # fork): its parent is the master. The start time tells a reused pid from the dead.
        master = os.getppid()
        path = str(
            Path(tempfile.gettempdir()) / f"{DIR_PREFIX}{master}-{_start_time(master)}"
        )
        if not (ensure_dir(path) and usable_dir(path)):
            sys.stderr.write(
                f"metrics: {path} is not a private folder of this user; counting in this"
                " process only (set PROMETHEUS_MULTIPROC_DIR)\n"
            )
            return None
        os.environ[MULTIPROC_ENV] = path
        return path
    return None


MULTIPROC_DIR = _multiprocess_dir()
if MULTIPROC_DIR:
    Path(MULTIPROC_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)

# prometheus_client picks its value store (memory, or files in the folder) when it is first
# imported: after the above. Should another module have imported it earlier, choose again
# before the first metric below is created.
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: E402

#: bumped when the folder was found gone: the process then writes new files (named
#: ``<pid>-<generation>``) in the folder made again, instead of its orphaned open ones
_generation = 0


def _process_identifier() -> str:
    pid = os.getpid()
    return f"{pid}-{_generation}" if _generation else str(pid)


def _folder_id() -> tuple[int, int] | None:
    try:
        st = os.stat(MULTIPROC_DIR) if MULTIPROC_DIR else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


values.ValueClass = (
    values.MultiProcessValue(_process_identifier)  # type: ignore[no-untyped-call]
    if MULTIPROC_DIR
    else values.get_value_class()  # type: ignore[no-untyped-call]
)
_folder_seen = _folder_id()

__all__ = ["CONTENT_TYPE_LATEST", "GaugeMetricFamily", "Metric"]

WEBHOOKS = Counter(
    "connector_webhooks",
    "Webhook deliveries answered, by platform, topic and outcome.",
    ["platform", "topic", "outcome"],
)
EVENTS = Counter(
    "connector_events",
    "Outbox events by what became of them (sent, retried, held, dead), why, and Meta's error code.",
    ["outcome", "reason", "code"],
)
GRAPH_REQUESTS = Counter(
    "connector_graph_requests",
    "Conversions API requests by outcome (ok, refused, failed) and Meta's error code.",
    ["outcome", "code"],
)
GRAPH_LATENCY = Histogram(
    "connector_graph_request_seconds",
    "Time from sending a Conversions API request to Meta's answer, in seconds.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
EVENTS_PER_REQUEST = Histogram(
    "connector_graph_request_events",
    "Events per Conversions API request (Meta takes at most 1000).",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)

#: what a label may hold: short tokens, no free text
_LABEL = re.compile(r"[^a-z0-9_./-]+")


def label(value: object, *, limit: int = 48) -> str:
    """A bounded, tidy label value: lower-case, ``[a-z0-9_./-]``, at most ``limit`` characters."""
    text = _LABEL.sub("_", str(value).strip().lower())[:limit]
    return text or "none"


def meta_code(code: int | None) -> str:
    """Meta's error code as a label: digits, or ``none``."""
    return str(code) if code is not None else "none"


_warned: set[str] = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(
            "metrics: %s (%s); the folder %s=%s was made again",
            what,
            type(exc).__name__,
            MULTIPROC_ENV,
            MULTIPROC_DIR,
        )


def _folder_replaced() -> bool:
    """True (once, then the process writes afresh) when the folder is gone or was made anew
    since this process last wrote there: its open files then count into the void."""
    global _generation, _folder_seen
    if not MULTIPROC_DIR:
        return False
    now = _folder_id()
    if now is not None and now == _folder_seen:
        return False
    ensure_dir(MULTIPROC_DIR)
    _generation += 1  # the library reopens its files on the next value it touches
    _folder_seen = _folder_id()
    return True


def _count(action: Callable[[], None]) -> None:
    """Run ``action`` (an increment) into the folder as it is now (made again should it have
    gone); a count is never worth failing the request that makes it."""
    if _folder_replaced():
        _warn_once("the metrics folder had gone", FileNotFoundError(MULTIPROC_DIR))
    try:
        action()
    except OSError as exc:
        if not MULTIPROC_DIR:
            raise
        _warn_once("a count could not be written", exc)


def count_webhook(platform: str, topic: str, outcome: str) -> None:
    """One answered delivery."""
    _count(
        lambda: WEBHOOKS.labels(
            label(platform, limit=32), label(topic), label(outcome)
        ).inc()
    )


def count_events(outcome: str, n: int, *, reason: str, code: int | None = None) -> None:
    """``n`` events reached ``outcome`` (sent, retried, held, dead) for ``reason``."""
    if n > 0:
        _count(lambda: EVENTS.labels(outcome, label(reason), meta_code(code)).inc(n))


def observe_graph_request(
    seconds: float, events: int, outcome: str, code: int | None = None
) -> None:
    """One Conversions API request: its latency, its size and how it ended."""
    _count(lambda: GRAPH_LATENCY.observe(seconds))
    _count(lambda: EVENTS_PER_REQUEST.observe(events))
    _count(lambda: GRAPH_REQUESTS.labels(outcome, meta_code(code)).inc())


def render(extra: Iterable[object] = ()) -> bytes:
    """The exposition text: this process's metrics (or every process's, in multiprocess
    mode), then the collectors in ``extra`` (e.g. gauges read from the database).

    Should the multiprocess folder have disappeared, it is made again (empty: the counts
    written before are lost) and the text holds what can still be read; a warning is logged
    once per process.
    """
    if MULTIPROC_DIR:
        if _folder_replaced():
            _warn_once("the metrics folder had gone", FileNotFoundError(MULTIPROC_DIR))
        try:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
            text = generate_latest(registry)
        except (OSError, ValueError) as exc:
            _warn_once("the metrics folder could not be read", exc)
            text = b""
    else:
        from prometheus_client import REGISTRY

        text = generate_latest(REGISTRY)
    if extra:
        own = CollectorRegistry()
        for collector in extra:
            own.register(collector)  # type: ignore[arg-type]
        text += generate_latest(own)
    return text


def mark_process_dead(pid: int) -> None:
    """For a web server's ``child_exit`` hook: drop a dead worker's live-gauge files."""
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(pid, MULTIPROC_DIR)  # type: ignore[no-untyped-call]


def count_decision(decision: object, n: int, code: int | None = None) -> None:
    """Count the events of one request by what Meta's answer decided for them
    (``connector.retry.classify``): sent, retried (transient or rate_limited), held, dead."""
    from connector.retry import Dead, Hold, RateLimited, RetryAt, Sent

    if isinstance(decision, Sent):
        count_events("sent", n, reason="accepted", code=code)
    elif isinstance(decision, RetryAt):
        count_events("retried", n, reason="transient", code=code)
    elif isinstance(decision, RateLimited):
        count_events("retried", n, reason="rate_limited", code=code)
    elif isinstance(decision, Hold):
        count_events("held", n, reason="meta_refused", code=code)
    elif isinstance(decision, Dead):
        count_events("dead", n, reason=decision.kind, code=code)
