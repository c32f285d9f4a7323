"""Deliveries waiting for the worker: their sealed bodies translated into outbox events.

With ``CONNECTOR_WEBHOOK_TRANSLATION=worker`` (PostgreSQL), the web process verifies an order
or checkout delivery, records its receipt as ``waiting`` with the body compressed and
encrypted (``webhook_bodies``), answers 200, and leaves the translation to the worker:
:func:`translate_waiting` runs in every worker loop. Each body is translated with the
connection as it is then, its events recorded and the body deleted in one transaction, so
the store's raw personal data is kept only until its events exist, and a worker that dies
midway leaves the body to the next one.

A body whose translation fails (a bug, a key removed from ``CONNECTOR_ENCRYPTION_KEYS``) is
tried again later, up to :data:`MAX_ATTEMPTS` times; then its receipt says ``failed`` and
why, and the body is deleted: the order sweep (:mod:`connector.sweep`) still finds the order
at the store. Failures are logged by the exception's class, never with the body's content.

Lifecycle deliveries (uninstall, redaction, data requests) are always handled in their
request; before their action applies, :func:`translate_connection` translates what is still
waiting for that connection, so an uninstall holds those events too and a redaction or data
request sees them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.orm import Session

from connector import delivery
from connector.crypto import keyring
from connector.errors import PayloadError
from connector.platform import Envelope
from connector.registry import get_adapter
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, WebhookBody, WebhookReceipt, utcnow

log = logging.getLogger(__name__)

#: bodies one worker loop translates in one transaction
BATCH = 200
#: translations tried before a body is given up (its receipt then says ``failed``)
MAX_ATTEMPTS = 5
#: the wait after the first failure; it doubles after each one, up to RETRY_MAX
RETRY_FIRST = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)

# Core tables, not ORM entities: the worker's statements skip the ORM's bookkeeping.
_B = cast(Table, WebhookBody.__table__)
_R = cast(Table, WebhookReceipt.__table__)
_C = cast(Table, Connection.__table__)
_WAITING = (
    select(
        _B.c.receipt_id,
        _B.c.sealed,
        _B.c.attempts,
        _R.c.platform,
        _R.c.connection_id,
        _R.c.delivery_id,
        _R.c.topic,
        _R.c.event_ref,
        _R.c.api_version,
        _R.c.triggered_at,
        _R.c.received_at,
        _C.c.store,
        _C.c.settings,
        _C.c.test_event_code,
    )
    .join(_R, _R.c.id == _B.c.receipt_id)
    .join(_C, _C.c.id == _R.c.connection_id)
    .order_by(_B.c.receipt_id)
)


def body_context(connection_id: str, delivery_id: str) -> bytes:
    """What a body is sealed to (:meth:`connector.crypto.KeyRing.seal`): its delivery."""
    return f"{connection_id}\n{delivery_id}".encode("utf-8", "surrogatepass")


def translate_waiting(
    runtime: Runtime, *, limit: int = BATCH, now: datetime | None = None
) -> int:
    """Translate up to ``limit`` waiting bodies that are due, oldest first; how many were.

    One transaction; ``SKIP LOCKED`` on PostgreSQL, so workers running side by side take
    different bodies. A body that fails counts as handled (it waits for a later try). The
    batch is written without a savepoint per body; should one body's writes fail (refused
    by the database, or a bug), the batch is rolled back and taken again body by body, each
    in its own savepoint, so that one body cannot hold back the others.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; nothing of this batch is kept.
    """
    now = now or utcnow()
    try:
        return _translate_batch(runtime, limit, now, isolated=False)
    except Exception as exc:  # a refused write, or a bug: each body on its own
        log.warning(
            "a batch of webhook bodies failed (%s); translating them one by one",
            type(exc).__name__,
        )
        return _translate_batch(runtime, limit, now, isolated=True)


def _translate_batch(
    runtime: Runtime, limit: int, now: datetime, *, isolated: bool
) -> int:
    with runtime.sessions.begin() as session:
        rows = session.execute(
            _WAITING.where(_B.c.available_at <= now)
            .limit(limit)
            .with_for_update(of=_B, skip_locked=True)
        ).all()
        for row in rows:
            _translate(session, row, now, isolated=isolated)
    return len(rows)


def translate_connection(
    session: Session, connection_id: str, *, nowait: bool = False
) -> int:
    """Translate every body still waiting for one connection, in the caller's transaction.

    Waits for a worker translating one of them meanwhile (no ``SKIP LOCKED``), so that what
    the caller does next (an uninstall, a redaction) sees every event those bodies make;
    with ``nowait``, a body another transaction holds raises at once instead
    (PostgreSQL's ``lock_not_available``, SQLSTATE 55P03). A body that fails to translate
    here stays as it was, its tries unspent: the worker tries it on its own schedule.
    Returns how many bodies were translated.

    Raises:
        sqlalchemy.exc.OperationalError: with ``nowait``, a body is locked elsewhere.
    """
    rows = session.execute(
        _WAITING.where(_R.c.connection_id == connection_id).with_for_update(
            of=_B, nowait=nowait
        )
    ).all()
    now = utcnow()
    return sum(_translate(session, row, now, count_failure=False) for row in rows)


def drop_waiting(session: Session, connection_id: str, reason: str) -> int:
    """Delete the bodies still waiting for one connection; their receipts say ``failed``.

    For a customer redaction, after :func:`translate_connection`: a body that could not be
    translated cannot be told apart by customer, so none may outlive the redaction. Returns
    how many were deleted.
    """
    ids = list(
        session.scalars(
            select(_B.c.receipt_id)
            .join(_R, _R.c.id == _B.c.receipt_id)
            .where(_R.c.connection_id == connection_id)
        )
    )
    if ids:
        session.execute(delete(_B).where(_B.c.receipt_id.in_(ids)))
        session.execute(
            update(_R).where(_R.c.id.in_(ids)).values(outcome="failed", detail=reason)
        )
    return len(ids)


def _translate(
    session: Session,
    row: Any,
    now: datetime,
    *,
    isolated: bool = True,
    count_failure: bool = True,
) -> bool:
    """One body: its events recorded and the body deleted, or the failure recorded.

    True when translated. A failure of the translation itself (before anything is written)
    is recorded either way, unless ``count_failure`` is off (the body then stays as it was).
    ``isolated`` puts the writes in a savepoint, so that a write the database refuses is
    recorded as this body's failure; without it, that error ends the caller's transaction
    (see :func:`translate_waiting`).
    """
    try:
        if isolated:
            with session.begin_nested():
                receipt, events = _translation(row)
                queries.record_translation(
                    session,
                    row.receipt_id,
                    receipt,
                    events,
                    received_at=row.received_at,
                )
            return True
        receipt, events = _translation(row)
    except Exception as exc:  # any failure: try again later, never lose the delivery
        if count_failure:
            _failed(session, row, exc, now)
        else:
            log.warning(
                "webhook receipt %s: translation failed (%s); the worker tries again",
                row.receipt_id,
                type(exc).__name__,
            )
        return False
    # Not isolated: a refused write ends the caller's transaction.
    queries.record_translation(
        session, row.receipt_id, receipt, events, received_at=row.received_at
    )
    return True


def _translation(row: Any) -> tuple[queries.ReceiptIn, tuple[Any, ...]]:
    adapter = get_adapter(row.platform)
    info = delivery.connection_info(
        id=row.connection_id,
        platform=row.platform,
        store=row.store,
        settings=row.settings,
        test_event_code=row.test_event_code,
    )
    envelope = Envelope(
        topic=row.topic,
        delivery_id=row.delivery_id,
        store=row.store,
        event_ref=row.event_ref,
        api_version=row.api_version,
        triggered_at=row.triggered_at,
    )
    body = keyring.unseal(row.sealed, body_context(row.connection_id, row.delivery_id))
    base = delivery.envelope_receipt(
        row.platform, row.connection_id, row.delivery_id, envelope
    )
    try:
        payload = delivery.parse_json(body)
        done = delivery.translate(
            adapter,
            platform=row.platform,
            info=info,
            envelope=envelope,
            body=body,
            payload=payload,
            now=row.received_at,
        )
    except PayloadError as exc:
        # Answered 200 already: recorded with the reason, as WooCommerce's are in a request.
        return replace(
            base,
            outcome="skipped",
            detail=f"the store sent a body no event can be made from: {exc.detail}"[
                :500
            ],
        ), ()
    if done.outcome.action is not None:
        # The adapter said this topic never makes one (translation_can_wait).
        return replace(
            base,
            outcome="skipped",
            detail="a lifecycle action cannot wait for the worker; it was not applied",
        ), ()
    # The delivery id stays the one the receipt was recorded under.
    return replace(done.receipt, delivery_id=row.delivery_id), tuple(
        done.outcome.events
    )


def _failed(session: Session, row: Any, exc: Exception, now: datetime) -> None:
    attempts = row.attempts + 1
    kind = type(exc).__name__
    if attempts >= MAX_ATTEMPTS:
        log.error(
            "webhook receipt %s: translation failed %d times (%s); its body is deleted",
            row.receipt_id,
            attempts,
            kind,
        )
        session.execute(
            update(_R)
            .where(_R.c.id == row.receipt_id)
            .values(
                outcome="failed",
                detail=(
                    f"translation failed {attempts} times ({kind}); the body was deleted"
                    " and the order sweep finds the order at the store"
                ),
            )
        )
        session.execute(delete(_B).where(_B.c.receipt_id == row.receipt_id))
        return
    wait = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
    log.warning(
        "webhook receipt %s: translation failed (%s), try %d of %d again in %d s",
        row.receipt_id,
        kind,
        attempts,
        MAX_ATTEMPTS,
        wait.total_seconds(),
    )
    session.execute(
        update(_B)
        .where(_B.c.receipt_id == row.receipt_id)
        .values(attempts=attempts, last_error=kind, available_at=now + wait)
    )
