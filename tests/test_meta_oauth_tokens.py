"""Meta token facts and health: debug_token answers, the daily check, pixel listing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from connector import meta_oauth
from connector.config import Settings
from connector.errors import GraphError
from connector.meta_oauth import MetaClient, TokenInfo
from connector.redact import redact_query
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    OAuthState,
)
from tests.fakes.meta import FakeMeta, FakeUser, make_app
from tests.fakes.server import LiveServer, serve

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def fake() -> FakeMeta:
    return FakeMeta()


@pytest.fixture
def server(fake: FakeMeta) -> Iterator[LiveServer]:
    with serve(make_app(fake)) as live:
        yield live


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], fake: FakeMeta, server: LiveServer
) -> Settings:
    return make_settings(
        meta_app_id=fake.app_id,
        meta_app_secret=fake.app_secret,
        meta_graph_url=server.url,
        meta_dialog_url=server.url,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '"GET /v25.0/debug_token?input_token=EAAX&access_token=1%7Cs&appsecret_proof=ab '
            'HTTP/1.1" 200 10',
            '"GET /v25.0/debug_token?input_token=[redacted]&access_token=[redacted]'
            '&appsecret_proof=[redacted] HTTP/1.1" 200 10',
            id="debug-token-line",
        ),
        pytest.param(
            "/oauth/access_token?client_id=1&client_secret=s&code=AQx&redirect_uri=https",
            "/oauth/access_token?client_id=1&client_secret=[redacted]&code=[redacted]"
            "&redirect_uri=https",
            id="code-exchange",
        ),
        pytest.param(
            "?grant_type=fb_exchange_token&fb_exchange_token=EAAS",
            "?grant_type=fb_exchange_token&fb_exchange_token=[redacted]",
            id="long-lived-exchange",
        ),
        pytest.param(
            "?fields=id,name&limit=100", "?fields=id,name&limit=100", id="no-secret"
        ),
        pytest.param("?zipcode=123", "?zipcode=123", id="only-whole-names"),
        pytest.param(
            "GET /wp-json/wc/v3/webhooks?oauth_consumer_key=ck_1&oauth_nonce=n"
            "&oauth_signature=abc%3D&page=1",
            "GET /wp-json/wc/v3/webhooks?oauth_consumer_key=[redacted]&oauth_nonce=n"
            "&oauth_signature=[redacted]&page=1",
            id="woocommerce-oauth1",
        ),
    ],
)
def test_secret_query_values_are_redacted(text: str, expected: str) -> None:
    """Every query parameter that carries a secret is hidden, the rest kept for debugging."""
    assert redact_query(text) == expected


# -- what debug_token says, and what it means ------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"is_valid": True, "expires_at": 1767225600, "scopes": ["ads_management"]},
            TokenInfo(
                is_valid=True,
                expires_at=datetime(2026, 1, 1, tzinfo=UTC),
                scopes=("ads_management",),
            ),
            id="valid-with-expiry",
        ),
        pytest.param(
            {"is_valid": True, "expires_at": 0, "scopes": []},
            TokenInfo(is_valid=True, expires_at=None),
            id="zero-means-never-expires",
        ),
        pytest.param(
            # data access ends first: after it, calls fail even though the token "expires" later
            {
                "is_valid": True,
                "expires_at": 1767225600,
                "data_access_expires_at": 1764547200,
            },
            TokenInfo(is_valid=True, expires_at=datetime(2025, 12, 1, tzinfo=UTC)),
            id="data-access-ends-first",
        ),
        pytest.param(
            {
                "is_valid": False,
                "scopes": [],
                "error": {
                    "code": 190,
                    "subcode": 460,
                    "message": "Session invalidated",
                },
            },
            TokenInfo(
                is_valid=False,
                error_code=190,
                error_subcode=460,
                error_message="Session invalidated",
            ),
            id="invalidated",
        ),
        pytest.param(
            {"is_valid": "yes", "expires_at": "soon"},
            TokenInfo(is_valid=False, expires_at=None),
            id="odd-types-are-not-trusted",
        ),
    ],
)
def test_debug_token_answers_are_read_as_meta_documents_them(
    data: dict[str, Any], expected: TokenInfo
) -> None:
    """is_valid must be true itself; 0 means no expiry; the earlier of the two expiries wins."""
    assert expected == meta_oauth.parse_debug_token({"data": data})


def test_a_debug_token_answer_without_data_is_an_error() -> None:
    """An answer without a data object is a GraphError, never a healthy token."""
    with pytest.raises(GraphError, match="no data object"):
        meta_oauth.parse_debug_token({"is_valid": True})


@pytest.mark.parametrize(
    ("info", "verdict", "says"),
    [
        pytest.param(
            TokenInfo(is_valid=True, expires_at=NOW + 50 * DAY),
            "ok",
            None,
            id="healthy",
        ),
        pytest.param(
            TokenInfo(is_valid=True, expires_at=None), "ok", None, id="never-expires"
        ),
        pytest.param(
            TokenInfo(is_valid=True, expires_at=NOW + 3 * DAY),
            "expiring",
            "expires on 2026-11-26 (in 3 days)",
            id="three-days-left",
        ),
        pytest.param(
            TokenInfo(is_valid=True, expires_at=NOW + 7 * DAY),
            "expiring",
            "in 7 days",
            id="exactly-a-week",
        ),
        pytest.param(
            TokenInfo(is_valid=True, expires_at=NOW + 7 * DAY + timedelta(seconds=1)),
            "ok",
            None,
            id="just-over-a-week",
        ),
        pytest.param(
            TokenInfo(is_valid=True, expires_at=NOW),
            "invalid",
            "expired",
            id="expired-now",
        ),
        pytest.param(
            TokenInfo(
                is_valid=False, error_code=190, error_message="Session invalidated"
            ),
            "invalid",
            "(code 190): Session invalidated",
            id="revoked",
        ),
    ],
)
def test_token_health_flags_invalid_and_soon_expiring_tokens(
    info: TokenInfo, verdict: str, says: str | None
) -> None:
    """Invalid or expired: reconnect now; within 7 days of expiry: warn; otherwise fine."""
    health = meta_oauth.assess(info, NOW)
    assert verdict == health.verdict
    if says is None:
        assert health.reason is None
    else:
        assert says in (health.reason or "")


@pytest.mark.parametrize(
    ("status", "body", "code", "transient"),
    [
        pytest.param(
            400,
            b'{"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",'
            b' "code": 190, "error_subcode": 460, "fbtrace_id": "AbC"}}',
            190,
            False,
            id="oauth-exception",
        ),
        pytest.param(
            500,
            b'{"error": {"message": "An unknown error occurred", "code": 1,'
            b' "is_transient": true}}',
            1,
            True,
            id="transient",
        ),
        pytest.param(502, b"<html>Bad Gateway</html>", None, True, id="not-json"),
        pytest.param(400, b'{"oops": 1}', None, False, id="no-error-object"),
    ],
)
def test_graph_errors_keep_metas_code_and_transience(
    status: int, body: bytes, code: int | None, transient: bool
) -> None:
    """Meta's error object becomes a GraphError with its code; a non-JSON answer is transient."""
    response = requests.Response()
    response.status_code = status
    response._content = body
    exc = meta_oauth.graph_error(response)
    assert (code, transient, status) == (exc.code, exc.is_transient, exc.status)


# -- the Graph calls against the fake --------------------------------------------------


def test_pixels_come_from_businesses_and_ad_accounts_each_once(
    settings: Settings, fake: FakeMeta
) -> None:
    """Every page of every business and ad account is read; a pixel shared by both is listed once."""
    fake.page_size = 2
    fake.user = FakeUser(
        businesses=[
            {
                "id": f"90{b}",
                "name": f"Business {b}",
                "pixels": [
                    {"id": f"1{b}{p}", "name": f"Pixel {b}.{p}"} for p in range(3)
                ],
            }
            for b in range(3)
        ],
        ad_accounts=[
            {
                "id": "act_7",
                "name": "Ads",
                "pixels": [
                    {"id": "100", "name": "Pixel 0.0"},
                    {"id": "777", "name": "Own"},
                ],
            }
        ],
    )
    token = fake.issue_token()
    pixels = MetaClient(settings).list_pixels(token)
    ids = [p.id for p in pixels]
    assert [f"1{b}{p}" for b in range(3) for p in range(3)] + ["777"] == ids
    assert "business Business 0" == pixels[0].source
    assert "ad account Ads" == pixels[-1].source


def test_pixels_are_still_listed_without_business_permission(
    settings: Settings, fake: FakeMeta
) -> None:
    """Without business_management, the ad accounts' pixels are still offered."""
    fake.user = FakeUser(
        businesses=[{"id": "1", "name": "B", "pixels": [{"id": "11", "name": "b"}]}],
        ad_accounts=[
            {"id": "act_2", "name": "A", "pixels": [{"id": "22", "name": "a"}]}
        ],
    )
    token = fake.issue_token(scopes=("ads_management",))
    assert ["22"] == [p.id for p in MetaClient(settings).list_pixels(token)]


def test_a_revoked_token_cannot_list_pixels(settings: Settings, fake: FakeMeta) -> None:
    """A 190 while listing pixels is not mistaken for "no pixels": it raises with Meta's code."""
    token = fake.issue_token()
    fake.revoke(token)
    with pytest.raises(GraphError) as info:
        MetaClient(settings).list_pixels(token)
    assert 190 == info.value.code


def test_graph_reads_without_the_right_app_secret_are_refused(
    settings: Settings,
    make_settings: Callable[..., Settings],
    fake: FakeMeta,
    server: LiveServer,
) -> None:
    """The fake checks appsecret_proof as an app with "Require App Secret" does."""
    token = fake.issue_token()
    wrong = make_settings(
        meta_app_id=fake.app_id,
        meta_app_secret="not-the-secret",
        meta_graph_url=server.url,
    )
    assert MetaClient(settings).debug_token(token).is_valid
    with pytest.raises(GraphError) as info:
        MetaClient(wrong).list_pixels(token)
    assert "appsecret_proof" in str(info.value)


def test_an_unreachable_meta_is_a_transient_error_without_the_token(
    make_settings: Callable[..., Settings], fake: FakeMeta
) -> None:
    """A connection error says Meta is unreachable and never repeats the request URL."""
    settings = make_settings(
        meta_app_id=fake.app_id,
        meta_app_secret=fake.app_secret,
        meta_graph_url="http://127.0.0.1:9",
        http_timeout=2.0,
    )
    with pytest.raises(GraphError) as info:
        MetaClient(settings).debug_token("EAAsecret-token-value")
    assert info.value.is_transient
    assert "secret-token-value" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- the daily check --------------------------------------------------------------------


def add_connection(
    runtime: Runtime, store: str, token: str | None, **fields: Any
) -> str:
    with runtime.sessions.begin() as db:
        return queries.upsert_connection(
            db, "shopify", store, meta_token=token, pixel_id="123", **fields
        ).id


def load(runtime: Runtime, connection_id: str) -> Connection:
    with runtime.sessions() as db:
        return queries.get_connection(db, connection_id)


def test_the_daily_check_flags_a_token_three_days_from_expiry(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """A token 3 days from expiry keeps sending, with a reason asking for a reconnect."""
    token = fake.issue_token(expires_in=3 * 24 * 3600 + 60)
    conn_id = add_connection(runtime, "soon.myshopify.com", token)
    now = datetime.now(UTC)
    [check] = meta_oauth.check_tokens(runtime, now=now)
    assert (conn_id, "expiring") == (check.connection_id, check.verdict)
    conn = load(runtime, conn_id)
    assert ConnectionStatus.ACTIVE == conn.status
    assert "meta token expires on" in (conn.status_reason or "")
    assert "(in 3 days)" in (conn.status_reason or "")
    assert now == conn.meta_checked_at
    expected = datetime.fromtimestamp(fake.tokens[token].expires_at, UTC)
    assert expected == conn.meta_token_expires_at


def test_the_daily_check_asks_for_a_reconnect_when_meta_refuses_the_token(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """A revoked token puts the connection in needs_reconnect with Meta's reason."""
    token = fake.issue_token()
    fake.revoke(token)
    conn_id = add_connection(runtime, "revoked.myshopify.com", token)
    [check] = meta_oauth.check_tokens(runtime, now=datetime.now(UTC))
    assert "invalid" == check.verdict
    conn = load(runtime, conn_id)
    assert ConnectionStatus.NEEDS_RECONNECT == conn.status
    assert "code 190" in (conn.status_reason or "")
    assert "reconnect Meta" in (conn.status_reason or "")


def test_a_healthy_token_clears_an_old_expiry_warning_only(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """A renewed, healthy token clears our expiry note and leaves other reasons alone."""
    warned = add_connection(
        runtime,
        "warned.myshopify.com",
        fake.issue_token(),
        status_reason="meta token expires on 2026-01-01 (in 2 days); reconnect Meta",
    )
    other = add_connection(
        runtime,
        "other.myshopify.com",
        fake.issue_token(),
        status_reason="Shopify scopes changed",
    )
    checks = meta_oauth.check_tokens(runtime, now=datetime.now(UTC))
    assert {"ok"} == {c.verdict for c in checks}
    assert load(runtime, warned).status_reason is None
    assert "Shopify scopes changed" == load(runtime, other).status_reason


def test_the_daily_check_skips_fresh_checks_and_tokenless_connections(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """Tokens checked in the last 20 hours and connections without a token are not asked about."""
    now = datetime.now(UTC)
    add_connection(
        runtime,
        "fresh.myshopify.com",
        fake.issue_token(),
        meta_checked_at=now - timedelta(hours=2),
    )
    add_connection(runtime, "none.myshopify.com", None)
    stale = add_connection(
        runtime,
        "stale.myshopify.com",
        fake.issue_token(),
        meta_checked_at=now - timedelta(hours=30),
    )
    before = fake.count("/debug_token")
    checks = meta_oauth.check_tokens(runtime, now=now)
    assert [stale] == [c.connection_id for c in checks]
    assert before + 1 == fake.count("/debug_token")


def test_an_unreachable_meta_changes_nothing(
    runtime: Runtime, make_settings: Callable[..., Settings], fake: FakeMeta
) -> None:
    """When debug_token cannot be asked, the connection keeps its status and is asked again later."""
    conn_id = add_connection(runtime, "calm.myshopify.com", fake.issue_token())
    down = make_settings(
        meta_app_id=fake.app_id,
        meta_app_secret=fake.app_secret,
        meta_graph_url="http://127.0.0.1:9",
        http_timeout=2.0,
    )
    [check] = meta_oauth.check_tokens(
        runtime, now=datetime.now(UTC), client=MetaClient(down)
    )
    assert "error" == check.verdict
    conn = load(runtime, conn_id)
    assert (ConnectionStatus.ACTIVE, None, None) == (
        conn.status,
        conn.status_reason,
        conn.meta_checked_at,
    )


def test_the_worker_runs_the_check_daily(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """periodic_jobs offers one daily job, and running it checks the stored tokens."""
    [job] = meta_oauth.periodic_jobs()
    assert ("meta-token-check", 24 * 3600) == (job.name, job.interval_seconds)
    conn_id = add_connection(
        runtime, "daily.myshopify.com", fake.issue_token(expires_in=86400)
    )
    job.run(runtime)
    conn = load(runtime, conn_id)
    assert conn.meta_checked_at is not None
    assert "meta token expires on" in (conn.status_reason or "")


def test_the_daily_job_purges_abandoned_connect_states(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """States of this flow a day past expiry are deleted; live ones and other flows' stay."""
    now = datetime.now(UTC)
    with runtime.sessions.begin() as db:
        conn_id = queries.upsert_connection(db, "shopify", "states.myshopify.com").id
        for purpose, age in (
            (meta_oauth.PICK_PURPOSE, 2 * DAY),
            (meta_oauth.CONNECT_PURPOSE, 2 * DAY),
            (meta_oauth.PICK_PURPOSE, timedelta(minutes=1)),
            ("shopify_install", 2 * DAY),
        ):
            queries.issue_state(db, purpose, connection_id=conn_id, now=now - age)
    [job] = meta_oauth.periodic_jobs()
    job.run(runtime)
    with runtime.sessions() as db:
        left = sorted(
            (s.purpose, s.created_at > now - DAY)
            for s in db.scalars(select(OAuthState))
        )
    assert [(meta_oauth.PICK_PURPOSE, True), ("shopify_install", False)] == left


def test_the_daily_check_sends_again_for_a_token_that_is_valid_again(
    runtime: Runtime, settings: Settings, fake: FakeMeta
) -> None:
    """A connection held for a refusal whose token Meta now says is valid is active again."""
    token = fake.issue_token()
    conn_id = add_connection(
        runtime,
        "healed.myshopify.com",
        token,
        status=ConnectionStatus.NEEDS_RECONNECT,
    )
    with runtime.sessions.begin() as db:
        db.get_one(Connection, conn_id).status = ConnectionStatus.NEEDS_RECONNECT
        db.get_one(Connection, conn_id).status_reason = "Meta refused the access token"
        db.add(
            Event(
                connection_id=conn_id,
                event_name="Purchase",
                event_id="held-1",
                event_time=datetime.now(UTC),
                payload={},
                status=EventStatus.HELD,
            )
        )
    [check] = meta_oauth.check_tokens(runtime, now=datetime.now(UTC))
    assert "ok" == check.verdict
    conn = load(runtime, conn_id)
    assert (ConnectionStatus.ACTIVE, None) == (conn.status, conn.status_reason)
    with runtime.sessions() as db:
        assert [EventStatus.PENDING] == list(db.scalars(select(Event.status)))
