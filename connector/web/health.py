"""The front page, liveness and metrics."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.exceptions import TooManyRequests

from connector import metrics as connector_metrics
from connector.config import Settings
from connector.errors import NotFoundError
from connector.metrics import CONTENT_TYPE_LATEST, GaugeMetricFamily, Metric
from connector.store.models import (
    Connection,
    Event,
    EventStatus,
    WebhookBody,
    WebhookReceipt,
)
from connector.store.queries import worker_liveness
from connector.web import get_runtime
from connector.web.login_throttle import LoginThrottle

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

#: outbox rows counted per status on a scrape, at most: a bounded index range, never the table
COUNT_CAP = 10_000
#: the statuses worth a gauge; ``sent`` grows without bound and is counted by the worker instead
GAUGED_STATUSES = (
    EventStatus.PENDING,
    EventStatus.SENDING,
    EventStatus.HELD,
    EventStatus.DEAD,
)


#: what ``/`` answers: where to go, nothing about this deployment
HOME_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CAPI connector</title></head>
<body>
<h1>CAPI connector</h1>
<p>This server sends Shopify and WooCommerce orders to Meta's Conversions API.</p>
<ul>
<li><a href="/admin">Stores</a> (the operator's page)</li>
<li><a href="/healthz">Health</a></li>
</ul>
</body></html>
"""


@bp.get("/")
def home() -> Response:
    """A short page linking to ``/admin`` and ``/healthz``; it reveals no setting or store."""
    return Response(HOME_PAGE, mimetype="text/html")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        with get_runtime().sessions() as session:
            session.execute(text("SELECT 1"))
            # Workers alive by their heartbeats: shown, not judged, since a web process
            # is healthy whether or not a worker runs beside it.
            workers = worker_liveness(session)
    except SQLAlchemyError as exc:
        log.error("health check: database unreachable: %s", type(exc).__name__)
        return jsonify(status="unavailable", reason="database unreachable"), 503
    return jsonify(status="ok", workers=workers), 200


def _same(given: str, expected: str) -> bool:
    # surrogatepass: a header decoded to a lone surrogate compares (unequal) instead of raising
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"),
        expected.encode("utf-8", "surrogatepass"),
    )


def _bearer_given() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _basic_given() -> str | None:
    auth = request.authorization
    return (auth.password or "") if auth is not None and auth.type == "basic" else None


def metrics_access(settings: Settings) -> int | None:
    """None when the request may read /metrics, else the status to answer (401 or 404).

    Outside production /metrics is open. In production it needs ``Authorization: Bearer
    METRICS_TOKEN`` or HTTP Basic with ``ADMIN_PASSWORD`` (any user name); with neither set,
    the route does not exist (404). A wrong Bearer token or Basic password counts as a failed
    login in the same throttle as ``/admin`` (per client address and overall), and while the
    address is throttled every credentialed request is refused.

    Raises:
        TooManyRequests: too many recent failed logins (429 with ``Retry-After``).
    """
    if not settings.is_production:
        return None
    if settings.metrics_token is None and settings.admin_password is None:
        return 404
    bearer, basic = _bearer_given(), _basic_given()
    if bearer is None and basic is None:
        return 401  # a first request before credentials: not a guess
    throttle: LoginThrottle = current_app.extensions["login_throttle"]
    client = request.remote_addr or "-"
    wait = throttle.retry_after(client)
    if wait is not None:
        raise TooManyRequests(
            "too many failed logins; try again later", retry_after=wait
        )
    accepted = (
        bearer is not None
        and settings.metrics_token is not None
        and _same(bearer, settings.metrics_token)
    ) or (
        basic is not None
        and settings.admin_password is not None
        and _same(basic, settings.admin_password)
    )
    if accepted:
        throttle.succeeded(client)
        return None
    throttle.failed(client)
    return 401


class OutboxCollector:
    """Gauges read from the database on a scrape, each a bounded, indexed query."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now

    def collect(self) -> Iterator[Metric]:
        outbox = GaugeMetricFamily(
            "connector_outbox_events",
            f"Outbox rows by status, counted up to {COUNT_CAP} (that value means at least).",
            labels=["status"],
        )
        for status in GAUGED_STATUSES:
            # LIMIT inside: PostgreSQL and SQLite stop after COUNT_CAP entries of the
            # (status, next_attempt_at) index, however large the table.
            capped = (
                select(Event.id)
                .where(Event.status == status)
                .limit(COUNT_CAP)
                .subquery()
            )
            n = self.session.scalar(select(func.count()).select_from(capped)) or 0
            outbox.add_metric([status.value], n)
        yield outbox
        oldest = self.session.scalar(
            select(func.min(Event.next_attempt_at)).where(
                Event.status == EventStatus.PENDING
            )
        )
        age = GaugeMetricFamily(
            "connector_outbox_oldest_pending_seconds",
            "How long the longest-waiting pending event has been due (0 when none is due).",
        )
        age.add_metric(
            [], max(0.0, (self.now - oldest).total_seconds()) if oldest else 0.0
        )
        yield age
        # Deliveries left for the worker to translate (CONNECTOR_WEBHOOK_TRANSLATION=worker).
        capped_bodies = select(WebhookBody.receipt_id).limit(COUNT_CAP).subquery()
        waiting = GaugeMetricFamily(
            "connector_webhook_bodies_waiting",
            "Webhook deliveries recorded and waiting for a worker to translate them, "
            f"counted up to {COUNT_CAP}.",
        )
        waiting.add_metric(
            [],
            self.session.scalar(select(func.count()).select_from(capped_bodies)) or 0,
        )
        yield waiting
        first = self.session.scalar(
            select(func.min(WebhookReceipt.received_at)).join(
                WebhookBody, WebhookBody.receipt_id == WebhookReceipt.id
            )
        )
        waited = GaugeMetricFamily(
            "connector_webhook_bodies_oldest_seconds",
            "How long the oldest delivery waiting for translation has waited (0: none).",
        )
        waited.add_metric(
            [], max(0.0, (self.now - first).total_seconds()) if first else 0.0
        )
        yield waited
        conns = GaugeMetricFamily(
            "connector_connections", "Connections by status.", labels=["status"]
        )
        for conn_status, n in self.session.execute(
            select(Connection.status, func.count()).group_by(Connection.status)
        ):
            conns.add_metric([conn_status], n)
        yield conns
        # Worker liveness from the heartbeats: what /healthz shows, for alerting.
        liveness = worker_liveness(self.session, now=self.now)
        workers = GaugeMetricFamily(
            "connector_workers",
            "Workers by their heartbeat: alive (a beat within the stale limit) or stale.",
            labels=["state"],
        )
        workers.add_metric(["alive"], liveness["alive"])
        workers.add_metric(["stale"], liveness["stale"])
        yield workers
        if liveness["last_beat_seconds"] is not None:
            beat = GaugeMetricFamily(
                "connector_worker_last_beat_seconds",
                "Seconds since the newest worker heartbeat (absent when no worker ever beat).",
            )
            beat.add_metric([], liveness["last_beat_seconds"])
            yield beat


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text: the connector's counters and histograms, and the outbox gauges."""
    runtime = get_runtime()
    refused = metrics_access(runtime.settings)
    if refused == 404:
        raise NotFoundError(
            "/metrics needs METRICS_TOKEN or ADMIN_PASSWORD in production"
        )
    if refused == 401:
        return Response(
            "authentication required",
            401,
            {"WWW-Authenticate": 'Bearer realm="metrics", Basic realm="metrics"'},
        )
    with runtime.sessions() as session:
        body = connector_metrics.render([OutboxCollector(session, datetime.now(UTC))])
    return Response(body, content_type=CONTENT_TYPE_LATEST)
