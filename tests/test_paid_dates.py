"""One rule for both platforms: an event is dated when the state that triggers it was reached.

A Purchase is dated when the order became paid, so an order paid days after it was placed
(cash on delivery, bank transfer) is still inside Meta's window; where the window is still
missed, the dead letter says so in words a store owner understands.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from adapters.shopify import adapter as shopify
from adapters.woocommerce import adapter as woocommerce
from connector.cli import cli
from connector.config import Settings
from connector.platform import ConnectionInfo
from connector.retry import check_event_time
from tests.conftest import FIXTURES

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
PLACED = NOW - timedelta(days=9)


def shopify_order(**fields: Any) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(
        (FIXTURES / "shopify" / "order.json").read_text()
    )
    order.update(
        id=6200000000099,
        created_at=PLACED.isoformat(),
        processed_at=PLACED.isoformat(),
        updated_at=(NOW - timedelta(minutes=2)).isoformat(),
        test=False,
    )
    order.update(fields)
    return order


def conn(platform: str = "shopify", **settings: Any) -> ConnectionInfo:
    return ConnectionInfo(
        id="c1", platform=platform, store="s.example", settings=settings
    )


def sale(at: datetime, kind: str = "sale", status: str = "success") -> dict[str, Any]:
    return {"kind": kind, "status": status, "processed_at": at.isoformat()}


@pytest.mark.parametrize(
    ("topic", "fields", "settings", "dated"),
    [
        pytest.param(
            "orders/paid",
            {"financial_status": "paid"},
            {},
            NOW - timedelta(minutes=2),
            id="paid-later-webhook-dated-at-updated_at",
        ),
        pytest.param(
            "orders/create",
            {"financial_status": "paid", "updated_at": PLACED.isoformat()},
            {},
            PLACED,
            id="paid-at-checkout-dated-at-processed_at",
        ),
        pytest.param(
            "orders/paid",
            {
                "financial_status": "paid",
                "transactions": [
                    sale(NOW - timedelta(days=3), kind="authorization"),
                    sale(NOW - timedelta(days=2), kind="capture", status="failure"),
                    sale(NOW - timedelta(hours=5), kind="capture"),
                ],
            },
            {},
            NOW - timedelta(hours=5),
            id="swept-dated-at-the-successful-capture",
        ),
        pytest.param(
            "orders/paid",
            {
                "financial_status": "paid",
                "updated_at": (NOW + timedelta(hours=1)).isoformat(),
            },
            {},
            NOW,
            id="never-later-than-now",
        ),
        pytest.param(
            "orders/paid",
            {
                "financial_status": "paid",
                "transactions": [sale(PLACED - timedelta(days=1))],
            },
            {},
            PLACED,
            id="never-before-the-order-was-placed",
        ),
        pytest.param(
            "orders/create",
            {"financial_status": "pending"},
            {"purchase_on": "created"},
            PLACED,
            id="counted-at-creation-dated-at-creation",
        ),
    ],
)
def test_a_shopify_purchase_is_dated_when_the_order_became_paid(
    topic: str, fields: dict[str, Any], settings: dict[str, Any], dated: datetime
) -> None:
    outcome = shopify.handle(topic, shopify_order(**fields), conn(**settings), NOW)
    [event] = outcome.events
    assert event.event_time == dated


def test_the_late_paid_cash_on_delivery_order_makes_one_purchase_inside_metas_window() -> (
    None
):
    """orders/create (pending) makes nothing; orders/paid makes the Purchase, dated at payment."""
    placed = shopify_order(financial_status="pending", gateway="Cash on Delivery (COD)")
    paid = shopify_order(financial_status="paid", gateway="Cash on Delivery (COD)")

    created = shopify.handle("orders/create", placed, conn(), NOW)
    [event] = shopify.handle("orders/paid", paid, conn(), NOW).events

    assert not created.events
    assert created.skipped is not None
    assert "not paid yet" in created.skipped
    assert event.event_id == "6200000000099"
    assert (
        check_event_time(event.event_time, NOW, action_source=event.action_source)
        is None
    )


def test_a_woocommerce_purchase_is_dated_at_date_paid_gmt() -> None:
    """The same rule on WooCommerce: placed 9 days ago, paid 2 minutes ago."""
    order: dict[str, Any] = json.loads(
        (FIXTURES / "woocommerce" / "order-processing.json").read_text()
    )
    fmt = "%Y-%m-%dT%H:%M:%S"
    order.update(
        date_created_gmt=PLACED.strftime(fmt),
        date_paid_gmt=(NOW - timedelta(minutes=2)).strftime(fmt),
        date_modified_gmt=(NOW - timedelta(minutes=2)).strftime(fmt),
    )
    [event] = woocommerce.handle(
        "order.updated", order, conn("woocommerce"), NOW
    ).events
    assert event.event_time == NOW - timedelta(minutes=2)


@pytest.mark.parametrize(
    ("age", "source", "kind"),
    [
        pytest.param(timedelta(days=6), "website", None, id="website-6-days"),
        pytest.param(timedelta(days=8), "website", "too_old", id="website-8-days"),
        pytest.param(timedelta(days=8), "physical_store", None, id="store-8-days"),
        pytest.param(timedelta(days=61), "physical_store", None, id="store-61-days"),
        pytest.param(
            timedelta(days=63), "physical_store", "too_old", id="store-63-days"
        ),
        pytest.param(timedelta(days=8), None, "too_old", id="unknown-source-8-days"),
    ],
)
def test_metas_window_is_7_days_and_62_for_physical_store_events(
    age: timedelta, source: str | None, kind: str | None
) -> None:
    verdict = check_event_time(NOW - age, NOW, action_source=source)
    assert (verdict.kind if verdict else None) == kind


def test_a_missed_window_is_explained_in_the_store_owners_words() -> None:
    verdict = check_event_time(NOW - timedelta(days=9), NOW, action_source="website")
    assert verdict is not None
    assert verdict.reason.startswith(
        f"this conversion happened on {NOW - timedelta(days=9):%Y-%m-%d}"
    )
    assert "Meta only accepts conversions from the last 7 days" in verdict.reason
    assert "event_time" not in verdict.reason


# -- connecting a local WooCommerce store by hand (development) ------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:8081/shop", "http://wp.test"]
)
def test_connections_add_woocommerce_accepts_local_stores_only_in_development(
    url: str, settings: Settings, runtime: Any
) -> None:
    env = {
        "DATABASE_URL": settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": ",".join(settings.encryption_keys),
        "SECRET_KEY": "x",
        "CONNECTOR_INSTANCE_PATH": str(settings.instance_path),
    }
    args = ["connections", "add", "woocommerce", "--store-url", url]
    refused = CliRunner().invoke(cli, args, env=env)
    accepted = CliRunner().invoke(
        cli, args, env={**env, "WOOCOMMERCE_ALLOW_INSECURE_URLS": "1"}
    )
    assert refused.exit_code == 2
    assert accepted.exit_code == 0, accepted.output
    assert f"connected woocommerce store {url}" in accepted.output
