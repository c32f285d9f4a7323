"""Connecting a store against a fake WooCommerce on loopback: keys, webhooks, return page."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from sqlalchemy import text

from adapters.woocommerce import connect
from adapters.woocommerce.rest import WooCommerceClient
from connector.crypto import keyring
from connector.errors import PlatformError
from connector.outbound import AddressPolicy
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection, Event, utcnow
from connector.web import create_app
from tests.conftest import fixture_bytes
from tests.fakes.server import serve
from tests.fakes.woocommerce import FakeWooCommerce

APPROVE = re.compile(r"id='approve' href='([^']+)'")
#: the fakes listen on 127.0.0.1, which only the development switch admits
LOOPBACK = AddressPolicy(allow_loopback=True)


@dataclass
class Stack:
    fake: FakeWooCommerce
    store_url: str
    app_url: str
    runtime: Runtime


@pytest.fixture
def stack(runtime: Runtime) -> Iterator[Stack]:
    """The connector and a fake store, each a real HTTP server on loopback."""
    holder: dict[str, Any] = {}

    def connector_app(environ: Any, start_response: Any) -> Any:
        return holder["app"](environ, start_response)

    # WooCommerce insists on an https callback; the loopback connector speaks http.
    fake = FakeWooCommerce(require_https_callback=False)
    with serve(connector_app) as app_server, serve(fake.app) as store_server:
        rt = replace(
            runtime,
            settings=replace(
                runtime.settings,
                app_url=app_server.url,
                woocommerce_allow_insecure=True,
            ),
        )
        holder["app"] = create_app(runtime=rt)
        yield Stack(fake, store_server.url, app_server.url, rt)


def run_connect_flow(stack: Stack, browser: requests.Session) -> requests.Response:
    """What a merchant does: start, approve on the store, land on the return page."""
    grant_page = browser.get(
        f"{stack.app_url}/woocommerce/connect",
        params={"store_url": stack.store_url},
        timeout=30,
    )
    assert 200 == grant_page.status_code
    match = APPROVE.search(grant_page.text)
    assert match is not None
    return browser.get(urljoin(grant_page.url, match.group(1)), timeout=60)


def wait_for_webhooks(runtime: Runtime, connection_id: str) -> dict[str, Any]:
    """The setup runs after the callback's answer; wait until it has settled."""
    deadline = time.monotonic() + 30
    while True:
        with runtime.sessions() as session:
            conn = session.get(Connection, connection_id)
            assert conn is not None
            state = dict((conn.settings or {}).get("webhooks") or {})
        if state.get("status") in ("ready", "failed") and "lease_until" not in state:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"webhook setup did not settle: {state}")
        time.sleep(0.05)


def only_connection(runtime: Runtime) -> Connection:
    with runtime.sessions() as session:
        (conn,) = queries.list_connections(session)
        return conn


def test_connect_stores_encrypted_keys_and_three_webhooks_also_after_reconnect(
    stack: Stack, database_url: str
) -> None:
    """Approving twice leaves one connection, its keys encrypted, and exactly three webhooks."""
    for attempt in (1, 2):
        browser = requests.Session()
        landing = run_connect_flow(stack, browser)
        assert 200 == landing.status_code
        assert "Your WooCommerce store is connected" in landing.text
        conn = only_connection(stack.runtime)
        state = wait_for_webhooks(stack.runtime, conn.id)
        assert "ready" == state["status"], state
        url = connect.delivery_url(stack.app_url, conn.id)
        hooks = stack.fake.webhooks_for(url)
        assert ["order.created", "order.deleted", "order.updated"] == sorted(
            h["topic"] for h in hooks
        ), f"attempt {attempt}"
        assert 3 == len(stack.fake.webhooks)
        assert {conn.webhook_secret} == {h["secret"] for h in hooks}
        assert {"active"} == {h["status"] for h in hooks}
    # WooCommerce pings each webhook it creates; the connector answered every ping 200.
    assert [200, 200, 200] == [status for _, status in stack.fake.pings]
    granted = list(stack.fake.keys.values())[-1]
    assert granted.consumer_key == conn.platform_key
    assert granted.consumer_secret == conn.platform_token
    assert conn.webhook_secret is not None
    assert re.fullmatch(r"[A-Za-z0-9]{40,}", conn.webhook_secret)
    assert all(method == "oauth1" for _, _, method in stack.fake.rest_calls)
    with stack.runtime.engine.connect() as db:
        stored = db.execute(
            text("SELECT platform_key, platform_token, webhook_secret FROM connections")
        ).one()
    for value in stored:
        assert value.startswith("gAAAA")  # a Fernet token
    secrets_ = [granted.consumer_key, granted.consumer_secret, conn.webhook_secret]
    if database_url.startswith("sqlite"):
        db_path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(
            p.read_bytes()
            for p in db_path.parent.glob(db_path.name + "*")
            if p.is_file()
        )
        for secret in secrets_:
            assert secret.encode() not in raw


def test_a_connected_store_delivers_a_purchase(stack: Stack) -> None:
    """After connecting, an order the store sends through its webhook becomes a Purchase."""
    run_connect_flow(stack, requests.Session())
    conn = only_connection(stack.runtime)
    state = wait_for_webhooks(stack.runtime, conn.id)
    rv = stack.fake.deliver(
        state["ids"]["order.updated"],
        fixture_bytes("woocommerce/order-processing.json"),
    )
    assert 200 == rv.status_code
    with stack.runtime.sessions() as session:
        (event,) = session.query(Event).all()
    assert ("Purchase", "727") == (event.event_name, event.event_id)


def test_the_return_page_links_to_meta_with_a_signed_token(stack: Stack) -> None:
    """The return page names the connection and offers a signed Connect Meta link."""
    landing = run_connect_flow(stack, requests.Session())
    conn = only_connection(stack.runtime)
    match = re.search(
        r"href='/meta/connect\?connection=([0-9a-f]+)&amp;token=([^']+)'", landing.text
    )
    assert match is not None
    assert conn.id == match.group(1)
    wait_for_webhooks(stack.runtime, conn.id)


def test_the_return_page_shows_no_admin_link_to_another_browser(stack: Stack) -> None:
    """Someone holding the return URL but not the session gets no Connect Meta link."""
    landing = run_connect_flow(stack, requests.Session())
    stranger = requests.get(landing.url, timeout=30)
    assert 400 == stranger.status_code
    assert "/meta/connect" not in stranger.text
    wait_for_webhooks(stack.runtime, only_connection(stack.runtime).id)


@pytest.mark.parametrize(
    ("user_id", "scope"),
    [
        pytest.param("forged-state", "read_write", id="forged-state"),
        pytest.param(None, "read", id="read-only-keys"),
    ],
)
def test_a_refused_callback_makes_woocommerce_delete_the_key(
    stack: Stack, user_id: str | None, scope: str
) -> None:
    """A callback the connector refuses answers non-200, so the store deletes the new key."""
    browser = requests.Session()
    start = browser.get(
        f"{stack.app_url}/woocommerce/connect",
        params={"store_url": stack.store_url},
        allow_redirects=False,
        timeout=30,
    )
    authorize = start.headers["Location"]
    if user_id is not None:
        authorize = re.sub(r"user_id=[^&]+", f"user_id={user_id}", authorize)
    authorize = authorize.replace("scope=read_write", f"scope={scope}")
    page = browser.get(authorize, timeout=30)
    match = APPROVE.search(page.text)
    assert match is not None
    denied = browser.get(urljoin(page.url, match.group(1)), timeout=60)
    assert 401 == denied.status_code
    assert [400] == stack.fake.callback_answers
    assert 1 == len(stack.fake.deleted_keys)
    assert {} == stack.fake.keys
    with stack.runtime.sessions() as session:
        assert [] == queries.list_connections(session)


def test_a_state_is_spent_by_its_first_callback(stack: Stack) -> None:
    """Replaying the keys callback with the state that was just used is refused."""
    landing = run_connect_flow(stack, requests.Session())
    conn = only_connection(stack.runtime)
    wait_for_webhooks(stack.runtime, conn.id)
    used = parse_qs(urlsplit(landing.url).query)["user_id"][0]
    rv = requests.post(
        f"{stack.app_url}/woocommerce/callback",
        json={
            "key_id": 1,
            "user_id": used,
            "consumer_key": "ck_replayed",
            "consumer_secret": "cs_replayed",
            "key_permissions": "read_write",
        },
        timeout=30,
    )
    assert 400 == rv.status_code
    assert conn.platform_key == only_connection(stack.runtime).platform_key


def test_the_worker_job_finishes_a_failed_setup(stack: Stack) -> None:
    """When the store refuses the first attempt, the periodic job completes it later."""
    with stack.runtime.sessions.begin() as session:
        conn = queries.upsert_connection(
            session,
            "woocommerce",
            stack.store_url,
            platform_key="ck_unknown",
            platform_token="cs_unknown",
            settings={"webhooks": {"status": "pending", "generation": 1}},
        )
        connection_id = conn.id
    (job,) = connect.periodic_jobs()
    job.run(stack.runtime)
    state = wait_for_webhooks(stack.runtime, connection_id)
    assert "failed" == state["status"]
    assert "Consumer key is invalid" in state["error"]
    assert {} == stack.fake.webhooks
    key = stack.fake.add_key()
    with stack.runtime.sessions.begin() as session:
        conn = queries.get_connection(session, connection_id)
        conn.platform_key, conn.platform_token = key.consumer_key, key.consumer_secret
        conn.settings = {"webhooks": {**state, "retry_at": None}}
    job.run(stack.runtime)
    assert "ready" == wait_for_webhooks(stack.runtime, connection_id)["status"]
    assert 3 == len(stack.fake.webhooks)


def test_hand_added_connections_are_left_alone(stack: Stack) -> None:
    """A store connected by hand, without the connect flow, gets no webhooks made for it."""
    key = stack.fake.add_key()
    with stack.runtime.sessions.begin() as session:
        queries.upsert_connection(
            session,
            "woocommerce",
            stack.store_url,
            platform_key=key.consumer_key,
            platform_token=key.consumer_secret,
            webhook_secret="typed-by-the-merchant",
        )
    connect.reconcile(stack.runtime)
    assert {} == stack.fake.webhooks


@pytest.mark.parametrize(
    ("secret_ok", "expected"),
    [
        pytest.param(True, None, id="right-secret"),
        pytest.param(False, "Invalid signature", id="wrong-secret"),
    ],
)
def test_oauth1_requests_are_signed_as_woocommerce_checks(
    stack: Stack, secret_ok: bool, expected: str | None
) -> None:
    """Over http the client signs with OAuth 1.0a; a wrong secret gets WooCommerce's 401."""
    key = stack.fake.add_key()
    client = WooCommerceClient(
        stack.store_url,
        key.consumer_key,
        key.consumer_secret if secret_ok else "cs_wrong",
        policy=LOOPBACK,
    )
    assert client.uses_oauth1
    if expected is None:
        assert [] == client.list_webhooks()
        return
    with pytest.raises(PlatformError, match=expected) as info:
        client.list_webhooks()
    assert 401 == info.value.status


@pytest.mark.parametrize(
    ("password_ok", "status"),
    [
        pytest.param(True, None, id="right-secret"),
        pytest.param(False, 401, id="wrong-secret"),
    ],
)
def test_basic_auth_is_what_an_https_store_checks(
    password_ok: bool, status: int | None
) -> None:
    """Behind https the client sends Basic credentials, which the store checks."""
    fake = FakeWooCommerce(is_ssl=True)
    key = fake.add_key()
    with serve(fake.app) as store:
        client = WooCommerceClient(
            store.url,
            key.consumer_key,
            key.consumer_secret if password_ok else "cs_no",
            policy=LOOPBACK,
        )
        # the store terminates TLS in front of WordPress; the fake is reached over loopback http
        client.uses_oauth1 = False
        if status is None:
            assert [] == client.list_webhooks()
        else:
            with pytest.raises(PlatformError, match="Consumer secret is invalid"):
                client.list_webhooks()
    assert all(method == "basic_auth" for _, _, method in fake.rest_calls)


@pytest.mark.parametrize(
    ("url", "allow_insecure", "expected"),
    [
        pytest.param(
            "https://Shop.Example.com/", False, "https://shop.example.com", id="https"
        ),
        pytest.param(
            "https://example.com/store",
            False,
            "https://example.com/store",
            id="subdirectory",
        ),
        pytest.param("http://example.com", False, None, id="http-refused"),
        pytest.param("https://localhost", False, None, id="local-refused"),
        pytest.param("https://127.0.0.1", False, None, id="ip-refused"),
        pytest.param("https://user:pw@example.com", False, None, id="credentials"),
        pytest.param("https://example.com:8443", False, None, id="odd-port"),
        pytest.param("https://example.com/?a=1", False, None, id="query"),
        pytest.param(
            "http://127.0.0.1:8080/", True, "http://127.0.0.1:8080", id="dev-loopback"
        ),
        pytest.param(
            "http://shop.local", True, "http://shop.local", id="dev-local-name"
        ),
        pytest.param("http://u:p@127.0.0.1", True, None, id="dev-credentials"),
        pytest.param("ftp://127.0.0.1", True, None, id="dev-scheme"),
        pytest.param("http://127.0.0.1/?x=1", True, None, id="dev-query"),
    ],
)
def test_store_urls_are_validated(
    url: str, allow_insecure: bool, expected: str | None
) -> None:
    """Only https public hosts connect, unless the development switch admits local ones."""
    if expected is None:
        with pytest.raises(ValueError, match="store URL"):
            connect.validate_store_url(url, allow_insecure=allow_insecure)
    else:
        assert expected == connect.validate_store_url(
            url, allow_insecure=allow_insecure
        )


def test_connect_redirects_to_the_stores_authorize_page(client: Any) -> None:
    """The redirect carries app_name, scope=read_write, the state and both URLs."""
    rv = client.get("/woocommerce/connect?store_url=https://shop.example.com")
    assert 302 == rv.status_code
    location = rv.headers["Location"]
    assert location.startswith("https://shop.example.com/wc-auth/v1/authorize?")
    for part in (
        "scope=read_write",
        "app_name=",
        "user_id=",
        "return_url=https%3A%2F%2Fconnector.example%2Fwoocommerce%2Freturn",
        "callback_url=https%3A%2F%2Fconnector.example%2Fwoocommerce%2Fcallback",
    ):
        assert part in location


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param("", 200, id="form"),
        pytest.param("?store_url=http://shop.example.com", 400, id="http"),
        pytest.param("?store_url=https://localhost", 400, id="local"),
    ],
)
def test_connect_shows_a_form_or_refuses_bad_addresses(
    client: Any, query: str, status: int
) -> None:
    """Without an address the page asks for one; a bad address gets 400."""
    assert status == client.get(f"/woocommerce/connect{query}").status_code


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'{"user_id": "x", "consumer_key": "ck_a"}', id="no-secret"),
    ],
)
def test_malformed_callbacks_get_400(client: Any, body: bytes) -> None:
    """A callback that is not WooCommerce's key JSON is refused."""
    rv = client.post(
        "/woocommerce/callback", data=body, content_type="application/json"
    )
    assert 400 == rv.status_code


def test_the_worker_forgets_keys_offered_by_a_flow_that_expired_unproven(
    runtime: Runtime,
) -> None:
    """Keys nobody proved before their flow expired are dropped; day-old flows are deleted."""
    now = utcnow()
    offer = keyring.encrypt(
        json.dumps({"consumer_key": "ck_x", "consumer_secret": "cs_x", "key_id": 1})
    )
    with runtime.sessions.begin() as db:
        expired = queries.issue_state(
            db,
            connect.STATE_PURPOSE,
            store="https://shop.example.com",
            ttl=connect.STATE_TTL,
            now=now - timedelta(hours=2),
        )
        ancient = queries.issue_state(
            db,
            connect.STATE_PURPOSE,
            ttl=connect.STATE_TTL,
            now=now - timedelta(days=3),
        )
        live = queries.issue_state(
            db, connect.STATE_PURPOSE, ttl=connect.STATE_TTL, now=now
        )
        for nonce in (expired, ancient, live):
            state = queries.find_state(db, nonce, connect.STATE_PURPOSE)
            assert state is not None
            state.data = {"proof": "pending", "offer": offer}
    connect.reconcile(runtime)
    with runtime.sessions() as db:
        dropped = queries.find_state(db, expired, connect.STATE_PURPOSE)
        assert dropped is not None
        assert "refused" == dropped.data["proof"]
        assert "offer" not in dropped.data
        assert queries.find_state(db, ancient, connect.STATE_PURPOSE) is None
        kept = queries.find_state(db, live, connect.STATE_PURPOSE)
        assert kept is not None
        assert offer == kept.data["offer"]
        assert [] == queries.list_connections(db)


def answers_anything(environ: Any, start_response: Any) -> list[bytes]:
    """A site that answers 200 and an empty JSON list to every request, keys or not."""
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"[]"]


def test_a_store_that_answers_without_keys_proves_nothing(stack: Stack) -> None:
    """Keys 'accepted' by a site that accepts anything are refused: no connection, a readable page."""
    with serve(answers_anything) as site:
        browser = requests.Session()
        start = browser.get(
            f"{stack.app_url}/woocommerce/connect",
            params={"store_url": site.url},
            allow_redirects=False,
            timeout=30,
        )
        state = parse_qs(urlsplit(start.headers["Location"]).query)["user_id"][0]
        answer = requests.post(
            f"{stack.app_url}/woocommerce/callback",
            json={
                "key_id": 1,
                "user_id": state,
                "consumer_key": "ck_" + "5" * 40,
                "consumer_secret": "cs_" + "6" * 40,
                "key_permissions": "read_write",
            },
            timeout=30,
        )
        assert 200 == answer.status_code
        page = browser.get(
            f"{stack.app_url}/woocommerce/return",
            params={"user_id": state, "success": "1"},
            timeout=60,
        )
    assert 400 == page.status_code
    assert "answers its REST API without keys" in page.text
    assert "/meta/connect" not in page.text
    with stack.runtime.sessions() as session:
        assert [] == queries.list_connections(session)


def test_the_return_page_waits_for_a_proof_that_another_request_is_running(
    stack: Stack,
) -> None:
    """While the proof is held elsewhere the page polls (injected clock), then asks the browser to reload."""
    with stack.runtime.sessions.begin() as db:
        nonce = queries.issue_state(
            db, connect.STATE_PURPOSE, store=stack.store_url, ttl=connect.STATE_TTL
        )
        state = queries.find_state(db, nonce, connect.STATE_PURPOSE)
        assert state is not None
        state.data = {
            "proof": "pending",
            "offer": keyring.encrypt(
                json.dumps({"consumer_key": "ck_a", "consumer_secret": "cs_b"})
            ),
            "proving_until": (utcnow() + timedelta(minutes=1)).isoformat(),
        }
    ticks = iter(range(100))
    slept: list[float] = []
    outcome = connect.await_proof(
        stack.runtime,
        nonce,
        wait=timedelta(seconds=3),
        sleep=slept.append,
        clock=lambda: float(next(ticks)),
    )
    assert "pending" == outcome.status
    # the clock reads 0 (deadline 3), then 1 and 2 (sleep), then 3 (give up)
    assert [connect.PROOF_POLL_SECONDS] * 2 == slept
    assert [] == stack.fake.rest_calls
