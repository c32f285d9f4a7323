"""Prometheus metrics: every counter and histogram of the connector, as module-level objects.

Labels are few and bounded (platform, topic, outcome, reason, Meta's error code); never a
shop, an order or a connection id.

Several processes (gunicorn's workers) each count in their own memory, so a scrape would
see one of them at random. prometheus-client's multiprocess mode fixes that: every process
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. The
variable must be set before the first metric is created, in every process, and point to the
same, initially empty folder (https://prometheus.github.io/client_python/multiprocess/).
When it is not set and this module is imported inside a gunicorn worker, it is set here to a
folder named after the gunicorn master's process id: all workers of one master share it, and
a new master starts with a new, empty one. A web server configuration may set it itself (and
empty it at start); :func:`mark_process_dead` is the ``child_exit`` hook's part.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _multiprocess_dir() -> str | None:
    """The shared folder for this process's metrics, or None for single-process mode."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        return configured
    if "gunicorn.arbiter" in sys.modules:
        # A gunicorn worker (the app is loaded after the fork): its parent is the master.
        path = Path(tempfile.gettempdir()) / f"capi-connector-metrics-{os.getppid()}"
        os.environ[MULTIPROC_ENV] = str(path)
        return str(path)
    return None


MULTIPROC_DIR = _multiprocess_dir()
if MULTIPROC_DIR:
    Path(MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

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

values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

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


def count_webhook(platform: str, topic: str, outcome: str) -> None:
    """One answered delivery."""
    WEBHOOKS.labels(label(platform, limit=32), label(topic), label(outcome)).inc()


def count_events(outcome: str, n: int, *, reason: str, code: int | None = None) -> None:
    """``n`` events reached ``outcome`` (sent, retried, held, dead) for ``reason``."""
    if n > 0:
        EVENTS.labels(outcome, label(reason), meta_code(code)).inc(n)


def observe_graph_request(
    seconds: float, events: int, outcome: str, code: int | None = None
) -> None:
    """One Conversions API request: its latency, its size and how it ended."""
    GRAPH_LATENCY.observe(seconds)
    EVENTS_PER_REQUEST.observe(events)
    GRAPH_REQUESTS.labels(outcome, meta_code(code)).inc()


def render(extra: Iterable[object] = ()) -> bytes:
    """The exposition text: this process's metrics (or every process's, in multiprocess
    mode), then the collectors in ``extra`` (e.g. gauges read from the database)."""
    registry = CollectorRegistry()
    if MULTIPROC_DIR:
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    text = generate_latest(registry)
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
