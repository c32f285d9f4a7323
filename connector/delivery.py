"""A verified delivery's body, translated into what is recorded: one rule for both paths.

The web request translates a delivery at once (``CONNECTOR_WEBHOOK_TRANSLATION=inline``), or
the worker translates it later from its sealed body (``worker``, :mod:`connector.inbox`);
both go through :func:`translate`, so a delivery makes the same receipt and the same events
whichever way it went.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from connector import jsoncodec
from connector.errors import PayloadError
from connector.platform import Adapter, ConnectionInfo, Envelope, Outcome
from connector.store import queries
from connector.web import storable

#: the reason recorded for a signed body whose text no column can keep
UNSTORABLE = "the store sent a body the database cannot keep"


def parse_json(body: bytes) -> Any:
    """The body as JSON, or PayloadError (a request answers it 400).

    Text the database cannot keep (raw or escaped surrogates, NUL) parses here; the delivery
    is then recorded as unusable (see :mod:`connector.web.storable`), not refused.
    """
    try:
        # orjson where it reads the same values as the standard library, which takes over
        # where it does not (see connector.jsoncodec): several times faster on a 28 kB order.
        return jsoncodec.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("the body is not valid JSON") from exc
    except (
        RecursionError
    ) as exc:  # thousands of nested brackets: no platform sends that
        raise PayloadError("the body is nested too deeply") from exc


def connection_info(
    *,
    id: str,
    platform: str,
    store: str,
    settings: Mapping[str, Any] | None,
    test_event_code: str | None,
) -> ConnectionInfo:
    """What translation may know of a connection, from its stored columns."""
    return ConnectionInfo(
        id=id,
        platform=platform,
        store=store,
        settings=dict(settings or {}),
        # Test mode is having a test_event_code: a test order must never reach Meta as real.
        test_mode=bool(test_event_code),
    )


def envelope_receipt(
    platform: str, connection_id: str, delivery_id: str, envelope: Envelope
) -> queries.ReceiptIn:
    """The receipt of a delivery as its headers describe it, before any outcome."""
    return queries.ReceiptIn(
        platform=platform,
        connection_id=connection_id,
        delivery_id=delivery_id,
        topic=envelope.topic,
        event_ref=envelope.event_ref,
        api_version=envelope.api_version,
        triggered_at=envelope.triggered_at,
    )


@dataclass(frozen=True, slots=True)
class Translated:
    """What a delivery makes: its outcome and the receipt to record it with."""

    outcome: Outcome
    #: accepted (events) | action (lifecycle) | skipped (with a reason)
    outcome_name: str
    receipt: queries.ReceiptIn


def translate(
    adapter: Adapter,
    *,
    platform: str,
    info: ConnectionInfo,
    envelope: Envelope,
    body: bytes,
    payload: Any,
    now: datetime,
) -> Translated:
    """The outcome of a verified, parsed delivery and its receipt (pure).

    ``now`` is when the delivery was received. A body with text the database cannot keep
    (:mod:`connector.web.storable`) is recorded as skipped with the reason, never refused:
    a platform would only send it again.

    Raises:
        PayloadError: the adapter's: the body is not a payload this topic can carry.
    """
    unusable = storable.text_problem(body, payload)
    if unusable is None:
        outcome = adapter.handle(envelope.topic, payload, info, now)
    else:
        outcome = Outcome(skipped=f"{UNSTORABLE}: {unusable}")
    outcome_name = (
        "accepted" if outcome.events else ("action" if outcome.action else "skipped")
    )
    receipt = replace(
        envelope_receipt(
            platform, info.id, adapter.delivery_id(envelope, payload), envelope
        ),
        outcome=outcome_name,
        detail=outcome.skipped,
        order_ref=outcome.order_ref,
        customer_ref=outcome.customer_ref,
    )
    unusable = storable.unfit(receipt, outcome.events)
    if unusable is not None:
        # Recorded, answered 200: a platform would only retry (Shopify) or count the
        # failure towards disabling the webhook (WooCommerce) over a body it cannot fix.
        outcome = Outcome(skipped=f"{UNSTORABLE}: {unusable}")
        outcome_name = "skipped"
        receipt = storable.fitted(receipt, outcome.skipped or "")
    return Translated(outcome=outcome, outcome_name=outcome_name, receipt=receipt)
