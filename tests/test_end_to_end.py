"""End to end, black box: the `connector` CLI and web server as processes, a fake Graph API.

Webhooks are real recorded payloads, POSTed over HTTP to `connector serve` and signed as
Shopify and WooCommerce sign them; `connector worker --drain` sends them to a local fake of
Meta's Graph API, whose record of what it received is what the tests check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine

from connector.store.models import Base
from tests.conftest import fixture_bytes, migrate_url
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer
from tests.lifecycle_orders import shopify_order, woo_order

SHOPIFY_SECRET = "shpss_e2e_app_secret"
API_VERSION = "v25.0"
#: every subprocess is bounded: a hung command fails the test instead of the run
COMMAND_TIMEOUT = 60
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


# -- harness -------------------------------------------------------------------------------


@dataclass
class Graph:
    """The fake Graph API on a loopback port, and every path and query string it was sent."""

    state: FakeGraph
    url: str
    requests: list[tuple[str, str]]

    def received(self, pixel_id: str) -> list[tuple[str, str | None]]:
        """(event_name, event_id) of every event Meta counted for this pixel."""
        with self.state.lock:
            return [
                (r.event_name, r.event_id)
                for r in self.state.received
                if r.pixel_id == pixel_id
            ]


@pytest.fixture(scope="module")
def graph() -> Iterator[Graph]:
    """The fake Graph API, keeping bodies, with a record of paths and query strings."""
    state = FakeGraph()
    state.keep_bodies = True
    app = make_app(state)
    seen: list[tuple[str, str]] = []
    inner = app.wsgi_app

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append((environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        return inner(environ, start_response)

    app.wsgi_app = recording  # type: ignore[method-assign]
    server = LiveServer(app).start()
    try:
        yield Graph(state=state, url=server.url, requests=seen)
    finally:
        server.stop()


def _wipe(database_url: str) -> None:
    engine = create_engine(migrate_url(database_url))
    try:
        with engine.begin() as conn:
            for tbl in reversed(Base.metadata.sorted_tables):
                conn.execute(tbl.delete())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def env(
    database_url: str, graph: Graph, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The environment every `connector` process of this module runs with."""
    _wipe(database_url)
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOPIFY_", "META_", "CONNECTOR_"))
    }
    environ.update(
        DATABASE_URL=database_url,
        CONNECTOR_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECRET_KEY="e2e-secret-key",
        CONNECTOR_INSTANCE_PATH=str(tmp_path_factory.mktemp("instance")),
        SHOPIFY_API_SECRET=SHOPIFY_SECRET,
        META_GRAPH_URL=graph.url,
        META_API_VERSION=API_VERSION,
        PYTHONUNBUFFERED="1",
    )
    yield environ
    _wipe(database_url)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def connector(env: dict[str, str]) -> Run:
    """Run `connector ARGS...` as a process; fails the test on an unexpected exit status."""

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "connector.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert proc.returncode == expect, (
            f"connector {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return proc

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def web(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`connector serve --no-worker` as a process; its base URL once /healthz answers 200."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector.cli",
                "serve",
                "--no-worker",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"connector serve exited:\n{log.read_text()}")
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"connector serve never became healthy:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def connection_id(proc: subprocess.CompletedProcess[str]) -> str:
    """The new connection's id: alone on the last line of standard output."""
    return proc.stdout.strip().splitlines()[-1].strip()


def fresh(relpath: str, *, age: timedelta = timedelta(hours=30)) -> bytes:
    """A recorded payload with every timestamp moved to ``age`` ago, all else byte for byte.

    The recordings are years old and Meta refuses events older than 7 days.
    """
    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S").encode()
    return _TIMESTAMP.sub(stamp, fixture_bytes(relpath))


def shopify_headers(
    topic: str, body: bytes, shop: str, *, webhook_id: str, secret: str = SHOPIFY_SECRET
) -> dict[str, str]:
    """The headers Shopify sends: base64 HMAC-SHA256 of the raw body, keyed by the secret."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-API-Version": "2026-07",
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
    }


def post_shopify(
    web: str,
    topic: str,
    body: bytes,
    shop: str,
    *,
    webhook_id: str | None = None,
    secret: str = SHOPIFY_SECRET,
) -> requests.Response:
    headers = shopify_headers(
        topic, body, shop, webhook_id=webhook_id or str(uuid.uuid4()), secret=secret
    )
    return requests.post(
        f"{web}/webhooks/shopify", data=body, headers=headers, timeout=30
    )


def woo_signature(body: bytes, secret: str) -> str:
    """WooCommerce's X-WC-Webhook-Signature: base64 HMAC-SHA256 of the body under the secret."""
    return base64.b64encode(
        hmac.new(secret.encode(), body, hashlib.sha256).digest()
    ).decode()


def post_woo(
    web: str,
    conn_id: str,
    topic: str,
    body: bytes,
    secret: str,
    *,
    delivery_id: str | None = None,
) -> requests.Response:
    resource, _, event = topic.partition(".")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.4.0 Hookshot (WordPress/6.7)",
        "X-WC-Webhook-Source": "https://woo.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": woo_signature(body, secret),
        "X-WC-Webhook-ID": "41",
        "X-WC-Webhook-Delivery-ID": delivery_id or uuid.uuid4().hex,
    }
    return requests.post(
        f"{web}/webhooks/woocommerce/{conn_id}", data=body, headers=headers, timeout=30
    )


def drain(connector: Run) -> dict[str, Any]:
    """`connector worker --drain`; the counts it prints on its last line."""
    proc = connector("worker", "--drain")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def events_list(connector: Run, conn_id: str) -> list[dict[str, Any]]:
    proc = connector("events", "list", "--connection", conn_id, "--json")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def connection_row(connector: Run, conn_id: str) -> dict[str, Any]:
    rows = json.loads(connector("connections", "list", "--json").stdout)
    [row] = [r for r in rows if r["id"] == conn_id]
    return dict(row)


def sent_events(
    graph: Graph, *tokens: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request body, event) for every event the fake accepted under these access tokens.

    Each test gives its connections tokens of their own, so the token tells whose a body is.
    """
    with graph.state.lock:
        bodies = list(graph.state.bodies)
    return [
        (b, e) for b in bodies if b.get("access_token") in tokens for e in b["data"]
    ]


# -- Shopify -------------------------------------------------------------------------------


def test_shopify_order_and_checkout_reach_meta_once(
    connector: Run, web: str, graph: Graph
) -> None:
    """A Shopify order delivered on three topics and redelivered reaches Meta as one Purchase."""
    shop = "e2e-once.myshopify.com"
    pixel, token = "1110000001", "tok-shopify-once"
    graph.state.tokens.add(token)
    added = connector(
        "connections",
        "add",
        "shopify",
        "--shop",
        shop,
        "--pixel-id",
        pixel,
        "--meta-token",
        token,
        "--test-event-code",
        "TEST111",
    )
    conn_id = connection_id(added)
    assert conn_id
    assert " " not in conn_id

    order = fresh("shopify/order_storefront.json")
    checkout = fresh("shopify/checkout.json")
    first = post_shopify(web, "orders/create", order, shop, webhook_id="wh-create-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"status": "accepted", "new_events": 1}
    again = post_shopify(web, "orders/create", order, shop, webhook_id="wh-create-1")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["new_events"] == 0
    paid = post_shopify(web, "orders/paid", order, shop, webhook_id="wh-paid-1")
    assert paid.status_code == 200
    assert paid.json()["new_events"] == 0
    started = post_shopify(web, "checkouts/create", checkout, shop)
    assert started.status_code == 200
    assert started.json()["new_events"] == 1

    stats = drain(connector)
    assert stats["sent"] >= 2
    assert sorted(graph.received(pixel)) == [
        ("InitiateCheckout", "2a1ace52255252df566af0faaedfbfa7"),
        ("Purchase", "5012345678901234567"),
    ]
    # a late redelivery and a second drain change nothing
    late = post_shopify(web, "orders/paid", order, shop, webhook_id="wh-paid-1")
    assert late.json()["status"] == "duplicate"
    drain(connector)
    assert len(graph.received(pixel)) == 2

    sent = {e["event_name"]: (b, e) for b, e in sent_events(graph, token)}
    body, purchase = sent["Purchase"]
    assert body["test_event_code"] == "TEST111"
    assert body["access_token"] == token
    assert purchase["event_id"] == "5012345678901234567"
    assert purchase["action_source"] == "website"
    user = purchase["user_data"]
    email_hash = hashlib.sha256(b"bob.norman@mail.example.com").hexdigest()
    assert user["em"] in (email_hash, [email_hash])
    for key in ("ph", "fn", "ln", "external_id"):
        values = user[key] if isinstance(user[key], list) else [user[key]]
        assert values, key
        assert all(SHA256_HEX.fullmatch(v) for v in values), key
    assert user["client_ip_address"] == "81.2.69.142"
    assert user["client_user_agent"].startswith("Mozilla/5.0")
    assert "bob" not in json.dumps(purchase).lower()
    for path, query in graph.requests:
        assert path.startswith(f"/{API_VERSION}/")
        assert "access_token" not in query

    rows = events_list(connector, conn_id)
    assert sorted((r["event_name"], r["status"], r["send_count"]) for r in rows) == [
        ("InitiateCheckout", "sent", 1),
        ("Purchase", "sent", 1),
    ]
    [row] = [r for r in rows if r["event_name"] == "Purchase"]
    shown = json.loads(connector("events", "show", str(row["id"])).stdout)
    assert shown["status"] == "sent"
    assert shown["event_id"] == "5012345678901234567"
    assert shown["events_received"] is not None
    assert shown["fbtrace_id"]
    assert shown["sent_at"]
    assert "bob.norman" not in json.dumps(shown)


def test_shopify_forged_delivery_is_refused_and_stores_nothing(
    connector: Run, web: str
) -> None:
    """A delivery signed with the wrong secret gets 401 and leaves no outbox row."""
    shop = "e2e-forged.myshopify.com"
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            shop,
            "--pixel-id",
            "1110000002",
            "--meta-token",
            "tok-forged",
        )
    )
    order = fresh("shopify/order_storefront.json")
    forged = post_shopify(web, "orders/paid", order, shop, secret="not-the-secret")
    assert forged.status_code == 401
    tampered_headers = shopify_headers(
        "orders/paid", order, shop, webhook_id=str(uuid.uuid4())
    )
    tampered = requests.post(
        f"{web}/webhooks/shopify",
        data=order.replace(b"bob.norman", b"eve.norman"),
        headers=tampered_headers,
        timeout=30,
    )
    assert tampered.status_code == 401
    assert events_list(connector, conn_id) == []


def test_shopify_revoked_token_holds_until_reconnected(
    connector: Run, web: str, graph: Graph
) -> None:
    """Meta's 190 holds the events and flags the connection; a new token sends them once."""
    shop = "e2e-revoked.myshopify.com"
    pixel, old, new = "1110000003", "tok-revoked-old", "tok-revoked-new"
    graph.state.tokens.add(old)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            shop,
            "--pixel-id",
            pixel,
            "--meta-token",
            old,
            "--test-event-code",
            "TEST333",
        )
    )
    answer = post_shopify(
        web, "orders/paid", fresh("shopify/order_storefront.json"), shop
    )
    assert answer.json() == {"status": "accepted", "new_events": 1}
    graph.state.revoke(old)

    drain(connector)
    assert graph.received(pixel) == []
    [row] = events_list(connector, conn_id)
    assert row["status"] == "held"
    assert row["last_error"]
    assert connection_row(connector, conn_id)["status"] == "needs_reconnect"
    drain(connector)  # held rows stay held: nothing is sent with the dead token
    assert graph.received(pixel) == []

    graph.state.tokens.add(new)
    again = connector(
        "connections", "add", "shopify", "--shop", shop, "--meta-token", new
    )
    assert connection_id(again) == conn_id
    assert connection_row(connector, conn_id)["status"] == "active"
    drain(connector)
    drain(connector)
    assert graph.received(pixel) == [("Purchase", "5012345678901234567")]
    [(body, _)] = sent_events(graph, old, new)
    assert body["access_token"] == new
    assert body["test_event_code"] == "TEST333"
    [row] = events_list(connector, conn_id)
    assert (row["status"], row["send_count"]) == ("sent", 1)


def test_shopify_concurrent_workers_send_each_order_once(
    connector: Run, web: str, graph: Graph, env: dict[str, str]
) -> None:
    """Thirty orders drained by three worker processes at once reach Meta exactly once each."""
    shop = "e2e-many.myshopify.com"
    pixel, token = "1110000004", "tok-shopify-many"
    graph.state.tokens.add(token)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            shop,
            "--pixel-id",
            pixel,
            "--meta-token",
            token,
        )
    )
    base = fresh("shopify/order_storefront.json")
    order_ids = [str(6_000_000_000_000_000_000 + i) for i in range(30)]
    for order_id in order_ids:
        body = base.replace(b"5012345678901234567", order_id.encode())
        answer = post_shopify(web, "orders/paid", body, shop)
        assert answer.json() == {"status": "accepted", "new_events": 1}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector.cli",
                "worker",
                "--drain",
                "--batch-size",
                "4",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0, err
    drain(connector)
    received = graph.received(pixel)
    assert sorted(received) == sorted(("Purchase", i) for i in order_ids)
    rows = events_list(connector, conn_id)
    assert len(rows) == 30
    assert {(r["status"], r["send_count"]) for r in rows} == {("sent", 1)}


def test_shopify_recording_too_old_for_meta_is_dead_lettered_visibly(
    connector: Run, web: str, graph: Graph
) -> None:
    """An order older than Meta's 7 days is dead-lettered with a reason and never replayed."""
    shop = "e2e-old.myshopify.com"
    pixel, token = "1110000005", "tok-shopify-old"
    graph.state.tokens.add(token)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            shop,
            "--pixel-id",
            pixel,
            "--meta-token",
            token,
        )
    )
    recorded = fixture_bytes("shopify/order_storefront.json")
    assert post_shopify(web, "orders/paid", recorded, shop).json()["new_events"] == 1
    assert drain(connector)["dead"] == 1
    [row] = json.loads(
        connector(
            "events", "list", "--connection", conn_id, "--status", "dead", "--json"
        ).stdout
    )
    assert row["last_error"].startswith("too_old")
    replay = connector("events", "replay", str(row["id"]))
    assert "0 event(s) back to pending" in replay.stdout
    assert "7-day" in replay.stderr
    drain(connector)
    assert graph.received(pixel) == []
    assert connector("events", "show", "999999999", expect=1).stderr


# -- WooCommerce ---------------------------------------------------------------------------


def test_woocommerce_checkout_and_order_reach_meta_once(
    connector: Run, web: str, graph: Graph
) -> None:
    """A WooCommerce draft checkout and an order redelivered and updated reach Meta once each."""
    secret = "wc-e2e-secret"
    pixel, token = "2220000001", "tok-woo-once"
    graph.state.tokens.add(token)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "woocommerce",
            "--store-url",
            "https://woo-once.example",
            "--webhook-secret",
            secret,
            "--pixel-id",
            pixel,
            "--meta-token",
            token,
            "--test-event-code",
            "TEST222",
        )
    )
    ping = requests.post(
        f"{web}/webhooks/woocommerce/{conn_id}",
        data=b"webhook_id=41",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert ping.status_code == 200

    draft = fresh("woocommerce/checkout-draft.json", age=timedelta(hours=31))
    processing = fresh("woocommerce/order-processing.json")
    completed = fresh("woocommerce/order-completed.json")
    drafted = post_woo(web, conn_id, "order.created", draft, secret)
    assert drafted.status_code == 200, drafted.text
    assert drafted.json()["new_events"] == 1
    created = post_woo(web, conn_id, "order.updated", processing, secret)
    assert created.json() == {"status": "accepted", "new_events": 1}
    redelivered = post_woo(web, conn_id, "order.updated", processing, secret)
    assert redelivered.status_code == 200
    assert redelivered.json()["new_events"] == 0
    updated = post_woo(web, conn_id, "order.updated", completed, secret)
    assert updated.status_code == 200
    assert updated.json()["new_events"] == 0
    forged = post_woo(web, conn_id, "order.updated", processing, "wrong-secret")
    assert forged.status_code == 401

    drain(connector)
    drain(connector)
    assert sorted(graph.received(pixel)) == [
        ("InitiateCheckout", "wc_checkout_727"),
        ("Purchase", "727"),
    ]
    sent = {e["event_name"]: (b, e) for b, e in sent_events(graph, token)}
    body, purchase = sent["Purchase"]
    assert body["test_event_code"] == "TEST222"
    assert body["access_token"] == token
    email_hash = hashlib.sha256(b"john.doe@example.com").hexdigest()
    assert purchase["user_data"]["em"] in (email_hash, [email_hash])
    # The recorded order's 203.0.113.7 is a documentation address: never a shopper's.
    assert "client_ip_address" not in purchase["user_data"]
    assert purchase["action_source"] == "website"
    assert purchase["event_source_url"].startswith("https://woo-once.example")
    rows = events_list(connector, conn_id)
    assert sorted((r["event_name"], r["status"], r["send_count"]) for r in rows) == [
        ("InitiateCheckout", "sent", 1),
        ("Purchase", "sent", 1),
    ]


def test_woocommerce_delivery_for_an_unknown_connection_is_refused(
    connector: Run, web: str
) -> None:
    """A signed WooCommerce delivery to a connection id that does not exist is not accepted."""
    body = fresh("woocommerce/order-processing.json")
    answer = post_woo(web, "no-such-connection", "order.updated", body, "any-secret")
    assert answer.status_code in (401, 404)


# -- test events ---------------------------------------------------------------------------


def test_send_test_event_uses_the_connection_test_code(
    connector: Run, graph: Graph
) -> None:
    """`send-test-event` sends one event with the test_event_code and prints Meta's answer."""
    pixel, token = "3330000001", "tok-test-event"
    graph.state.tokens.add(token)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "woocommerce",
            "--store-url",
            "https://woo-test.example",
            "--webhook-secret",
            "s",
            "--pixel-id",
            pixel,
            "--meta-token",
            token,
            "--test-event-code",
            "TEST444",
        )
    )
    proc = connector("send-test-event", "--connection", conn_id)
    answer = json.loads(proc.stdout)
    assert answer["events_received"] == 1
    assert answer["test_event_code"] == "TEST444"
    assert graph.received(pixel) == [("Purchase", answer["event_id"])]
    [(body, event)] = sent_events(graph, token)
    assert body["test_event_code"] == "TEST444"
    assert event["event_name"] == "Purchase"

    live_id = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            "e2e-live.myshopify.com",
            "--pixel-id",
            "3330000002",
            "--meta-token",
            token,
        )
    )
    refused = connector("send-test-event", "--connection", live_id, expect=1)
    assert "test_event_code" in refused.stderr
    assert graph.received("3330000002") == []


def test_cli_options_are_documented(connector: Run) -> None:
    """`connector --help` lists the commands and `events list --help` its filters."""
    top = connector("--help").stdout
    for name in (
        "serve",
        "worker",
        "db",
        "connections",
        "events",
        "keys",
        "send-test-event",
    ):
        assert name in top
    listed = connector("events", "list", "--help").stdout
    for option in ("--status", "--connection", "--limit", "--json"):
        assert option in listed


def test_a_pixel_given_later_releases_the_events_held_for_lack_of_one(
    connector: Any, web: Any, graph: Any
) -> None:
    """`connections add --pixel-id` sends the events held while the pixel was missing."""
    graph.state.tokens.add("tok-pix-later")
    store = "https://pixel-later.example"
    cid = connection_id(
        connector(
            "connections",
            "add",
            "woocommerce",
            "--store-url",
            store,
            "--webhook-secret",
            "s3",
            "--meta-token",
            "tok-pix-later",
        )
    )
    rv = post_woo(
        web, cid, "order.updated", fresh("woocommerce/order-processing.json"), "s3"
    )
    assert 1 == rv.json()["new_events"]
    drain(connector)
    assert "held" == events_list(connector, cid)[0]["status"]
    connector(
        "connections",
        "add",
        "woocommerce",
        "--store-url",
        store,
        "--pixel-id",
        "7770000001",
    )
    drain(connector)
    assert [("Purchase", "727")] == graph.received("7770000001")


def test_re_adding_an_uninstalled_shop_clears_the_uninstall_and_sends_what_it_held(
    connector: Any, web: Any, graph: Any
) -> None:
    """Re-adding an uninstalled shop makes it active again and sends the events it held."""
    shop = "reinstall.myshopify.com"
    graph.state.tokens.add("tok-reinstall")
    cid = connection_id(
        connector(
            "connections",
            "add",
            "shopify",
            "--shop",
            shop,
            "--pixel-id",
            "7770000002",
            "--meta-token",
            "tok-reinstall",
        )
    )
    order = fresh("shopify/order_storefront.json")
    assert 1 == post_shopify(web, "orders/paid", order, shop).json()["new_events"]
    uninstall = fresh("shopify/app_uninstalled.json")
    assert 200 == post_shopify(web, "app/uninstalled", uninstall, shop).status_code
    connector(
        "connections", "add", "shopify", "--shop", shop, "--access-token", "shpat_new"
    )
    row = connection_row(connector, cid)
    assert ("active", None) == (row["status"], row["status_reason"])
    drain(connector)
    assert [("Purchase", "5012345678901234567")] == graph.received("7770000002")


# -- order lifecycles ----------------------------------------------------------------------


def fresh_json(
    payload: dict[str, Any], *, age: timedelta = timedelta(hours=30)
) -> bytes:
    """A built payload serialized, with every timestamp moved to ``age`` ago (as ``fresh``)."""
    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S").encode()
    return _TIMESTAMP.sub(stamp, json.dumps(payload).encode())


def meta_received(graph: Graph, token: str) -> dict[str, dict[str, Any]]:
    """event_id -> the event Meta received under this token; each id must come once."""
    events = [e for _, e in sent_events(graph, token)]
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), ids
    return {e["event_id"]: e for e in events}


def test_shopify_renewals_edits_and_meta_channel_reach_meta_as_the_rules_say(
    connector: Run, web: str, graph: Graph
) -> None:
    """A subscription and two renewals, an edited COD order, and an order Meta already has."""
    shop = "e2e-lifecycle.myshopify.com"
    pixel, token = "1110000016", "tok-shopify-lifecycle"
    graph.state.tokens.add(token)
    connector(
        "connections",
        "add",
        "shopify",
        "--shop",
        shop,
        "--pixel-id",
        pixel,
        "--meta-token",
        token,
        "--test-event-code",
        "TEST16",
    )
    line = (1, 11, 111, 1, 1, "30.00")
    parent = shopify_order(6001, lines=[line], total="30.00")
    renewals = [
        shopify_order(
            n,
            lines=[line],
            total="30.00",
            source_name="subscription_contract_checkout_one",
            browser=False,
        )
        for n in (6102, 6203)
    ]
    for order in (parent, *renewals):
        rv = post_shopify(web, "orders/paid", fresh_json(order), shop)
        assert {"status": "accepted", "new_events": 1} == rv.json()
    # cash on delivery: mug 60 + tee 40; created unpaid, the tee removed, then marked paid
    cod = shopify_order(
        6300,
        lines=[(1, 11, 111, 1, 1, "60.00"), (2, 22, 222, 1, 1, "40.00")],
        total="100.00",
        financial_status="pending",
    )
    created = post_shopify(web, "orders/create", fresh_json(cod), shop)
    assert {"status": "skipped", "new_events": 0} == created.json()
    cod["line_items"][1]["current_quantity"] = 0
    cod.update(
        financial_status="paid",
        current_total_price="60.00",
        current_total_price_set={
            k: {"amount": "60.00", "currency_code": "USD"}
            for k in ("shop_money", "presentment_money")
        },
    )
    paid = post_shopify(web, "orders/paid", fresh_json(cod), shop)
    assert {"status": "accepted", "new_events": 1} == paid.json()
    meta_channel = shopify_order(
        6400, lines=[line], total="30.00", source_name="2329312", browser=False
    )
    known = post_shopify(web, "orders/paid", fresh_json(meta_channel), shop)
    assert {"status": "skipped", "new_events": 0} == known.json()

    drain(connector)
    assert sorted(graph.received(pixel)) == [
        ("Purchase", "6001"),
        ("Purchase", "6102"),
        ("Purchase", "6203"),
        ("Purchase", "6300"),
    ]
    got = meta_received(graph, token)
    assert "website" == got["6001"]["action_source"]
    for renewal in ("6102", "6203"):
        assert "system_generated" == got[renewal]["action_source"]
        assert 30.0 == got[renewal]["custom_data"]["value"]
    edited = got["6300"]["custom_data"]
    assert 60.0 == edited["value"]
    assert [{"id": "111", "quantity": 1, "item_price": 60.0}] == edited["contents"]
    assert 1 == edited["num_items"]


def test_woocommerce_renewals_and_dokan_sub_orders_reach_meta_as_the_rules_say(
    connector: Run, web: str, graph: Graph
) -> None:
    """A subscription parent with two renewals copying its event id; a Dokan split checkout."""
    secret = "wc-e2e-lifecycle"
    pixel, token = "2220000016", "tok-woo-lifecycle"
    graph.state.tokens.add(token)
    conn_id = connection_id(
        connector(
            "connections",
            "add",
            "woocommerce",
            "--store-url",
            "https://woo-lifecycle.example",
            "--webhook-secret",
            secret,
            "--pixel-id",
            pixel,
            "--meta-token",
            token,
            "--test-event-code",
            "TEST16",
        )
    )
    inherited = {"_meta_event_id": "wc-pixel-5001-ab12"}
    subscription = [
        woo_order(5001, lines=[(93, 0, 1, "20.00")], total="20.00", meta=inherited),
        *(
            woo_order(
                n,
                lines=[(93, 0, 1, "20.00")],
                total="20.00",
                created_via="subscription",
                meta=inherited,
            )
            for n in (5102, 5203)
        ),
    ]
    for order in subscription:
        rv = post_woo(web, conn_id, "order.created", fresh_json(order), secret)
        assert {"status": "accepted", "new_events": 1} == rv.json()
    dokan_parent = woo_order(
        7000, lines=[(301, 0, 1, "45.00"), (302, 0, 1, "50.00")], total="95.00"
    )
    sub_orders = [
        woo_order(
            n,
            lines=[(product, 0, 1, price)],
            total=price,
            created_via="dokan",
            parent_id=7000,
        )
        for n, product, price in ((7001, 301, "45.00"), (7002, 302, "50.00"))
    ]
    rv = post_woo(web, conn_id, "order.created", fresh_json(dokan_parent), secret)
    assert 1 == rv.json()["new_events"]
    for sub in sub_orders:
        rv = post_woo(web, conn_id, "order.created", fresh_json(sub), secret)
        assert {"status": "skipped", "new_events": 0} == rv.json()

    drain(connector)
    assert sorted(graph.received(pixel)) == [
        ("Purchase", "5102"),
        ("Purchase", "5203"),
        ("Purchase", "7000"),
        ("Purchase", "wc-pixel-5001-ab12"),
    ]
    got = meta_received(graph, token)
    assert 95.0 == got["7000"]["custom_data"]["value"]
    assert {"5001", "5102", "5203"} == {
        got[i]["custom_data"]["order_id"]
        for i in ("wc-pixel-5001-ab12", "5102", "5203")
    }
    for renewal in ("5102", "5203"):
        assert "system_generated" == got[renewal]["action_source"]
        assert 20.0 == got[renewal]["custom_data"]["value"]
