"""WooCommerce's part of the order sweep: orders from the REST API, and webhook health.

Orders come from ``GET /wp-json/wc/v3/orders?modified_after=...&per_page=100&page=N``
(:func:`adapters.woocommerce.rest.iter_orders`), authenticated as the connect flow is
(Basic over https, OAuth 1.0a over http). A wc/v3 order is the body of an ``order.updated``
webhook, so each goes through the same translation as ``order.updated``.

Webhook health: WooCommerce disables a webhook after five failed deliveries in a row
(``WC_Webhook::failed_delivery``,
https://woocommerce.com/document/webhooks/#webhook-delivery-failures) and never re-enables
it. Each sweep lists the store's webhooks: one of the connection's (its delivery URL ends in
``/webhooks/woocommerce/<connection id>``) found ``disabled`` is set ``active`` again; for a
store connected through the connect flow, a missing topic is re-created. A ``paused``
webhook is the store owner's choice and is left alone (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from adapters.woocommerce import connect
from adapters.woocommerce.rest import WooCommerceClient, iter_orders
from connector import jobs
from connector.errors import PlatformError
from connector.runtime import Runtime
from connector.store import queries
from connector.sweep import FoundOrder, Repair

log = logging.getLogger(__name__)

TOPIC = "order.updated"


def _client(runtime: Runtime, connection_id: str) -> tuple[WooCommerceClient, Any]:
    with runtime.sessions() as s:
        conn = queries.get_connection(s, connection_id)
        store, key, secret = conn.store, conn.platform_key, conn.platform_token
        webhooks = (conn.settings or {}).get("webhooks")
    if not key or not secret:
        raise PlatformError(
            f"connection {connection_id} holds no WooCommerce REST keys to read orders with"
        )
    client = WooCommerceClient.for_settings(runtime.settings, store, key, secret)
    return client, webhooks


def sweep_orders(
    runtime: Runtime, connection_id: str, since: datetime, until: datetime
) -> Iterator[FoundOrder]:
    """The store's orders modified in ``[since, until]``, as ``order.updated`` bodies.

    Raises:
        PlatformError: the store cannot be read.
    """
    client, _ = _client(runtime, connection_id)
    for order in iter_orders(client, since, until, stop=jobs.stop_requested):
        order_id = order.get("id")
        if isinstance(order_id, int) and not isinstance(order_id, bool):
            yield FoundOrder(ref=str(order_id), topic=TOPIC, payload=order)


def _mine(hooks: list[dict[str, Any]], connection_id: str) -> list[dict[str, Any]]:
    suffix = f"/webhooks/woocommerce/{connection_id}"
    return [
        w
        for w in hooks
        if isinstance(w.get("delivery_url"), str)
        and urlsplit(w["delivery_url"]).path.rstrip("/").endswith(suffix)
        and isinstance(w.get("id"), int)
    ]


def repair_webhooks(runtime: Runtime, connection_id: str) -> list[Repair]:
    """Re-activate the connection's disabled webhooks; re-create missing ones (connect flow).

    Raises:
        PlatformError: the store's webhooks cannot be listed.
    """
    client, bookkeeping = _client(runtime, connection_id)
    mine = _mine(client.list_webhooks(), connection_id)
    by_topic = {w.get("topic"): w for w in mine}
    repairs: list[Repair] = []
    for hook in mine:
        if hook.get("status") == "paused":
            log.info(
                "webhook %s of %s is paused by the store owner; left alone",
                hook["id"],
                connection_id,
            )
            continue
        if hook.get("status") != "disabled":
            continue
        try:
            client.json("PUT", f"/webhooks/{hook['id']}", json={"status": "active"})
        except PlatformError as exc:
            repairs.append(
                Repair(topic=str(hook.get("topic")), action="failed", detail=str(exc))
            )
        else:
            repairs.append(
                Repair(
                    topic=str(hook.get("topic")),
                    action="reactivated",
                    detail=f"webhook {hook['id']} was disabled by WooCommerce after failed deliveries; set active again",
                )
            )
    if isinstance(bookkeeping, dict):
        missing = [t for t in connect.TOPICS if t not in by_topic]
        if missing:
            status = connect.setup_webhooks(runtime, connection_id)
            action = "recreated" if status == "ready" else "failed"
            repairs.extend(
                Repair(
                    topic=t,
                    action=action,
                    detail=(
                        "the webhook was missing at the store; re-created"
                        if action == "recreated"
                        else f"the webhook is missing at the store; re-creating it: {status}"
                    ),
                )
                for t in missing
            )
    return repairs
