"""Liveness and metrics."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from connector.store.models import Connection, Event, WebhookReceipt
from connector.store.queries import event_counts, worker_liveness
from connector.web import get_runtime

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


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


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: outbox by status, receipts, re-sends, connections by status."""
    with get_runtime().sessions() as session:
        counts = event_counts(session)
        receipts = session.scalar(select(func.count()).select_from(WebhookReceipt)) or 0
        resends = session.scalar(
            select(func.coalesce(func.sum(Event.send_count - 1), 0)).where(
                Event.send_count > 1
            )
        )
        conns = session.execute(
            select(Connection.status, func.count()).group_by(Connection.status)
        ).all()
    lines = [
        "# HELP connector_events Outbox rows by status.",
        "# TYPE connector_events gauge",
    ]
    for status in ("pending", "sending", "sent", "held", "dead"):
        lines.append(f'connector_events{{status="{status}"}} {counts.get(status, 0)}')
    lines += [
        "# HELP connector_webhook_receipts Webhook deliveries recorded.",
        "# TYPE connector_webhook_receipts gauge",
        f"connector_webhook_receipts {receipts}",
        "# HELP connector_event_resends Sends of an event beyond its first.",
        "# TYPE connector_event_resends gauge",
        f"connector_event_resends {int(resends or 0)}",
        "# HELP connector_connections Connections by status.",
        "# TYPE connector_connections gauge",
    ]
    for status, n in conns:
        lines.append(f'connector_connections{{status="{status}"}} {n}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
