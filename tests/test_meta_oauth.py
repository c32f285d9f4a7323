"""Connecting a Meta account through Facebook Login: dialog, callback, pixel choice, disconnect."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from connector import meta_oauth
from connector.config import Settings
from connector.dispatcher import run_worker
from connector.links import sign_admin_link
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    OAuthState,
)
from tests.fakes.graph import FakeGraph
from tests.fakes.graph import make_app as make_graph_app
from tests.fakes.meta import FakeMeta, FakeUser
from tests.fakes.meta import blueprint as meta_blueprint
from tests.fakes.server import LiveServer, serve
from tests.test_secrets_at_rest import database_bytes

APP_URL = "https://connector.example"
SHOP = "meta-test.myshopify.com"


def one_pixel_user() -> FakeUser:
    return FakeUser(
        businesses=[
            {
                "id": "5550001",
                "name": "Acme Goods",
                "pixels": [{"id": "111222333444", "name": "Acme web"}],
            }
        ],
    )


def many_pixels_user() -> FakeUser:
    return FakeUser(
        businesses=[
            {
                "id": "5550001",
                "name": "Acme Goods",
                "pixels": [
                    {"id": "111222333444", "name": "Acme web"},
                    {"id": "999888777666", "name": "Acme outlet"},
                ],
            }
        ],
        ad_accounts=[
            {
                "id": "act_4242",
                "name": "Acme ads",
                # shared with the business's own pixel: listed once
                "pixels": [
                    {"id": "111222333444", "name": "Acme web"},
                    {"id": "123123123123", "name": "Agency pixel"},
                ],
            }
        ],
    )


@dataclass
class FakeMetaServer:
    """One fake for all of Meta: login, token and pixel reads, and the events endpoint."""

    meta: FakeMeta
    graph: FakeGraph
    server: LiveServer


@pytest.fixture
def meta() -> Iterator[FakeMetaServer]:
    state = FakeMeta(user=one_pixel_user())
    graph_state = FakeGraph(tokens=set(), app_secret=state.app_secret)
    # a token the login fake issues is one the events endpoint accepts, until it is revoked
    state.graph_tokens = graph_state.tokens
    app = make_graph_app(graph_state)
    app.register_blueprint(meta_blueprint(state))
    with serve(app) as server:
        yield FakeMetaServer(meta=state, graph=graph_state, server=server)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], meta: FakeMetaServer) -> Settings:
    """The connector's settings, pointing Graph and the login dialog at the fake."""
    state, server = meta.meta, meta.server
    return make_settings(
        app_url=APP_URL,
        meta_app_id=state.app_id,
        meta_app_secret=state.app_secret,
        meta_graph_url=server.url,
        meta_dialog_url=server.url,
    )


@pytest.fixture
def fake(meta: FakeMetaServer) -> FakeMeta:
    return meta.meta


@pytest.fixture
def graph(meta: FakeMetaServer) -> FakeGraph:
    return meta.graph


def text_of(rv: Any) -> str:
    """A response's text as a person reads it (entities such as &#x27; decoded)."""
    return html.unescape(rv.get_data(as_text=True))


def add_connection(runtime: Runtime, store: str = SHOP, **fields: Any) -> str:
    with runtime.sessions.begin() as db:
        return queries.upsert_connection(db, "shopify", store, **fields).id


def load(runtime: Runtime, connection_id: str) -> Connection:
    with runtime.sessions() as db:
        return queries.get_connection(db, connection_id)


@dataclass
class Browser:
    """The store owner's browser: our app through Flask's client, Meta's dialog over HTTP."""

    client: Any
    settings: Settings

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(
            path, base_url=APP_URL, headers={"Accept": "text/html"}, **kw
        )

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(
            path, base_url=APP_URL, headers={"Accept": "text/html"}, **kw
        )

    def start(self, connection_id: str) -> str:
        """Click "Connect Meta" in the store's admin; returns the dialog URL we were sent to."""
        token = sign_admin_link(
            self.settings.secret_key, connection_id, datetime.now(UTC)
        )
        rv = self.get(
            "/meta/connect", query_string={"connection": connection_id, "token": token}
        )
        assert 302 == rv.status_code, text_of(rv)
        return str(rv.headers["Location"])

    def dialog(self, dialog_url: str) -> str:
        """Log in at Meta's dialog; returns the callback path and query Meta redirected to."""
        rv = requests.get(dialog_url, allow_redirects=False, timeout=10)
        assert 302 == rv.status_code, rv.text
        location = urlsplit(rv.headers["Location"])
        assert APP_URL == f"{location.scheme}://{location.netloc}"
        return f"{location.path}?{location.query}"

    def connect(self, connection_id: str) -> Any:
        """The whole round trip up to the page after the callback."""
        return self.get(self.dialog(self.start(connection_id)))


@pytest.fixture
def browser(client: Any, settings: Settings) -> Browser:
    return Browser(client=client, settings=settings)


def test_connect_sends_the_owner_to_the_dialog_with_only_the_needed_permissions(
    browser: Browser, runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """The dialog URL carries our app, our callback, a fresh state and exactly two scopes."""
    conn_id = add_connection(runtime)
    url = urlsplit(browser.start(conn_id))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"/{settings.meta_api_version}/dialog/oauth" == url.path
    assert fake.app_id == query["client_id"]
    assert f"{APP_URL}/meta/callback" == query["redirect_uri"]
    assert "ads_management,business_management" == query["scope"]
    assert "code" == query["response_type"]
    with runtime.sessions() as db:
        stored = db.scalars(
            select(OAuthState).where(OAuthState.purpose == meta_oauth.CONNECT_PURPOSE)
        ).one()
    assert conn_id == stored.connection_id
    # only the hash is stored: the database cannot replay the state
    assert query["state"] != stored.nonce_hash


@pytest.mark.parametrize(
    ("token_for", "age"),
    [
        pytest.param("other", timedelta(0), id="signed-for-another-connection"),
        pytest.param("self", timedelta(hours=2), id="expired"),
        pytest.param("garbage", timedelta(0), id="forged"),
        pytest.param("none", timedelta(0), id="missing"),
    ],
)
def test_connect_needs_the_store_admins_signed_link(
    browser: Browser,
    runtime: Runtime,
    settings: Settings,
    token_for: str,
    age: timedelta,
) -> None:
    """Without a valid admin link for this connection, nothing starts and no state is issued."""
    conn_id = add_connection(runtime)
    other_id = add_connection(runtime, store="other-shop.myshopify.com")
    signed_at = datetime.now(UTC) - age
    token = {
        "other": sign_admin_link(settings.secret_key, other_id, signed_at),
        "self": sign_admin_link(settings.secret_key, conn_id, signed_at),
        "garbage": "9999999999.deadbeef",
        "none": "",
    }[token_for]
    rv = browser.get(
        "/meta/connect", query_string={"connection": conn_id, "token": token}
    )
    assert 401 == rv.status_code
    assert "open the connector from your store's admin again" in text_of(rv)
    with runtime.sessions() as db:
        assert 0 == db.scalar(select(func.count()).select_from(OAuthState))


def test_full_connect_with_one_pixel_stores_the_long_lived_token_encrypted(
    browser: Browser, runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """One pixel: no picker; the long-lived token is stored encrypted with its expiry and scopes."""
    conn_id = add_connection(runtime)
    rv = browser.connect(conn_id)
    page = text_of(rv)
    assert 200 == rv.status_code, page
    assert "Meta is connected" in page
    [long_token] = fake.long_lived_tokens()
    conn = load(runtime, conn_id)
    assert "111222333444" == conn.pixel_id
    assert long_token == conn.meta_token
    assert ConnectionStatus.ACTIVE == conn.status
    assert "ads_management,business_management" == conn.meta_scopes
    expected_expiry = datetime.fromtimestamp(fake.tokens[long_token].expires_at, UTC)
    assert expected_expiry == conn.meta_token_expires_at
    # never in a page, never in plain text at rest
    for token in fake.tokens:
        assert token not in page
        assert token.encode() not in database_bytes(settings)


def test_no_token_or_secret_reaches_a_log_line_even_at_debug(
    browser: Browser,
    runtime: Runtime,
    settings: Settings,
    fake: FakeMeta,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Graph's documented GETs carry secrets in the query; urllib3's request lines are redacted."""
    conn_id = add_connection(runtime)
    with caplog.at_level(logging.DEBUG):
        rv = browser.connect(conn_id)
    assert 200 == rv.status_code, text_of(rv)
    # werkzeug's lines are the fake Meta's own access log, not the connector's.
    lines = [r.getMessage() for r in caplog.records if r.name != "werkzeug"]
    # The exchanges and reads were logged (so the check below means something) ...
    assert any("oauth/access_token" in line for line in lines)
    assert any("debug_token" in line for line in lines)
    # ... without a token, a code, the proof or the app secret.
    secrets_seen = [*fake.tokens, *fake.codes, fake.app_secret]
    for line in lines:
        assert not any(secret in line for secret in secrets_seen), line


def test_several_pixels_are_offered_and_the_choice_is_stored(
    browser: Browser, runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """Several pixels: the picker lists each once, keeps the token server-side, stores the choice."""
    fake.user = many_pixels_user()
    fake.page_size = 1  # the pixel lists come in pages of one: paging is followed
    conn_id = add_connection(runtime)
    rv = browser.connect(conn_id)
    page = text_of(rv)
    assert 200 == rv.status_code, page
    for pixel in ("111222333444", "999888777666", "123123123123"):
        assert 1 == page.count(f'value="{pixel}"')
    for token in fake.tokens:
        assert token not in page
        assert token.encode() not in database_bytes(settings)
    assert load(runtime, conn_id).meta_token is None
    nonce = page.split('name="state" value="', 1)[1].split('"', 1)[0]
    rv = browser.post("/meta/pixel", data={"state": nonce, "pixel_id": "123123123123"})
    assert 200 == rv.status_code, text_of(rv)
    conn = load(runtime, conn_id)
    assert "123123123123" == conn.pixel_id
    assert fake.long_lived_tokens() == [conn.meta_token]
    with runtime.sessions() as db:
        # the spent choice keeps no copy of the token, not even encrypted
        assert [{}] == [
            s.data
            for s in db.scalars(
                select(OAuthState).where(OAuthState.purpose == "meta_pick")
            )
        ]


def test_a_pixel_that_was_not_offered_is_refused_and_the_choice_stays_open(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """Choosing a pixel outside the list changes nothing; a proper choice still works after."""
    fake.user = many_pixels_user()
    conn_id = add_connection(runtime)
    page = browser.connect(conn_id).get_data(as_text=True)
    nonce = page.split('name="state" value="', 1)[1].split('"', 1)[0]
    rv = browser.post("/meta/pixel", data={"state": nonce, "pixel_id": "000000000001"})
    assert 400 == rv.status_code
    assert "choose one of the pixels listed" in text_of(rv)
    assert load(runtime, conn_id).pixel_id is None
    rv = browser.post("/meta/pixel", data={"state": nonce, "pixel_id": "999888777666"})
    assert 200 == rv.status_code
    assert "999888777666" == load(runtime, conn_id).pixel_id


def _forge(browser: Browser, runtime: Runtime, conn_id: str, other_id: str) -> str:
    """A callback whose state is made up."""
    path = browser.dialog(browser.start(conn_id))
    query = parse_qs(urlsplit(path).query)
    return f"/meta/callback?code={query['code'][0]}&state=not-a-state-we-issued"


def _replay(browser: Browser, runtime: Runtime, conn_id: str, other_id: str) -> str:
    """A callback that was used once already (the first use connects)."""
    path = browser.dialog(browser.start(conn_id))
    assert 200 == browser.get(path).status_code
    with runtime.sessions.begin() as db:
        conn = queries.get_connection(db, conn_id)
        conn.meta_token, conn.pixel_id = None, None
    # the same browser replays it: its session names the connection again
    with browser.client.session_transaction(base_url=APP_URL) as sess:
        sess["meta_connection"] = conn_id
    return path


def _other_connection(
    browser: Browser, runtime: Runtime, conn_id: str, other_id: str
) -> str:
    """A callback whose state was issued for another store's connection."""
    path = browser.dialog(browser.start(other_id))
    with browser.client.session_transaction(base_url=APP_URL) as sess:
        sess["meta_connection"] = conn_id
    return path


def _expired(browser: Browser, runtime: Runtime, conn_id: str, other_id: str) -> str:
    """A callback more than ten minutes after its state was issued."""
    path = browser.dialog(browser.start(conn_id))
    with runtime.sessions.begin() as db:
        for state in db.scalars(select(OAuthState)):
            state.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    return path


def _other_browser(
    browser: Browser, runtime: Runtime, conn_id: str, other_id: str
) -> str:
    """A callback opened in a browser that never started the flow."""
    path = browser.dialog(browser.start(conn_id))
    with browser.client.session_transaction(base_url=APP_URL) as sess:
        sess.clear()
    return path


@pytest.mark.parametrize(
    ("make_callback", "says"),
    [
        pytest.param(_forge, "not valid or was used already", id="forged"),
        pytest.param(_replay, "not valid or was used already", id="replayed"),
        pytest.param(
            _other_connection, "issued for another connection", id="other-connection"
        ),
        pytest.param(_expired, "has expired", id="expired"),
        pytest.param(_other_browser, "not started in this browser", id="other-browser"),
    ],
)
def test_a_bad_state_is_refused_with_a_clear_page_and_no_change(
    browser: Browser,
    runtime: Runtime,
    fake: FakeMeta,
    make_callback: Callable[[Browser, Runtime, str, str], str],
    says: str,
) -> None:
    """Forged, replayed, foreign, expired or other-browser states: 400, nothing stored, no exchange."""
    conn_id = add_connection(runtime)
    other_id = add_connection(runtime, store="other-shop.myshopify.com")
    path = make_callback(browser, runtime, conn_id, other_id)
    exchanges = fake.count("/oauth/access_token")
    with runtime.sessions() as db:
        unused = db.scalar(select(func.count()).where(OAuthState.used_at.is_(None)))
    rv = browser.get(path)
    page = text_of(rv)
    assert 400 == rv.status_code
    assert "text/html" == rv.mimetype
    assert says in page
    assert exchanges == fake.count("/oauth/access_token")
    for cid in (conn_id, other_id):
        conn = load(runtime, cid)
        assert (None, None) == (conn.meta_token, conn.pixel_id)
    with runtime.sessions() as db:
        assert unused == db.scalar(
            select(func.count()).where(OAuthState.used_at.is_(None))
        )


def test_a_cancelled_dialog_shows_a_readable_page_and_changes_nothing(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """Pressing Cancel at Facebook brings the owner back to a plain explanation."""
    fake.user.denies = True
    conn_id = add_connection(runtime)
    path = browser.dialog(browser.start(conn_id))
    assert "error_reason=user_denied" in path
    rv = browser.get(path)
    page = text_of(rv)
    assert 200 == rv.status_code
    assert "You cancelled the Facebook login, so nothing was changed." in page
    assert 0 == fake.count("/oauth/access_token")
    conn = load(runtime, conn_id)
    assert (None, None) == (conn.meta_token, conn.pixel_id)


def test_a_dialog_without_ads_permission_asks_to_connect_again(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """Switching off ads_management at Facebook stores nothing and says what is missing."""
    fake.user.grants = ("business_management",)
    conn_id = add_connection(runtime)
    rv = browser.connect(conn_id)
    assert 400 == rv.status_code
    assert "ads_management" in text_of(rv)
    assert load(runtime, conn_id).meta_token is None


def test_an_account_without_pixels_is_told_to_create_one(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """No pixel in any business or ad account: a page pointing to Events Manager, nothing stored."""
    fake.user = FakeUser(businesses=[{"id": "1", "name": "Empty", "pixels": []}])
    conn_id = add_connection(runtime)
    rv = browser.connect(conn_id)
    assert 404 == rv.status_code
    assert "Events Manager" in text_of(rv)
    assert load(runtime, conn_id).meta_token is None


def test_an_uninstalled_store_cannot_connect_meta(
    browser: Browser, runtime: Runtime
) -> None:
    """A store that removed the app is told to install it again first."""
    conn_id = add_connection(runtime)
    with runtime.sessions.begin() as db:
        queries.mark_uninstalled(db, queries.get_connection(db, conn_id))
    token = sign_admin_link(browser.settings.secret_key, conn_id, datetime.now(UTC))
    rv = browser.get(
        "/meta/connect", query_string={"connection": conn_id, "token": token}
    )
    assert 409 == rv.status_code
    assert "Install the app on your store again" in text_of(rv)


def add_event(
    runtime: Runtime, conn_id: str, event_id: str, status: str, age: timedelta
) -> None:
    when = datetime.now(UTC) - age
    with runtime.sessions.begin() as db:
        db.add(
            Event(
                connection_id=conn_id,
                event_name="Purchase",
                event_id=event_id,
                event_time=when,
                payload={
                    "event_name": "Purchase",
                    "event_id": event_id,
                    "event_time": int(when.timestamp()),
                    "action_source": "website",
                    "event_source_url": f"https://{SHOP}/checkouts/1",
                    "user_data": {
                        "em": ["a" * 64],
                        "client_user_agent": "Mozilla/5.0",
                        "client_ip_address": "203.0.113.9",
                    },
                    "custom_data": {"value": 10.0, "currency": "USD"},
                },
                status=status,
                created_at=when,
                next_attempt_at=when,
            )
        )


def statuses(runtime: Runtime, conn_id: str) -> dict[str, tuple[str, str | None]]:
    with runtime.sessions() as db:
        return {
            e.event_id: (e.status, e.last_error)
            for e in db.scalars(select(Event).where(Event.connection_id == conn_id))
        }


def test_reconnect_releases_held_events_and_dead_letters_those_past_seven_days(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """After a reconnect, held events go back to pending; those older than 7 days die as too_old."""
    conn_id = add_connection(
        runtime,
        status=ConnectionStatus.NEEDS_RECONNECT,
        status_reason="meta token invalid (code 190)",
        pixel_id="111222333444",
        meta_token=fake.issue_token(),
    )
    add_event(runtime, conn_id, "fresh", EventStatus.HELD, timedelta(days=2))
    add_event(runtime, conn_id, "stale", EventStatus.HELD, timedelta(days=8))
    add_event(runtime, conn_id, "done", EventStatus.SENT, timedelta(days=9))
    rv = browser.connect(conn_id)
    page = text_of(rv)
    assert 200 == rv.status_code, page
    assert "1 held event will be sent now" in page
    assert "past what Meta" in page
    conn = load(runtime, conn_id)
    assert (ConnectionStatus.ACTIVE, None) == (conn.status, conn.status_reason)
    got = statuses(runtime, conn_id)
    assert EventStatus.PENDING == got["fresh"][0]
    assert EventStatus.DEAD == got["stale"][0]
    assert (got["stale"][1] or "").startswith("too_old")
    assert (EventStatus.SENT, None) == got["done"]


def test_disconnect_forgets_the_token_and_keeps_the_outbox(
    browser: Browser, runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """Disconnect deletes the token, stops sending (pending rows are held) and deletes no event."""
    conn_id = add_connection(
        runtime, pixel_id="111222333444", meta_token=fake.issue_token()
    )
    add_event(runtime, conn_id, "waiting", EventStatus.PENDING, timedelta(hours=1))
    add_event(runtime, conn_id, "done", EventStatus.SENT, timedelta(hours=2))
    token = sign_admin_link(settings.secret_key, conn_id, datetime.now(UTC))
    rv = browser.post("/meta/disconnect", data={"connection": conn_id, "token": token})
    assert 200 == rv.status_code, text_of(rv)
    conn = load(runtime, conn_id)
    assert (None, ConnectionStatus.DISCONNECTED) == (conn.meta_token, conn.status)
    got = statuses(runtime, conn_id)
    assert {"waiting": EventStatus.HELD, "done": EventStatus.SENT} == {
        k: v[0] for k, v in got.items()
    }


def test_disconnect_needs_the_store_admins_signed_link(
    browser: Browser, runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """A disconnect without a valid admin link is refused and the token stays."""
    conn_id = add_connection(
        runtime, pixel_id="111222333444", meta_token=fake.issue_token()
    )
    other = add_connection(runtime, store="other-shop.myshopify.com")
    token = sign_admin_link(settings.secret_key, other, datetime.now(UTC))
    rv = browser.post("/meta/disconnect", data={"connection": conn_id, "token": token})
    assert 401 == rv.status_code
    assert load(runtime, conn_id).meta_token is not None


def test_connect_sends_one_test_event_and_shows_metas_answer(
    browser: Browser, runtime: Runtime, fake: FakeMeta, graph: FakeGraph
) -> None:
    """With a test_event_code, the fake receives one event carrying it, and the page says so."""
    conn_id = add_connection(runtime, test_event_code="TEST4242")
    rv = browser.connect(conn_id)
    page = text_of(rv)
    assert 200 == rv.status_code, page
    [received] = graph.received
    assert ("111222333444", "TEST4242") == (received.pixel_id, received.test_event_code)
    assert "Meta received 1 test event" in page


def test_no_test_event_without_a_test_event_code(
    browser: Browser, runtime: Runtime, graph: FakeGraph
) -> None:
    """Without a test_event_code nothing is sent at connect time: test mode never leaks."""
    conn_id = add_connection(runtime)
    assert 200 == browser.connect(conn_id).status_code
    assert [] == graph.received


def test_revoked_token_holds_events_until_a_reconnect_sends_each_once(
    browser: Browser, runtime: Runtime, fake: FakeMeta, graph: FakeGraph
) -> None:
    """A 190 holds the events and flags the connection; after reconnecting each is sent once."""
    conn_id = add_connection(runtime)
    assert 200 == browser.connect(conn_id).status_code
    [first_token] = fake.long_lived_tokens()
    ids = [f"order-{n}" for n in range(5)]
    for event_id in ids:
        add_event(runtime, conn_id, event_id, EventStatus.PENDING, timedelta(hours=1))
    fake.revoke(first_token)  # the owner changed their Facebook password

    run_worker(runtime=runtime, drain=True)
    conn = load(runtime, conn_id)
    assert ConnectionStatus.NEEDS_RECONNECT == conn.status
    assert {EventStatus.HELD} == {s for s, _ in statuses(runtime, conn_id).values()}
    assert [] == graph.event_ids()

    rv = browser.connect(conn_id)
    assert "5 held events will be sent now" in text_of(rv)
    assert ConnectionStatus.ACTIVE == load(runtime, conn_id).status
    run_worker(runtime=runtime, drain=True)
    assert {EventStatus.SENT} == {s for s, _ in statuses(runtime, conn_id).values()}
    assert sorted(ids) == sorted(graph.event_ids())


def test_a_code_meta_refuses_to_exchange_shows_metas_reason_and_stores_nothing(
    browser: Browser, runtime: Runtime, fake: FakeMeta
) -> None:
    """When Meta refuses the code exchange, the page carries Meta's message and nothing is stored."""
    conn_id = add_connection(runtime)
    path = browser.dialog(browser.start(conn_id))
    fake.app_secret = (
        "rotated-at-meta"  # the app secret was reset in the Meta app dashboard
    )
    rv = browser.get(path)
    assert 502 == rv.status_code
    assert "Error validating client secret." in text_of(rv)
    conn = load(runtime, conn_id)
    assert (None, None) == (conn.meta_token, conn.pixel_id)
