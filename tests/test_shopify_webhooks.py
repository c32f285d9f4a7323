"""POST /webhooks/shopify end to end: real payloads, signed as Shopify signs them."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.shopify.signature import sign_body
from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    WebhookReceipt,
)
from tests.conftest import fixture_bytes
from tests.test_shopify_translate import BOB, LINES, json_values, mutate

SECRET = "shpss_current"
PREVIOUS = "shpss_previous"
SHOP = "jsmith.myshopify.com"

Deliver = Callable[..., Any]


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    """The app's client secret and the one before the last rotation."""
    return make_settings(
        shopify_api_secret=SECRET, shopify_api_secret_previous=PREVIOUS
    )


@pytest.fixture
def shop(runtime: Runtime) -> str:
    """An installed shop connected to a Meta pixel; returns its connection id."""
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session,
            "shopify",
            SHOP,
            platform_token="shpat_token",
            pixel_id="1234567890",
            meta_token="EAAB-token",
        )
        return conn.id


def headers_for(
    topic: str, body: bytes, *, secret: str = SECRET, webhook_id: str | None = None
) -> dict[str, str]:
    """The headers Shopify sends with a delivery."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": sign_body(body, secret.encode()),
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "X-Shopify-API-Version": "2026-07",
        # Shopify triggers an uninstall or a redaction after the install it ends, never before.
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat()
        if topic in ("app/uninstalled", "shop/redact")
        else "2026-07-01T12:00:01.123456789Z",
    }


@pytest.fixture
def deliver(client: Any) -> Deliver:
    """POST a body to /webhooks/shopify with Shopify's headers, overridable."""

    def post(
        topic: str,
        body: bytes,
        *,
        secret: str = SECRET,
        webhook_id: str | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> Any:
        sent: dict[str, str | None] = {
            **headers_for(topic, body, secret=secret, webhook_id=webhook_id),
            **(headers or {}),
        }
        return client.post(
            "/webhooks/shopify",
            data=body,
            headers={k: v for k, v in sent.items() if v is not None},
        )

    return post


def events(runtime: Runtime) -> list[Event]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Event).order_by(Event.id)))


def receipts(runtime: Runtime) -> list[WebhookReceipt]:
    with runtime.sessions() as session:
        return list(session.scalars(select(WebhookReceipt).order_by(WebhookReceipt.id)))


def order_bytes(**changes: Any) -> bytes:
    """The storefront order, with top-level fields changed, serialized as Shopify does."""
    order = json.loads(fixture_bytes("shopify/order_storefront.json"))
    order.update(changes)
    return json.dumps(order).encode()


# -- what is stored ------------------------------------------------------------------------


def test_a_paid_order_is_stored_as_this_meta_event(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """orders/paid puts exactly this Meta event in the outbox, hashes included."""
    rv = deliver(
        "orders/paid",
        fixture_bytes("shopify/order_storefront.json"),
        webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    )
    assert 200 == rv.status_code
    assert {"status": "accepted", "new_events": 1} == rv.get_json()
    [event] = events(runtime)
    assert {
        "event_name": "Purchase",
        "event_time": 1199980800,
        "event_id": "5012345678901234567",
        "action_source": "website",
        "event_source_url": (
            "https://jsmith.myshopify.com/548380009/orders/b1946ac92492d2347c6235b4d2611184"
        ),
        "user_data": {
            **BOB,
            "client_ip_address": "81.2.69.142",
            "client_user_agent": (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
            ),
            "fbc": "fb.1.1199980800000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
            "fbp": "fb.1.1596403881668.1116446470",
        },
        "custom_data": {
            "value": 598.94,
            "currency": "USD",
            "contents": LINES,
            "content_ids": ["39072856", "49148385", "457924702"],
            "content_type": "product",
            "num_items": 3,
            "order_id": "5012345678901234567",
        },
    } == event.payload
    assert (shop, EventStatus.PENDING, "5012345678901234567", "207119551") == (
        event.connection_id,
        event.status,
        event.order_ref,
        event.customer_ref,
    )
    [receipt] = receipts(runtime)
    assert {
        "delivery_id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "topic": "orders/paid",
        "event_ref": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "api_version": "2026-07",
        "triggered_at": "2026-07-01T12:00:01.123456+00:00",
        "outcome": "accepted",
        "order_ref": "5012345678901234567",
    } == {
        "delivery_id": receipt.delivery_id,
        "topic": receipt.topic,
        "event_ref": receipt.event_ref,
        "api_version": receipt.api_version,
        "triggered_at": receipt.triggered_at and receipt.triggered_at.isoformat(),
        "outcome": receipt.outcome,
        "order_ref": receipt.order_ref,
    }


def test_no_raw_personal_data_reaches_the_database(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """Emails, phones, names and streets are stored only as hashes."""
    deliver("orders/paid", fixture_bytes("shopify/order_storefront.json"))
    stored = json.dumps([e.payload for e in events(runtime)]).lower()
    for raw in (
        "bob.norman",
        "norman",
        "louisville",
        "chestnut",
        "6136120707",
        "40202",
    ):
        assert raw not in stored


def test_a_started_checkout_is_stored_as_an_initiate_checkout(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """checkouts/create stores one InitiateCheckout keyed by the checkout token."""
    assert (
        200
        == deliver(
            "checkouts/create", fixture_bytes("shopify/checkout.json")
        ).status_code
    )
    assert [("InitiateCheckout", "2a1ace52255252df566af0faaedfbfa7")] == [
        (e.event_name, e.event_id) for e in events(runtime)
    ]


# -- exactly one Purchase per order --------------------------------------------------------


def test_create_paid_and_a_redelivery_make_one_purchase(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """orders/create, orders/paid and a retry of the latter leave one Purchase row."""
    body = fixture_bytes("shopify/order_storefront.json")
    assert {"status": "accepted", "new_events": 1} == deliver(
        "orders/create", body
    ).get_json()
    assert {"status": "accepted", "new_events": 0} == deliver(
        "orders/paid", body, webhook_id="paid-1"
    ).get_json()
    assert {"status": "duplicate", "new_events": 0} == deliver(
        "orders/paid", body, webhook_id="paid-1"
    ).get_json()
    assert [("Purchase", "5012345678901234567")] == [
        (e.event_name, e.event_id) for e in events(runtime)
    ]
    assert 2 == len(receipts(runtime))


def test_an_unpaid_order_counts_once_it_is_paid(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """A bank transfer is skipped at orders/create and counted at orders/paid."""
    pending = fixture_bytes("shopify/order_pending.json")
    rv = deliver("orders/create", pending)
    assert {"status": "skipped", "new_events": 0} == rv.get_json()
    assert [] == events(runtime)
    [receipt] = receipts(runtime)
    assert (
        "order not paid yet (financial_status pending); counted when paid"
        == receipt.detail
    )
    paid = json.loads(pending)
    paid["financial_status"] = "paid"
    deliver("orders/paid", json.dumps(paid).encode())
    assert ["450789469"] == [e.event_id for e in events(runtime)]


@pytest.mark.parametrize(
    "topics",
    [
        pytest.param(("orders/paid", "orders/paid"), id="same-delivery-twice"),
        pytest.param(("orders/create", "orders/paid"), id="create-and-paid-at-once"),
    ],
)
def test_simultaneous_deliveries_make_one_purchase(
    app: Any, runtime: Runtime, shop: str, topics: tuple[str, str]
) -> None:
    """Two deliveries of one order racing each other still leave one Purchase row."""
    body = fixture_bytes("shopify/order_storefront.json")
    same_id = topics[0] == topics[1]
    barrier = threading.Barrier(len(topics))
    statuses: list[int] = []

    def send(topic: str, index: int) -> None:
        webhook_id = "racing-delivery" if same_id else f"racing-{index}"
        request_headers = headers_for(topic, body, webhook_id=webhook_id)
        client = app.test_client()
        barrier.wait()
        statuses.append(
            client.post(
                "/webhooks/shopify", data=body, headers=request_headers
            ).status_code
        )

    threads = [
        threading.Thread(target=send, args=(topic, i)) for i, topic in enumerate(topics)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [200, 200] == statuses
    assert 1 == len(events(runtime))
    assert (1 if same_id else 2) == len(receipts(runtime))


# -- refused deliveries store nothing ------------------------------------------------------

BODY = fixture_bytes("shopify/order_storefront.json")


def one_byte_changed(body: bytes) -> bytes:
    index = body.index(b"598.94")
    return body[:index] + b"698.94"[:1] + body[index + 1 :]


@pytest.mark.parametrize(
    ("sent", "signed", "headers", "status"),
    [
        pytest.param(one_byte_changed(BODY), BODY, {}, 401, id="one-byte-changed"),
        pytest.param(
            json.dumps(json.loads(BODY), sort_keys=True).encode(),
            BODY,
            {},
            401,
            id="keys-reordered",
        ),
        pytest.param(
            json.dumps(json.loads(BODY), separators=(",", ":")).encode(),
            BODY,
            {},
            401,
            id="whitespace-changed",
        ),
        pytest.param(
            BODY, BODY, {"X-Shopify-Hmac-Sha256": None}, 401, id="no-signature"
        ),
        pytest.param(BODY, BODY, {"X-Shopify-Topic": None}, 401, id="no-topic"),
        pytest.param(BODY, BODY, {"X-Shopify-Shop-Domain": None}, 401, id="no-shop"),
        pytest.param(
            BODY,
            BODY,
            {"X-Shopify-Hmac-Sha256": sign_body(BODY, b"someone-else")},
            401,
            id="wrong-secret",
        ),
        pytest.param(b"not json {", b"not json {", {}, 400, id="signed-non-json"),
        pytest.param(b"\xff\xfe{}", b"\xff\xfe{}", {}, 400, id="signed-non-utf8"),
        pytest.param(b"[1, 2]", b"[1, 2]", {}, 400, id="signed-json-array"),
        pytest.param(
            b"{" + b" " * (11 * 1024 * 1024) + b"}",
            b"{" + b" " * (11 * 1024 * 1024) + b"}",
            {},
            413,
            id="eleven-mebibytes",
        ),
    ],
)
def test_refused_deliveries_store_nothing(
    client: Any,
    runtime: Runtime,
    shop: str,
    sent: bytes,
    signed: bytes,
    headers: dict[str, str | None],
    status: int,
) -> None:
    """Tampered, re-serialized, unsigned, non-JSON and oversized bodies get a 4xx and no rows."""
    sent_headers: dict[str, str | None] = {
        **headers_for("orders/paid", signed),
        **headers,
    }
    rv = client.post(
        "/webhooks/shopify",
        data=sent,
        headers={k: v for k, v in sent_headers.items() if v is not None},
    )
    assert status == rv.status_code
    assert ([], []) == (events(runtime), receipts(runtime))


def test_deeply_nested_json_is_a_400(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """A signed body nested deeper than the JSON parser's recursion limit is a 400."""
    body = b"[" * 100_000 + b"]" * 100_000
    assert 400 == deliver("orders/paid", body).status_code
    assert ([], []) == (events(runtime), receipts(runtime))


def test_the_previous_secret_still_verifies(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """During a client-secret rotation deliveries signed with the old secret count."""
    rv = deliver("orders/paid", BODY, secret=PREVIOUS)
    assert 200 == rv.status_code
    assert 1 == len(events(runtime))


def test_a_custom_apps_own_secret_replaces_the_app_secret(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """A connection with its own webhook secret verifies with that one only."""
    with runtime.sessions.begin() as session:
        queries.upsert_connection(session, "shopify", SHOP, webhook_secret="custom-app")
    assert 401 == deliver("orders/paid", BODY).status_code
    assert 200 == deliver("orders/paid", BODY, secret="custom-app").status_code


def test_a_test_order_is_acknowledged_but_not_sent(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """Outside test mode a test order is a skipped receipt and no event."""
    rv = deliver("orders/paid", fixture_bytes("shopify/order_test.json"))
    assert {"status": "skipped", "new_events": 0} == rv.get_json()
    assert [] == events(runtime)


def test_an_unknown_topic_is_acknowledged_and_ignored(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """A topic the connector does not handle gets 200 and a skipped receipt."""
    rv = deliver("products/update", b'{"id": 632910392}')
    assert 200 == rv.status_code
    assert [("skipped", "unhandled topic products/update")] == [
        (r.outcome, r.detail) for r in receipts(runtime)
    ]


# -- unknown and uninstalled shops ---------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "status"),
    [
        pytest.param("orders/paid", 401, id="order"),
        pytest.param("checkouts/create", 401, id="checkout"),
        pytest.param("app/uninstalled", 200, id="uninstalled"),
        pytest.param("shop/redact", 200, id="shop-redact"),
    ],
)
def test_an_unknown_shop_is_refused_except_for_lifecycle_topics(
    deliver: Deliver, runtime: Runtime, topic: str, status: int
) -> None:
    """A shop without a connection gets 401, or 200 for uninstall and compliance topics."""
    rv = deliver(topic, BODY)
    assert status == rv.status_code
    assert ([], []) == (events(runtime), receipts(runtime))


@pytest.mark.parametrize(
    "topic",
    ["app/uninstalled", "shop/redact", "customers/redact", "customers/data_request"],
)
def test_a_forged_compliance_webhook_is_refused_even_for_an_unknown_shop(
    deliver: Deliver, runtime: Runtime, topic: str
) -> None:
    """Shopify's review expects 401 for a compliance webhook whose HMAC does not match."""
    rv = deliver(topic, BODY, secret="not-the-app-secret")
    assert 401 == rv.status_code
    assert ([], []) == (events(runtime), receipts(runtime))


def test_app_uninstalled_stops_the_shop(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """Uninstall forgets the shop's token, holds its events, and refuses later orders."""
    deliver("orders/paid", BODY)
    rv = deliver("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    assert {"status": "action", "new_events": 0} == rv.get_json()
    with runtime.sessions() as session:
        conn = session.get(Connection, shop)
        assert conn is not None
        assert (ConnectionStatus.UNINSTALLED, None) == (
            conn.status,
            conn.platform_token,
        )
    assert [EventStatus.HELD] == [e.status for e in events(runtime)]
    assert (
        401 == deliver("orders/paid", order_bytes(id=5012345678901234568)).status_code
    )


# -- compliance ----------------------------------------------------------------------------


def order_of_customer_191167(order_id: int) -> bytes:
    """A paid order by the customer that Shopify's compliance examples name."""
    order = json.loads(fixture_bytes("shopify/order_storefront.json"))
    order["id"] = order_id
    order["customer"]["id"] = 191167
    return json.dumps(order).encode()


def test_customers_redact_deletes_that_customers_events_and_receipts(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """customers/redact removes the named customer's and orders' rows, and only those."""
    deliver("orders/paid", order_of_customer_191167(299938))
    deliver("orders/paid", BODY)  # another customer's order stays
    rv = deliver("customers/redact", fixture_bytes("shopify/customers_redact.json"))
    assert {"status": "action", "new_events": 0} == rv.get_json()
    assert ["5012345678901234567"] == [e.event_id for e in events(runtime)]
    assert ["orders/paid", "customers/redact"] == [r.topic for r in receipts(runtime)]


def test_customers_data_request_records_what_is_held(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """customers/data_request records a report of the customer's events, no hashes."""
    deliver("orders/paid", order_of_customer_191167(299938))
    deliver(
        "customers/data_request", fixture_bytes("shopify/customers_data_request.json")
    )
    request_receipt = receipts(runtime)[-1]
    assert "customers/data_request" == request_receipt.topic
    report = json.loads(request_receipt.detail or "{}")
    assert "191167" == report["customer_ref"]
    assert [("Purchase", "299938")] == [
        (e["event_name"], e["event_id"]) for e in report["events"]
    ]
    assert BOB["em"][0] not in (request_receipt.detail or "")


def test_shop_redact_deletes_everything_of_the_shop(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """shop/redact, 48 hours after an uninstall, leaves nothing of the shop behind."""
    deliver("orders/paid", BODY)
    deliver("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    rv = deliver("shop/redact", fixture_bytes("shopify/shop_redact.json"))
    assert 200 == rv.status_code
    with runtime.sessions() as session:
        assert None is session.get(Connection, shop)
        assert 0 == session.scalar(select(func.count()).select_from(WebhookReceipt))
    assert [] == events(runtime)


def test_compliance_deliveries_with_a_bad_signature_get_401(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """Shopify's review requires 401 for a compliance webhook with an invalid HMAC."""
    rv = deliver(
        "customers/redact",
        fixture_bytes("shopify/customers_redact.json"),
        secret="not-the-secret",
    )
    assert 401 == rv.status_code


# -- fuzzing -------------------------------------------------------------------------------

HEADER_NAMES = [
    "X-Shopify-Hmac-Sha256",
    "X-Shopify-Topic",
    "X-Shopify-Shop-Domain",
    "X-Shopify-Webhook-Id",
    "X-Shopify-Event-Id",
    "X-Shopify-API-Version",
    "X-Shopify-Triggered-At",
    "Shopify-Topic",
    "Shopify-Webhook-Id",
]
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
TOPICS = [
    "orders/create",
    "orders/paid",
    "checkouts/create",
    "checkouts/update",
    "customers/redact",
    "customers/data_request",
    "app/uninstalled",
    "products/update",
]
ORDER = json.loads(BODY)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "order"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return json.dumps(mutate(ORDER, draw(st.data()))).encode()


@pytest.fixture
def fuzz_client(app: Any, shop: str) -> Any:
    """A client for an app with the shop installed."""
    return app.test_client()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    topic=st.sampled_from(TOPICS),
    body=bodies(),
    sign=st.booleans(),
    noise=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4),
)
def test_no_delivery_gets_a_500(
    fuzz_client: Any, topic: str, body: bytes, sign: bool, noise: dict[str, str]
) -> None:
    """Whatever the headers and body, the answer is a 2xx or 4xx, never a 500."""
    sent = headers_for(topic, body)
    if not sign:
        sent["X-Shopify-Hmac-Sha256"] = sign_body(body, b"forged")
    sent.update(noise)
    rv = fuzz_client.post("/webhooks/shopify", data=body, headers=sent)
    assert rv.status_code < 500, rv.get_data(as_text=True)


def test_scopes_update_records_what_the_shop_now_grants(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """app/scopes_update stores the current scopes on the connection and makes no event."""
    body = json.dumps(
        {
            "id": 1,
            "previous": ["read_orders"],
            "current": ["read_orders", "read_customers"],
            "updated_at": "2026-11-20T10:00:00.000Z",
            "created_at": "2026-11-01T10:00:00.000Z",
        }
    ).encode()
    rv = deliver("app/scopes_update", body)
    assert {"status": "action", "new_events": 0} == rv.get_json()
    with runtime.sessions() as session:
        conn = session.get(Connection, shop)
        assert conn is not None
        assert "read_orders,read_customers" == conn.scopes
    assert [] == events(runtime)


def test_a_malformed_scopes_update_is_a_400(
    deliver: Deliver, runtime: Runtime, shop: str
) -> None:
    """A scopes update without a current list is refused and changes nothing."""
    assert (
        400 == deliver("app/scopes_update", b'{"current": "read_orders"}').status_code
    )
    with runtime.sessions() as session:
        conn = session.get(Connection, shop)
        assert conn is not None
        assert conn.scopes is None


# -- lifecycle messages older than the install they would undo -----------------------------


@pytest.mark.parametrize("topic", ["app/uninstalled", "shop/redact"])
@pytest.mark.parametrize(
    ("triggered", "applied"),
    [
        # triggered 10 minutes before the reinstall a minute ago, delivered now: stale
        pytest.param(timedelta(minutes=-11), False, id="before-the-reinstall"),
        pytest.param(timedelta(seconds=1), True, id="after-the-install"),
    ],
)
def test_a_lifecycle_webhook_triggered_before_the_install_is_ignored(
    deliver: Deliver,
    runtime: Runtime,
    shop: str,
    topic: str,
    triggered: timedelta,
    applied: bool,
) -> None:
    """A late uninstall or shop/redact never undoes a newer install: X-Shopify-Triggered-At decides."""
    installed = datetime.now(UTC) - timedelta(minutes=1)
    with runtime.sessions.begin() as session:
        session.get_one(Connection, shop).installed_at = installed
    body = fixture_bytes(
        "shopify/app_uninstalled.json"
        if topic == "app/uninstalled"
        else "shopify/shop_redact.json"
    )
    rv = deliver(
        topic,
        body,
        headers={"X-Shopify-Triggered-At": (installed + triggered).isoformat()},
    )
    assert 200 == rv.status_code
    with runtime.sessions() as session:
        conn = session.get(Connection, shop)
        if applied:
            assert conn is None or conn.status == ConnectionStatus.UNINSTALLED
        else:
            assert conn is not None
            assert (ConnectionStatus.ACTIVE, "shpat_token") == (
                conn.status,
                conn.platform_token,
            )
    if not applied:
        [receipt] = receipts(runtime)
        assert ("skipped", topic) == (receipt.outcome, receipt.topic)
        assert "before the app was installed again" in (receipt.detail or "")
