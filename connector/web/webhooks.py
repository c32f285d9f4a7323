"""The webhook blueprint: verify -> translate -> record, one transaction, no network I/O."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import Connection as DBConnection
from sqlalchemy import Engine, Text, bindparam, cast, select, type_coerce, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from connector import delivery, inbox
from connector.crypto import keyring
from connector.errors import SignatureError, UnknownConnectionError
from connector.platform import (
    Action,
    Adapter,
    ConnectionInfo,
    DataRequest,
    Envelope,
    Outcome,
    RedactCustomer,
    RedactStore,
    ScopesUpdated,
    Uninstalled,
    WebhookRequest,
)
from connector.registry import get_adapter
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, WebhookReceipt, utcnow
from connector.web import get_runtime, storable

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


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
    g.webhook_topic = envelope.topic  # for the metrics (connector.web.observe)
    now = utcnow()
    call = _Call(adapter, runtime, req, envelope, platform, connection_id, now)
    done = None
    if runtime.engine.dialect.name == "postgresql":
        done = _receive_fast(call)
    if done is None:
        done = _receive_locked(call)
    if not isinstance(done, _Recorded):
        return done
    accepted, recorded = done.accepted, done.delivery
    status = "duplicate" if accepted.duplicate_delivery else recorded.outcome_name
    log.info(
        "webhook %s %s for %s: %s, %d new event(s)%s",
        platform,
        envelope.topic,
        recorded.info.id,
        status,
        len(accepted.new_events),
        f" (skipped: {recorded.outcome.skipped})" if recorded.outcome.skipped else "",
    )
    g.webhook_status = status
    return jsonify(status=status, new_events=len(accepted.new_events)), 200


@dataclass(frozen=True, slots=True)
class _Call:
    """One webhook request, as both paths below read it."""

    adapter: Adapter
    runtime: Runtime
    req: WebhookRequest
    envelope: Envelope
    platform: str
    connection_id: str | None
    now: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        """The cache key: the URL's connection id (WooCommerce) or the store (Shopify)."""
        if self.connection_id is not None:
            return (self.platform, "id", self.connection_id)
        return (self.platform, "store", self.envelope.store or "")


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A verified delivery, translated, ready to record."""

    info: ConnectionInfo
    outcome: Outcome
    outcome_name: str
    receipt: queries.ReceiptIn


@dataclass(frozen=True, slots=True)
class _Recorded:
    accepted: queries.Accepted
    delivery: _Delivery


#: an answer given early (a lifecycle delivery for an unknown store), or what was recorded
_Done = tuple[Response, int] | _Recorded


def _receive_fast(call: _Call) -> _Done | None:
    """PostgreSQL: a known connection's delivery in one round trip; None: take the locked path.

    The connection comes from the worker's cache when it can (see :class:`_TargetCache`),
    else from one autocommit read; the write is one atomic statement that records nothing
    unless the connection's row still holds what the delivery was verified and translated
    with. Lifecycle deliveries, unknown or uninstalled stores, a signature that fails against
    a cached secret, and a connection that changed since it was read all go to
    :func:`_receive_locked`, which reads the connection again.
    """
    cache = _target_cache()
    target = cache.get(call.key)
    cached = target is not None
    with _connect(call.runtime.engine) as db:
        if target is None:
            target = _find_connection(
                db, call.platform, call.connection_id, call.envelope.store
            )
            if target is None or target.status == ConnectionStatus.UNINSTALLED:
                return None
        if cached:
            try:
                call.adapter.verify(call.req, _secrets(call, target))
            except SignatureError:
                # The secret may have changed since it was cached: read it again.
                cache.drop(call.key)
                return None
        else:
            _verify(call, target)
        waiting = _waiting(call, target)
        if waiting is not None:
            translated, sealed = waiting
            accepted = queries.record_waiting_delivery(
                db, translated.receipt, sealed, now=call.now, guard=target.guard
            )
        else:
            translated = _translate(call, target)
            if translated.outcome.action is not None:
                return None
            accepted = queries.record_delivery(
                db,
                translated.receipt,
                translated.outcome.events,
                now=call.now,
                guard=target.guard,
            )
    if accepted.connection_changed:
        cache.drop(call.key)
        return None
    if not cached:
        cache.put(call.key, target)
    return _Recorded(accepted, translated)


#: tries of a lifecycle delivery whose store's waiting body a worker holds (see below)
_LOCKED_TRIES = 3


def _receive_locked(call: _Call) -> _Done:
    """Every delivery on SQLite, lifecycle ones and the fast path's leftovers on PostgreSQL.

    One transaction that reads the connection's row under FOR UPDATE, so nothing changes it
    until the delivery, and its action, are recorded. A lifecycle delivery first translates
    what waits for its store without that lock (:func:`_translate_waiting_first`); inside it,
    a body that arrived meanwhile is translated only if no worker holds it (NOWAIT): a worker
    holding it needs the store's key-share lock, so waiting for it there would deadlock. The
    whole transaction is then tried again, up to :data:`_LOCKED_TRIES` times.
    """
    _target_cache().drop(call.key)
    lifecycle = not call.adapter.translation_can_wait(call.envelope.topic)
    for attempt in range(1, _LOCKED_TRIES + 1):
        if lifecycle:
            _translate_waiting_first(call)
        try:
            return _receive_locked_once(call, nowait=attempt < _LOCKED_TRIES)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            log.info(
                "webhook %s %s: a worker holds a waiting body of the store; trying again",
                call.platform,
                call.envelope.topic,
            )
    raise AssertionError("unreachable: the last try waits for the lock")


#: PostgreSQL's SQLSTATE for a row lock NOWAIT could not take
_LOCK_NOT_AVAILABLE = "55P03"


def _receive_locked_once(call: _Call, *, nowait: bool) -> _Done:
    adapter, envelope = call.adapter, call.envelope
    with call.runtime.sessions.begin() as session:
        target = _find_connection(
            session.connection(),
            call.platform,
            call.connection_id,
            envelope.store,
            lock=True,
        )
        if target is None or (
            target.status == ConnectionStatus.UNINSTALLED
            and not adapter.accepts_unknown_store(envelope.topic)
        ):
            return _unknown(call)
        _verify(call, target)
        translated = _translate(call, target)
        accepted = queries.record_delivery(
            session, translated.receipt, translated.outcome.events, now=call.now
        )
        action = translated.outcome.action
        if action is not None and not accepted.duplicate_delivery:
            # Deliveries received before this one and still waiting for the worker are
            # translated first, so an uninstall holds their events and a redaction or a
            # data request sees them.
            inbox.translate_connection(session, target.id, nowait=nowait)
            _apply_action(
                session,
                target,
                action,
                accepted.receipt_id,
                call.now,
                triggered_at=envelope.triggered_at,
            )
    return _Recorded(accepted, translated)


def _translate_waiting_first(call: _Call) -> None:
    """Before a lifecycle delivery locks its connection: what waits for the worker, translated.

    Its own transaction, without the connection's row lock: a worker translating one of these
    bodies holds the body's lock and then takes the key-share lock on the connection that its
    events' foreign key needs, so waiting for the body while holding the connection's lock
    would deadlock with it. Only for a genuine delivery of a store we know; the locked
    transaction translates any body that arrived in between.
    """
    with call.runtime.sessions.begin() as session:
        target = _find_connection(
            session.connection(),
            call.platform,
            call.connection_id,
            call.envelope.store,
        )
        if target is None:
            return
        try:
            call.adapter.verify(call.req, _secrets(call, target))
        except SignatureError:
            return  # the locked path refuses it, as before
        inbox.translate_connection(session, target.id)


def _unknown(call: _Call) -> tuple[Response, int]:
    """No connection (or an uninstalled one) for this delivery: acknowledge or refuse."""
    adapter, envelope, platform = call.adapter, call.envelope, call.platform
    if adapter.accepts_unknown_store(envelope.topic):
        # Still only for a genuine delivery: Shopify's review sends forged compliance
        # webhooks and expects 401 for them.
        try:
            adapter.verify(
                call.req, list(adapter.webhook_secrets(call.runtime.settings))
            )
        except SignatureError:
            log.info("webhook %s rejected for unknown store: bad signature", platform)
            raise
        log.info(
            "webhook %s %s for unknown store acknowledged", platform, envelope.topic
        )
        return jsonify(status="ignored"), 200
    log.info(
        "webhook %s rejected: unknown store %s",
        platform,
        envelope.store or call.connection_id,
    )
    raise UnknownConnectionError("no connection for this store")


def _secrets(call: _Call, target: _Target) -> list[bytes]:
    if target.webhook_secret:
        return [target.webhook_secret.encode()]
    return list(call.adapter.webhook_secrets(call.runtime.settings))


def _verify(call: _Call, target: _Target) -> None:
    try:
        call.adapter.verify(call.req, _secrets(call, target))
    except SignatureError:
        log.info(
            "webhook %s rejected for %s: bad signature", call.platform, target.store
        )
        raise


def _info(target: _Target) -> ConnectionInfo:
    return delivery.connection_info(
        id=target.id,
        platform=target.platform,
        store=target.store,
        settings=target.settings,
        test_event_code=target.test_event_code,
    )


def _translate(call: _Call, target: _Target) -> _Delivery:
    """The verified body as an outcome and the receipt to record it with (pure)."""
    payload = delivery.parse_json(call.req.body)
    info = _info(target)
    done = delivery.translate(
        call.adapter,
        platform=call.platform,
        info=info,
        envelope=call.envelope,
        body=call.req.body,
        payload=payload,
        now=call.now,
    )
    return _Delivery(
        info=info,
        outcome=done.outcome,
        outcome_name=done.outcome_name,
        receipt=done.receipt,
    )


def _waiting(call: _Call, target: _Target) -> tuple[_Delivery, bytes] | None:
    """The delivery as a waiting receipt and its sealed body, when the worker may translate it.

    Only with ``CONNECTOR_WEBHOOK_TRANSLATION=worker``, and for topics whose outcome is never
    an action (the adapter says): anything else is translated here as always. The body is
    read here only when the delivery's key is in it (WooCommerce); otherwise the worker reads
    it, and records a body that is not JSON, or holds text no column keeps, as skipped with
    the reason, as the request records the latter.
    """
    if call.runtime.settings.webhook_translation != "worker":
        return None
    if not call.adapter.translation_can_wait(call.envelope.topic):
        return None
    body, envelope = call.req.body, call.envelope
    delivery_id = call.adapter.envelope_delivery_id(envelope)
    if delivery_id is None:
        # The key is in the body (WooCommerce): read it now.
        payload = delivery.parse_json(body)
        if storable.text_problem(body, payload) is not None:
            return None
        delivery_id = call.adapter.delivery_id(envelope, payload)
    receipt = replace(
        delivery.envelope_receipt(call.platform, target.id, delivery_id, envelope),
        outcome=queries.WAITING,
    )
    if storable.unfit(receipt, ()) is not None:
        return None
    waiting = _Delivery(
        info=_info(target),
        outcome=Outcome(),
        outcome_name=queries.WAITING,
        receipt=receipt,
    )
    return waiting, keyring.seal(
        body, inbox.body_context(target.id, receipt.delivery_id)
    )


@contextmanager
def _connect(engine: Engine) -> Iterator[DBConnection]:
    """The fast path's connection (PostgreSQL): autocommit, because the path is at most one
    read and one atomic write statement, so BEGIN and COMMIT would only add round trips."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


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
    #: the same columns as stored, for :func:`queries.record_delivery` to check
    guard: queries.ConnectionGuard


class _TargetCache:
    """Connections this worker looked up in the last few seconds, by platform and store or id.

    Why it is safe: a cached connection is only ever used by :func:`_receive_fast`, whose one
    write statement records nothing unless the connection's row still holds every column the
    delivery was verified and translated with (:class:`queries.ConnectionGuard`): status,
    store, settings, test event code and the sealed webhook secret. Another worker's uninstall,
    GDPR shop/redact (which deletes the row), disconnect, new secret or new settings therefore
    makes the write find nothing, and the delivery is taken again through the locked path,
    which reads the row afresh; it is never accepted into a connection that changed or is
    gone. Only connections found and not uninstalled are kept, so a new install is seen at
    once. The lifetime only bounds how long a decrypted secret stays in memory.
    """

    def __init__(self, lifetime: float = 30.0, size: int = 1024) -> None:
        self.lifetime = lifetime
        self.size = size
        self._entries: dict[tuple[str, str, str], tuple[float, _Target]] = {}
        # gthread workers: one thread's eviction must not iterate while another inserts
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> _Target | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                self._entries.pop(key, None)
                return None
            return entry[1]

    def put(self, key: tuple[str, str, str], target: _Target) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                # the oldest entry goes (dicts keep insertion order)
                self._entries.pop(next(iter(self._entries)), None)
            self._entries[key] = (time.monotonic() + self.lifetime, target)

    def drop(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)


def _target_cache() -> _TargetCache:
    cache: _TargetCache = current_app.extensions.setdefault(
        "connector.webhook_targets", _TargetCache()
    )
    return cache


_c = Connection.__table__.c
# Plain column selects, built once: the other secrets are not decrypted on every request.
# Settings and the webhook secret are read as stored (JSON text, sealed secret), so that the
# write can compare them (see queries.ConnectionGuard).
_TARGET = select(
    _c.id,
    _c.platform,
    _c.store,
    _c.status,
    cast(_c.settings, Text),
    _c.test_event_code,
    type_coerce(_c.webhook_secret, Text),
)
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BY_ID = _TARGET.where(_c.id == bindparam("key"), _c.platform == bindparam("platform"))
_BY_STORE = _TARGET.where(
    _c.store == bindparam("key"), _c.platform == bindparam("platform")
)
_BY_ID_LOCKED = _BY_ID.with_for_update()
_BY_STORE_LOCKED = _BY_STORE.with_for_update()


def _find_connection(
    db: DBConnection,
    platform: str,
    connection_id: str | None,
    store: str | None,
    *,
    lock: bool = False,
) -> _Target | None:
    if connection_id is not None:
        if not _CONNECTION_ID.fullmatch(connection_id):
            return None  # not an id this connector makes (a NUL would upset PostgreSQL)
        query = _BY_ID_LOCKED if lock else _BY_ID
        row = db.execute(query, {"key": connection_id, "platform": platform}).first()
    elif store:
        query = _BY_STORE_LOCKED if lock else _BY_STORE
        row = db.execute(query, {"key": store, "platform": platform}).first()
    else:
        return None
    if row is None:
        return None
    id_, platform_, store_, status, settings, test_event_code, sealed = row
    return _Target(
        id=id_,
        platform=platform_,
        store=store_,
        status=status,
        settings=json.loads(settings) if settings is not None else None,
        test_event_code=test_event_code,
        webhook_secret=keyring.decrypt(sealed) if sealed is not None else None,
        guard=queries.ConnectionGuard(
            status=status,
            store=store_,
            settings=settings,
            test_event_code=test_event_code,
            webhook_secret=sealed,
        ),
    )


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
        # A body that could not be translated just now cannot be told apart by customer:
        # none may outlive the redaction (the order sweep finds the other orders again).
        inbox.drop_waiting(
            session,
            target.id,
            "deleted untranslated by a customer redaction; the order sweep finds the"
            " order at the store",
        )
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
