"""Two web workers, one database: what one worker changes, the other's next delivery obeys.

Each app below stands for one gunicorn worker with its own memory (and its own cache of
connections); they share the database. Worker B accepts an order first, so it has the shop's
connection at hand; then the shop changes, through worker A or the database; B's next delivery
must be answered as if B had read the connection afresh: never stored for a connection that
is gone or uninstalled, never with a stale secret or stale settings, never a 5xx.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, WebhookReceipt
from connector.web import create_app
from tests.conftest import fixture_bytes
from tests.test_shopify_webhooks import SHOP, headers_for, order_bytes

SECRET = "shpss_current"


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET)


@pytest.fixture
def shop(runtime: Runtime) -> str:
    with runtime.sessions.begin() as session:
        return queries.upsert_connection(
            session, "shopify", SHOP, pixel_id="1234567890", meta_token="EAAB-token"
        ).id


Post = Callable[..., Any]


def worker(runtime: Runtime) -> Post:
    """A fresh app on the shared runtime: one more web worker."""
    client = create_app(runtime=runtime).test_client()

    def post(topic: str, body: bytes, *, secret: str = SECRET) -> Any:
        return client.post(
            "/webhooks/shopify",
            data=body,
            headers=headers_for(topic, body, secret=secret),
        )

    return post


def stored(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        return (
            len(session.scalars(select(Event.id)).all()),
            len(session.scalars(select(WebhookReceipt.id)).all()),
        )


def set_columns(runtime: Runtime, shop: str, **values: Any) -> None:
    with runtime.sessions.begin() as session:
        session.execute(
            update(Connection).where(Connection.id == shop).values(**values)
        )


def test_an_uninstall_through_another_worker_is_obeyed_at_once(
    runtime: Runtime, shop: str
) -> None:
    """Worker A takes the uninstall; worker B refuses the next order: 401, nothing stored."""
    a, b = worker(runtime), worker(runtime)
    assert 200 == b("orders/paid", order_bytes(id=1001)).status_code
    uninstall = a("app/uninstalled", fixture_bytes("shopify/app_uninstalled.json"))
    assert 200 == uninstall.status_code
    before = stored(runtime)
    assert 401 == b("orders/paid", order_bytes(id=1002)).status_code
    assert before == stored(runtime)


def test_a_shop_redact_through_another_worker_is_obeyed_at_once(
    runtime: Runtime, shop: str
) -> None:
    """The connection is deleted by worker A; worker B's next order is a 401, not a 5xx."""
    a, b = worker(runtime), worker(runtime)
    assert 200 == b("orders/paid", order_bytes(id=1001)).status_code
    assert (
        200
        == a(
            "app/uninstalled", fixture_bytes("shopify/app_uninstalled.json")
        ).status_code
    )
    assert (
        200 == a("shop/redact", fixture_bytes("shopify/shop_redact.json")).status_code
    )
    with runtime.sessions() as session:
        assert session.get(Connection, shop) is None
    assert 401 == b("orders/paid", order_bytes(id=1002)).status_code
    assert (0, 0) == stored(runtime)


def test_a_connection_deleted_under_a_worker_is_a_401_not_a_500(
    runtime: Runtime, shop: str
) -> None:
    """A row deleted straight in the database (no uninstall first) is no foreign-key 500."""
    b = worker(runtime)
    assert 200 == b("orders/paid", order_bytes(id=1001)).status_code
    with runtime.sessions.begin() as session:
        queries.redact_store(session, shop)
    assert 401 == b("orders/paid", order_bytes(id=1002)).status_code
    assert (0, 0) == stored(runtime)


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(ConnectionStatus.DISCONNECTED, id="disconnected"),
        pytest.param(ConnectionStatus.NEEDS_RECONNECT, id="needs-reconnect"),
    ],
)
def test_a_status_change_elsewhere_still_takes_orders(
    runtime: Runtime, shop: str, status: ConnectionStatus
) -> None:
    """Only an uninstall refuses orders; other statuses keep them for the worker to hold."""
    b = worker(runtime)
    assert 200 == b("orders/paid", order_bytes(id=1001)).status_code
    set_columns(runtime, shop, status=status)
    assert 200 == b("orders/paid", order_bytes(id=1002)).status_code
    assert (2, 2) == stored(runtime)


def test_a_new_webhook_secret_elsewhere_is_used_at_once(
    runtime: Runtime, shop: str
) -> None:
    """The shop's own secret set by another process: the old one is refused, the new one verifies."""
    b = worker(runtime)
    assert 200 == b("orders/paid", order_bytes(id=1001)).status_code
    with runtime.sessions.begin() as session:
        queries.upsert_connection(session, "shopify", SHOP, webhook_secret="custom-app")
    assert 401 == b("orders/paid", order_bytes(id=1002)).status_code
    assert (
        200 == b("orders/paid", order_bytes(id=1003), secret="custom-app").status_code
    )
    with runtime.sessions.begin() as session:
        queries.upsert_connection(session, "shopify", SHOP, webhook_secret="rotated")
    assert (
        401 == b("orders/paid", order_bytes(id=1004), secret="custom-app").status_code
    )
    assert (2, 2) == stored(runtime)


def test_new_settings_elsewhere_are_used_at_once(runtime: Runtime, shop: str) -> None:
    """Orders of a channel the store owner just excluded are skipped by every worker."""
    b = worker(runtime)
    assert {"status": "accepted", "new_events": 1} == b(
        "orders/paid", order_bytes(id=1001)
    ).get_json()
    set_columns(runtime, shop, settings={"excluded_channels": ["web"]})
    assert {"status": "skipped", "new_events": 0} == b(
        "orders/paid", order_bytes(id=1002)
    ).get_json()


def test_test_mode_set_elsewhere_is_used_at_once(runtime: Runtime, shop: str) -> None:
    """A test order sent while another process turned test mode on counts as a test."""
    b = worker(runtime)
    body = order_bytes(id=1001, test=True)
    assert {"status": "skipped", "new_events": 0} == b("orders/paid", body).get_json()
    set_columns(runtime, shop, test_event_code="TEST123")
    assert {"status": "accepted", "new_events": 1} == b(
        "orders/paid", order_bytes(id=1002, test=True)
    ).get_json()


def test_a_reinstall_after_an_uninstall_takes_orders_at_once(
    runtime: Runtime, shop: str
) -> None:
    """Refused while uninstalled, accepted as soon as the shop installs the app again."""
    a, b = worker(runtime), worker(runtime)
    assert (
        200
        == a(
            "app/uninstalled", fixture_bytes("shopify/app_uninstalled.json")
        ).status_code
    )
    assert 401 == b("orders/paid", order_bytes(id=1001)).status_code
    with runtime.sessions.begin() as session:
        queries.upsert_connection(session, "shopify", SHOP, platform_token="shpat_new")
    assert 200 == b("orders/paid", order_bytes(id=1002)).status_code


def test_the_cache_is_bounded_in_size_and_time() -> None:
    """At most ``size`` connections, each forgotten after ``lifetime`` seconds."""
    from connector.web.webhooks import _Target, _TargetCache

    def target(n: int) -> _Target:
        guard = queries.ConnectionGuard(
            status="active",
            store=f"s{n}",
            settings="{}",
            test_event_code=None,
            webhook_secret=None,
        )
        return _Target(
            id=str(n),
            platform="shopify",
            store=f"s{n}",
            status="active",
            settings={},
            test_event_code=None,
            webhook_secret=None,
            guard=guard,
        )

    cache = _TargetCache(lifetime=60, size=2)
    for n in range(3):
        cache.put(("shopify", "store", f"s{n}"), target(n))
    assert cache.get(("shopify", "store", "s0")) is None  # the oldest went
    assert "1" == getattr(cache.get(("shopify", "store", "s1")), "id", None)
    expired = _TargetCache(lifetime=0, size=2)
    expired.put(("shopify", "store", "s0"), target(0))
    assert expired.get(("shopify", "store", "s0")) is None


def test_orders_racing_a_redaction_get_200_or_401_never_a_500(
    runtime: Runtime, shop: str
) -> None:
    """Deleting the connection while a worker records an order leaves no 5xx and no orphan."""
    b = worker(runtime)
    answers: list[int] = []
    for n in range(10):
        with runtime.sessions.begin() as session:
            queries.upsert_connection(session, "shopify", SHOP, pixel_id="1234567890")
        assert 200 == b("orders/paid", order_bytes(id=2000 + 2 * n)).status_code
        with runtime.sessions() as session:
            shop = session.scalars(
                select(Connection.id).where(Connection.store == SHOP)
            ).one()

        def redact(connection_id: str = shop) -> None:
            with runtime.sessions.begin() as session:
                queries.redact_store(session, connection_id)

        thread = threading.Thread(target=redact)
        thread.start()
        answers.append(b("orders/paid", order_bytes(id=2001 + 2 * n)).status_code)
        thread.join()
        with runtime.sessions() as session:
            assert [] == session.scalars(select(Event.connection_id)).all()
    assert set(answers) <= {200, 401}
