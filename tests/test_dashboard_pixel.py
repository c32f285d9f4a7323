"""The pixel code the dashboard hands out: its eventIDs equal our server events' event_ids.

The Shopify custom pixel runs in Node against Web Pixels events shaped as Shopify's
reference documents them; the WooCommerce plugin file is linted with ``php -l``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.shopify import adapter as shopify
from connector.platform import ConnectionInfo
from connector.web.dashboard_views import shopify_custom_pixel, woocommerce_plugin
from tests.conftest import FIXTURES, fixture_bytes

PIXEL = "1234567890"
PIXELS = FIXTURES / "shopify" / "web_pixels"
NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def server_event_id(topic: str, fixture: str) -> str:
    """The event_id the connector sends for a recorded Shopify webhook."""
    info = ConnectionInfo(id="c1", platform="shopify", store="jsmith.myshopify.com")
    payload = json.loads(fixture_bytes(f"shopify/{fixture}"))
    [event] = shopify.handle(topic, payload, info, NOW).events
    return event.event_id


def run_pixel(tmp_path: Path, *events: Path) -> list[list[Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    code = tmp_path / "pixel.js"
    code.write_text(shopify_custom_pixel(PIXEL))
    out = subprocess.run(
        [node, str(PIXELS / "harness.js"), str(code), *map(str, events)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    calls: list[list[Any]] = json.loads(out.stdout)
    return calls


def test_pixel_event_ids_equal_the_server_events(tmp_path: Path) -> None:
    """InitiateCheckout carries the checkout token, Purchase the order id, as our server does."""
    calls = run_pixel(
        tmp_path, PIXELS / "checkout_started.json", PIXELS / "checkout_completed.json"
    )
    assert ["init", PIXEL] == calls[0]
    tracked = [(c[1], c[3]["eventID"]) for c in calls if c[0] == "track"]
    assert [
        ("InitiateCheckout", server_event_id("checkouts/create", "checkout.json")),
        ("Purchase", server_event_id("orders/paid", "order.json")),
    ] == tracked
    purchase = calls[-1][2]
    assert {"value": 598.94, "currency": "USD"} == {
        k: purchase[k] for k in ("value", "currency")
    }
    assert ["39072856", "49148385", "457924702"] == [
        c["id"] for c in purchase["contents"]
    ]


@pytest.mark.parametrize(
    "order_id",
    [
        pytest.param("450789469", id="numeric"),
        pytest.param("gid://shopify/OrderIdentity/450789469", id="global-id"),
    ],
)
def test_an_order_global_id_still_gives_the_numeric_event_id(
    tmp_path: Path, order_id: str
) -> None:
    """Whichever form the order id takes, Meta sees the number the server sends."""
    event = json.loads((PIXELS / "checkout_completed.json").read_text())
    event["data"]["checkout"]["order"]["id"] = order_id
    path = tmp_path / "completed.json"
    path.write_text(json.dumps(event))
    [_, purchase] = run_pixel(tmp_path, path)
    assert "450789469" == purchase[3]["eventID"]


def test_a_checkout_without_an_order_sends_no_purchase(tmp_path: Path) -> None:
    """No order id, no Purchase: an eventID Meta could not match would double count."""
    event = json.loads((PIXELS / "checkout_completed.json").read_text())
    event["data"]["checkout"]["order"] = None
    path = tmp_path / "completed.json"
    path.write_text(json.dumps(event))
    assert [["init", PIXEL]] == run_pixel(tmp_path, path)


def test_the_woocommerce_plugin_is_valid_php(tmp_path: Path) -> None:
    """`php -l` accepts the plugin file with a pixel id filled in."""
    php = shutil.which("php")
    if php is None:
        pytest.skip("php is not installed (apt-get install php-cli; CI installs it)")
    plugin = tmp_path / "meta-pixel-dedup.php"
    plugin.write_text(woocommerce_plugin(PIXEL))
    out = subprocess.run(
        [php, "-l", str(plugin)], capture_output=True, text=True, timeout=30
    )
    assert 0 == out.returncode, out.stdout + out.stderr
    assert "No syntax errors" in out.stdout
    source = plugin.read_text()
    assert f"const META_DEDUP_PIXEL_ID = '{PIXEL}';" in source
    # the id the WooCommerce translation sends: _meta_event_id, else the order id
    assert "get_meta( '_meta_event_id' )" in source
