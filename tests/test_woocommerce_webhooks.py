"""POST /webhooks/woocommerce/<connection>: ping, signatures, dedup, exactly one Purchase."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Event, WebhookReceipt
from tests.conftest import fixture_bytes
from tests.fakes.woocommerce import woocommerce_signature

SECRET = 'wh&amp;S3cret<with>"quotes"\''


@pytest.fixture
def connection_id(runtime: Runtime) -> str:
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session, "woocommerce", "https://example.com", webhook_secret=SECRET
        )
        return conn.id


def deliver(
    client: Any,
    connection_id: str,
    body: bytes,
    topic: str = "order.updated",
    **extra: str,
) -> Any:
    headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Signature": woocommerce_signature(body, SECRET),
        "X-WC-Webhook-Delivery-ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "X-WC-Webhook-ID": "101",
        **extra,
    }
    return client.post(
        f"/webhooks/woocommerce/{connection_id}", data=body, headers=headers
    )


def counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        receipts = session.scalar(select(func.count()).select_from(WebhookReceipt))
        purchases = session.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.event_name == "Purchase")
        )
    return int(receipts or 0), int(purchases or 0)


def test_the_creation_ping_gets_200_and_stores_nothing(
    client: Any, runtime: Runtime, connection_id: str
) -> None:
    """WooCommerce's unsigned webhook_id=N ping is answered 200 and leaves no trace."""
    rv = client.post(
        f"/webhooks/woocommerce/{connection_id}",
        data=b"webhook_id=101",
        headers={"User-Agent": "WooCommerce/9.9.0 Hookshot (WordPress/6.8)"},
    )
    assert 200 == rv.status_code
    assert (0, 0) == counts(runtime)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(
            fixture_bytes("woocommerce/order-processing.json"),
            {"X-WC-Webhook-Topic": "order.updated"},
            id="unsigned-order",
        ),
        pytest.param(
            b"webhook_id=101",
            {"X-WC-Webhook-Topic": "order.updated"},
            id="ping-with-topic",
        ),
        pytest.param(b"webhook_id=101&x=1", {}, id="ping-lookalike"),
        pytest.param(
            fixture_bytes("woocommerce/order-processing.json"),
            {
                "X-WC-Webhook-Topic": "order.updated",
                "X-WC-Webhook-Signature": "bm9wZQ==",
            },
            id="wrong-signature",
        ),
    ],
)
def test_unsigned_or_badly_signed_requests_get_401_and_store_nothing(
    client: Any,
    runtime: Runtime,
    connection_id: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """Nothing but the ping is accepted without a valid signature."""
    rv = client.post(
        f"/webhooks/woocommerce/{connection_id}", data=body, headers=headers
    )
    assert 401 == rv.status_code
    assert (0, 0) == counts(runtime)


def test_a_delivery_for_an_unknown_connection_is_refused(
    client: Any, runtime: Runtime
) -> None:
    """A signed body posted to a connection id we do not have gets 401."""
    rv = deliver(
        client, "nosuchconnection", fixture_bytes("woocommerce/order-processing.json")
    )
    assert 401 == rv.status_code
    assert (0, 0) == counts(runtime)


SEQUENCE = {
    "created-pending": ("order.created", "order-pending.json"),
    "updated-processing": ("order.updated", "order-processing.json"),
    "updated-completed": ("order.updated", "order-completed.json"),
    "duplicate-processing": ("order.updated", "order-processing.json"),
}


@pytest.mark.parametrize(
    "order",
    [pytest.param(p, id=">".join(p)) for p in itertools.permutations(SEQUENCE)],
)
def test_an_order_lifecycle_in_any_order_makes_one_purchase(
    client: Any, runtime: Runtime, connection_id: str, order: tuple[str, ...]
) -> None:
    """created(pending), updated(processing), updated(completed) and a duplicate: one Purchase."""
    for step in order:
        topic, fixture = SEQUENCE[step]
        assert (
            200
            == deliver(
                client, connection_id, fixture_bytes(f"woocommerce/{fixture}"), topic
            ).status_code
        )
    receipts, purchases = counts(runtime)
    assert 1 == purchases
    assert 3 == receipts  # the duplicate of the second delivery is recorded once


def test_two_deliveries_at_once_make_one_purchase(
    app: Any, runtime: Runtime, connection_id: str
) -> None:
    """Processing and completed arriving together still make one Purchase row."""
    bodies = [
        fixture_bytes("woocommerce/order-processing.json"),
        fixture_bytes("woocommerce/order-completed.json"),
        fixture_bytes("woocommerce/order-processing.json"),
    ]
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def send(body: bytes) -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(deliver(client, connection_id, body).status_code)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [200, 200, 200] == statuses
    assert (2, 1) == counts(runtime)


def test_a_rest_error_body_is_recorded_as_skipped(
    client: Any, runtime: Runtime, connection_id: str
) -> None:
    """An error object WooCommerce sends in place of the order gets 200 and a readable receipt."""
    rv = deliver(
        client, connection_id, fixture_bytes("woocommerce/error-cannot-view.json")
    )
    assert 200 == rv.status_code
    with runtime.sessions() as session:
        receipt = session.scalars(select(WebhookReceipt)).one()
    assert "skipped" == receipt.outcome
    assert receipt.detail is not None
    assert "woocommerce_rest_cannot_view" in receipt.detail
    assert (1, 0) == counts(runtime)


def test_the_purchase_row_holds_hashes_not_personal_data(
    client: Any, runtime: Runtime, connection_id: str
) -> None:
    """The outbox row carries the hashed email, never the address itself."""
    deliver(client, connection_id, fixture_bytes("woocommerce/order-processing.json"))
    with runtime.sessions() as session:
        event = session.scalars(select(Event)).one()
    assert "727" == event.event_id
    assert "john.doe@example.com" not in str(event.payload)
    assert 1 == len(event.payload["user_data"]["em"])


header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            fixture_bytes("woocommerce/order-processing.json"),
            fixture_bytes("woocommerce/error-cannot-view.json"),
            b"webhook_id=7",
            b"[]",
            b'{"id": 1e400}',
            b'{"id": "' + b"9" * 300 + b'"}',
            b'{"id": 5, "status": "'
            + b"x" * 500
            + b'", "total": "1", "currency": "USD"}',
        ]
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=bodies,
    topic=st.none()
    | st.sampled_from(["order.updated", "order.deleted", "ORDER.CREATED"])
    | header_text,
    sign=st.booleans(),
    signature=st.none() | header_text,
    delivery=st.none() | header_text,
    path=st.sampled_from(["known", "unknown"])
    | st.text(alphabet="abc0123456789-_%", min_size=1, max_size=80),
)
def test_no_request_gets_a_500(
    client: Any,
    connection_id: str,
    body: bytes,
    topic: str | None,
    sign: bool,
    signature: str | None,
    delivery: str | None,
    path: str,
) -> None:
    """Whatever bodies and headers arrive, the answer is never a server error."""
    headers: dict[str, str] = {}
    if topic is not None:
        headers["X-WC-Webhook-Topic"] = topic
    if sign:
        headers["X-WC-Webhook-Signature"] = woocommerce_signature(body, SECRET)
    elif signature is not None:
        headers["X-WC-Webhook-Signature"] = signature
    if delivery is not None:
        headers["X-WC-Webhook-Delivery-ID"] = delivery
    target = connection_id if path == "known" else path
    rv = client.post(f"/webhooks/woocommerce/{target}", data=body, headers=headers)
    assert rv.status_code < 500


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"id":31,"status":"processing","total":"5.00","currency":""}',
            id="no-currency",
        ),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"id":"x","status":"completed"}', id="no-order-id"),
    ],
)
def test_a_signed_body_no_event_can_come_from_is_recorded_and_answered_200(
    client: Any, runtime: Runtime, connection_id: str, body: bytes
) -> None:
    """WooCommerce never retries and disables a webhook that keeps failing: answer 200, keep why."""
    rv = deliver(client, connection_id, body)
    assert 200 == rv.status_code
    with runtime.sessions() as session:
        receipt = session.scalars(select(WebhookReceipt)).one()
    assert "skipped" == receipt.outcome
    assert "no event can be made" in (receipt.detail or "")
    assert (1, 0) == counts(runtime)


def test_a_legacy_api_delivery_makes_its_purchase(
    client: Any, runtime: Runtime, connection_id: str
) -> None:
    """A webhook still on the Legacy REST API format ({"order": {...}}) is not lost."""
    rv = deliver(
        client, connection_id, fixture_bytes("woocommerce/order-legacy-v3.json")
    )
    assert 200 == rv.status_code
    with runtime.sessions() as session:
        event = session.scalars(select(Event)).one()
    assert ("Purchase", "645") == (event.event_name, event.event_id)
