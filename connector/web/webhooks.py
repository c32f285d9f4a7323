"""The webhook blueprint: verify -> translate -> record, one transaction, no network I/O."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import Connection as DBConnection
from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.orm import Session

from connector.errors import PayloadError, SignatureError, UnknownConnectionError
from connector.platform import (
    Action,
    ConnectionInfo,
    DataRequest,
    Outcome,
    RedactCustomer,
    RedactStore,
    ScopesUpdated,
    Uninstalled,
    WebhookRequest,
)
from connector.registry import get_adapter
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, WebhookReceipt, utcnow
from connector.web import get_runtime, storable

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

_UNSTORABLE = "the store sent a body the database cannot keep"


def parse_json(body: bytes) -> Any:
    """The body as JSON, or PayloadError (400).

    Text the database cannot keep (raw or escaped surrogates, NUL) parses here; the delivery
    is then recorded as unusable (see :mod:`connector.web.storable`), not refused.
    """
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("the body is not valid JSON") from exc
    except (
        RecursionError
    ) as exc:  # thousands of nested brackets: no platform sends that
        raise PayloadError("the body is nested too deeply") from exc


@bp.post("/webhooks/<platform>")
@bp.post("/webhooks/<platform>/<connection_id>")
def receive(platform: str, connection_id: str | None = None) -> tuple[Response, int]:
    adapter = get_adapter(platform)
    runtime = get_runtime()
    req = WebhookRequest(
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.get_data(cache=False),
        path={"connection": connection_id} if connection_id else {},
        content_type=request.mimetype or "",
    )
    if adapter.is_ping(req):
        return jsonify(status="pong"), 200
    envelope = adapter.envelope(req)
    now = utcnow()
    with _connect(runtime.engine) as db:
        target = _find_connection(db, platform, connection_id, envelope.store)
        if target is None or (
            target.status == ConnectionStatus.UNINSTALLED
            and not adapter.accepts_unknown_store(envelope.topic)
        ):
            if adapter.accepts_unknown_store(envelope.topic):
                # Still only for a genuine delivery: Shopify's review sends forged compliance
                # webhooks and expects 401 for them.
                try:
                    adapter.verify(req, list(adapter.webhook_secrets(runtime.settings)))
                except SignatureError:
                    log.info(
                        "webhook %s rejected for unknown store: bad signature", platform
                    )
                    raise
                log.info(
                    "webhook %s %s for unknown store acknowledged",
                    platform,
                    envelope.topic,
                )
                return jsonify(status="ignored"), 200
            log.info(
                "webhook %s rejected: unknown store %s",
                platform,
                envelope.store or connection_id,
            )
            raise UnknownConnectionError("no connection for this store")
        secrets = (
            [target.webhook_secret.encode()]
            if target.webhook_secret
            else list(adapter.webhook_secrets(runtime.settings))
        )
        try:
            adapter.verify(req, secrets)
        except SignatureError:
            log.info(
                "webhook %s rejected for %s: bad signature", platform, target.store
            )
            raise
        payload = parse_json(req.body)
        settings = dict(target.settings or {})
        info = ConnectionInfo(
            id=target.id,
            platform=target.platform,
            store=target.store,
            settings=settings,
            # Test mode is having a test_event_code: a test order must never reach Meta as real.
            test_mode=bool(target.test_event_code),
        )
        unusable = storable.text_problem(req.body, payload)
        if unusable is None:
            outcome = adapter.handle(envelope.topic, payload, info, now)
        else:
            outcome = Outcome(skipped=f"{_UNSTORABLE}: {unusable}")
        outcome_name = (
            "accepted"
            if outcome.events
            else ("action" if outcome.action else "skipped")
        )
        receipt = queries.ReceiptIn(
            platform=platform,
            connection_id=target.id,
            delivery_id=adapter.delivery_id(envelope, payload),
            topic=envelope.topic,
            event_ref=envelope.event_ref,
            api_version=envelope.api_version,
            triggered_at=envelope.triggered_at,
            outcome=outcome_name,
            detail=outcome.skipped,
            order_ref=outcome.order_ref,
            customer_ref=outcome.customer_ref,
        )
        unusable = storable.unfit(receipt, outcome.events)
        if unusable is not None:
            # Recorded, answered 200: a platform would only retry (Shopify) or count the
            # failure towards disabling the webhook (WooCommerce) over a body it cannot fix.
            outcome = Outcome(skipped=f"{_UNSTORABLE}: {unusable}")
            outcome_name = "skipped"
            receipt = storable.fitted(receipt, outcome.skipped or "")
        if outcome.action is None:
            accepted = queries.record_delivery(db, receipt, outcome.events, now=now)
    if outcome.action is not None:
        # Lifecycle topics are rare and touch several tables: a transaction of their own.
        with runtime.sessions.begin() as session:
            accepted = queries.record_delivery(
                session, receipt, outcome.events, now=now
            )
            if not accepted.duplicate_delivery:
                _apply_action(
                    session,
                    target,
                    outcome.action,
                    accepted.receipt_id,
                    now,
                    triggered_at=envelope.triggered_at,
                )
    log.info(
        "webhook %s %s for %s: %s, %d new event(s)%s",
        platform,
        envelope.topic,
        info.id,
        "duplicate" if accepted.duplicate_delivery else outcome_name,
        len(accepted.new_events),
        f" (skipped: {outcome.skipped})" if outcome.skipped else "",
    )
    return (
        jsonify(
            status="duplicate" if accepted.duplicate_delivery else outcome_name,
            new_events=len(accepted.new_events),
        ),
        200,
    )


@contextmanager
def _connect(engine: Engine) -> Iterator[DBConnection]:
    """The webhook path's connection.

    PostgreSQL: autocommit, because the path is one read and one atomic write statement, so
    BEGIN and COMMIT would only add round trips. SQLite: one transaction, which serializes
    writers there anyway.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
    else:
        with engine.begin() as conn:
            yield conn


@dataclass(frozen=True, slots=True)
class _Target:
    """The few columns of a connection the webhook path reads."""

    id: str
    platform: str
    store: str
    status: str
    settings: dict[str, Any] | None
    test_event_code: str | None
    webhook_secret: str | None


_c = Connection.__table__.c
# Plain column selects, built once: the other secrets are not decrypted on every request.
_TARGET = select(
    _c.id,
    _c.platform,
    _c.store,
    _c.status,
    _c.settings,
    _c.test_event_code,
    _c.webhook_secret,
)
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BY_ID = _TARGET.where(_c.id == bindparam("key"), _c.platform == bindparam("platform"))
_BY_STORE = _TARGET.where(
    _c.store == bindparam("key"), _c.platform == bindparam("platform")
)


def _find_connection(
    db: DBConnection, platform: str, connection_id: str | None, store: str | None
) -> _Target | None:
    if connection_id is not None:
        if not _CONNECTION_ID.fullmatch(connection_id):
            return None  # not an id this connector makes (a NUL would upset PostgreSQL)
        row = db.execute(_BY_ID, {"key": connection_id, "platform": platform}).first()
    elif store:
        row = db.execute(_BY_STORE, {"key": store, "platform": platform}).first()
    else:
        return None
    return None if row is None else _Target(*row)


def _predates_install(
    session: Session, connection_id: str, triggered_at: datetime | None
) -> bool:
    """True when a delivery was triggered before the connection's current install."""
    if triggered_at is None:
        return False
    installed_at = session.scalar(
        select(Connection.installed_at)
        .where(Connection.id == connection_id)
        .with_for_update()
    )
    return installed_at is not None and triggered_at < installed_at


def _apply_action(
    session: Session,
    target: _Target,
    action: Action,
    receipt_id: int | None,
    now: datetime,
    *,
    triggered_at: datetime | None = None,
) -> None:
    if isinstance(action, Uninstalled | RedactStore) and _predates_install(
        session, target.id, triggered_at
    ):
        # Shopify may deliver an uninstall late, after the shop installed the app again:
        # applied, it would wipe the new install's tokens. X-Shopify-Triggered-At says when
        # it happened (https://shopify.dev/docs/apps/build/webhooks/ignore-duplicates).
        log.warning(
            "connection %s: a lifecycle webhook triggered before the current install "
            "is ignored",
            target.id,
        )
        session.execute(
            update(WebhookReceipt)
            .where(WebhookReceipt.id == receipt_id)
            .values(
                outcome="skipped",
                detail="ignored: triggered before the app was installed again",
            )
        )
        return
    if isinstance(action, Uninstalled):
        conn = session.get(Connection, target.id)
        if conn is not None:
            queries.mark_uninstalled(session, conn, now=now)
    elif isinstance(action, RedactCustomer):
        queries.redact_customer(
            session, target.id, action.customer_ref, action.order_refs
        )
    elif isinstance(action, RedactStore):
        queries.redact_store(session, target.id)
    elif isinstance(action, ScopesUpdated):
        session.execute(
            update(Connection)
            .where(Connection.id == target.id)
            .values(scopes=",".join(action.scopes), updated_at=now)
        )
    elif isinstance(action, DataRequest):
        report = queries.customer_report(
            session, target.id, action.customer_ref, action.order_refs
        )
        session.execute(
            update(WebhookReceipt)
            .where(WebhookReceipt.id == receipt_id)
            .values(detail=json.dumps(report, sort_keys=True))
        )
    else:  # pragma: no cover - the Action union is closed
        raise TypeError(f"unknown action {action!r}")
