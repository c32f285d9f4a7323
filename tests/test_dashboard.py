"""The dashboard through its routes: who may look, what each page says, replay, settings."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select

from connector.cli import cli
from connector.config import Settings
from connector.links import sign_admin_link, sign_dashboard_link
from connector.runtime import Runtime
from connector.store import dashboard as q
from connector.store import queries
from connector.store.models import Connection, ConnectionStatus, Event, EventStatus
from connector.web import create_app
from tests.test_dispatcher import meta_event, sha

PIXEL = "1234567890"
SHOP = "dash-shop.myshopify.com"
WOO = "https://woo.example"
#: what must never reach a store owner's page
FORBIDDEN = re.compile(
    r"META_APP_ID|META_APP_SECRET|SHOPIFY_API|ADMIN_PASSWORD|SECRET_KEY|DATABASE_URL|Traceback"
)


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], runtime: Runtime
) -> Iterator[Callable[..., Any]]:
    """Clients of apps with their own settings (``runtime`` empties the tables after)."""
    runtimes: list[Runtime] = []

    def factory(**overrides: Any) -> Any:
        runtimes.append(Runtime.from_settings(make_settings(**overrides)))
        return create_app(runtime=runtimes[-1]).test_client()

    yield factory
    for rt in runtimes:
        rt.close()


def add(
    runtime: Runtime, platform: str = "shopify", store: str = SHOP, **fields: Any
) -> str:
    with runtime.sessions.begin() as s:
        conn = queries.upsert_connection(s, platform, store)
        values = {"pixel_id": PIXEL, "meta_token": "meta-token", **fields}
        for name, value in values.items():
            setattr(conn, name, value)
        return conn.id


def add_event(
    runtime: Runtime,
    conn_id: str,
    event_id: str,
    *,
    status: str = EventStatus.SENT,
    created_at: datetime | None = None,
    **columns: Any,
) -> int:
    now = datetime.now(UTC)
    when = created_at or now - timedelta(minutes=5)
    row = {
        "connection_id": conn_id,
        "event_name": "Purchase",
        "event_id": event_id,
        "order_ref": event_id,
        "event_time": when,
        "payload": meta_event(event_id, event_time=when),
        "status": status,
        "attempts": 0,
        "send_count": 0,
        "next_attempt_at": now,
        "created_at": when,
        **columns,
    }
    with runtime.sessions.begin() as s:
        return int(s.execute(insert(Event).returning(Event.id), [row]).scalar_one())


def link(settings: Settings, conn_id: str, *, mode: str = "standalone") -> str:
    token = sign_dashboard_link(
        settings.secret_key, conn_id, datetime.now(UTC), mode=mode
    )
    return f"/admin/connections/{conn_id}?t={token}"


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return html.unescape(found.group(1))


def text(rv: Any) -> str:
    body: str = rv.get_data(as_text=True)
    assert not FORBIDDEN.search(body), FORBIDDEN.search(body)
    return body


# -- who may look --------------------------------------------------------------------------


def test_a_store_link_opens_only_its_own_store(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """A signed link shows its store; the same token on another store's page is refused."""
    mine = add(runtime, "woocommerce", WOO)
    other = add(runtime, "woocommerce", "https://other.example")
    rv = client.get(link(settings, mine), environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert 200 == rv.status_code
    assert "woo.example" in text(rv)
    token = link(settings, mine).split("t=", 1)[1]
    rv = client.get(
        f"/admin/connections/{other}?t={token}",
        environ_base={"REMOTE_ADDR": "203.0.113.5"},
    )
    assert 401 == rv.status_code
    assert "other.example" not in text(rv)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda s, c: "", id="none"),
        pytest.param(lambda s, c: "123.standalone.abc", id="forged"),
        pytest.param(lambda s, c: "9999999999.standalone.n0nce.abc", id="forged-mac"),
        pytest.param(
            lambda s, c: "9999999999.standalone.n0nce.\u00e9\u00e9", id="non-ascii"
        ),
        pytest.param(
            lambda s, c: sign_dashboard_link(
                s.secret_key, c, datetime.now(UTC) - timedelta(hours=3)
            ),
            id="expired",
        ),
        # the Meta connect link's token is another kind: it does not open the dashboard
        pytest.param(
            lambda s, c: sign_admin_link(s.secret_key, c, datetime.now(UTC)),
            id="admin-link",
        ),
    ],
)
def test_without_a_live_link_or_the_password_nothing_is_shown(
    make_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    token: Callable[[Settings, str], str],
) -> None:
    """Away from the operator's password, only a live link of the dashboard's kind opens it."""
    client = make_client(admin_password="pw")
    settings = make_settings(admin_password="pw")
    rt = client.application.extensions["connector"]
    conn_id = add(rt, "woocommerce", WOO)
    rv = client.get(f"/admin/connections/{conn_id}/events?t={token(settings, conn_id)}")
    assert 401 == rv.status_code
    assert "woo.example" not in text(rv)
    assert (
        200
        == client.get(
            f"/admin/connections/{conn_id}/events", auth=("admin", "pw")
        ).status_code
    )


def test_the_operator_sees_every_store_in_plain_words(
    make_client: Callable[..., Any],
) -> None:
    """ADMIN_PASSWORD lists every connection with its state, linked to its dashboard."""
    client = make_client(admin_password="pw")
    rt = client.application.extensions["connector"]
    a = add(rt, status=ConnectionStatus.NEEDS_RECONNECT)
    b = add(rt, "woocommerce", WOO, test_event_code="TEST1")
    assert 401 == client.get("/admin").status_code
    page = text(client.get("/admin", auth=("admin", "pw")))
    assert "Needs Meta reconnected" in page
    assert "Test mode" in page
    assert f"/admin/connections/{a}" in page
    assert f"/admin/connections/{b}" in page


# -- overview ------------------------------------------------------------------------------


def test_a_hand_connected_shop_is_managed_by_hand_not_zero_of_six(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """A shop added by hand (no app install) shows who manages its webhooks, not "0 of 6"."""
    conn_id = add(runtime)
    page = text(client.get(link(settings, conn_id)))
    assert "Managed by hand" in page
    assert "0 of" not in page
    assert "Sending" in page


@pytest.mark.parametrize(
    ("fields", "meta_app", "headline", "action"),
    [
        pytest.param({}, True, "Sending", None, id="sending"),
        pytest.param(
            {"status": ConnectionStatus.NEEDS_RECONNECT},
            True,
            "Needs Meta reconnected",
            "Reconnect Meta",
            id="reconnect",
        ),
        pytest.param(
            {"status": ConnectionStatus.NEEDS_RECONNECT},
            False,
            "Needs Meta reconnected",
            None,
            id="reconnect-without-meta-app",
        ),
        pytest.param(
            {"meta_token": None},
            True,
            "Paused: Meta is not connected",
            "Connect Meta",
            id="paused",
        ),
        pytest.param(
            {"test_event_code": "TEST9"}, True, "Test mode", "Go live", id="test-mode"
        ),
    ],
)
def test_the_state_is_plain_words_with_the_one_action_that_fixes_it(
    make_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    fields: dict[str, Any],
    meta_app: bool,
    headline: str,
    action: str | None,
) -> None:
    """Each state names itself and offers one working action; no page names a variable."""
    extra = {"meta_app_id": "123", "meta_app_secret": "s3cret"} if meta_app else {}
    client = make_client(**extra)
    settings = make_settings(**extra)
    rt = client.application.extensions["connector"]
    conn_id = add(rt, **fields)
    page = text(client.get(link(settings, conn_id)))
    assert f'<h2 id="state-h">{headline}</h2>' in page
    if action is None:
        assert 'class="button"' not in page
    else:
        assert f">{action}</a>" in page
    if action in ("Reconnect Meta", "Connect Meta"):
        href = html.unescape(re.findall(r'href="([^"]*meta/connect[^"]*)"', page)[0])
        rv = client.get(href.replace(settings.app_url, ""))
        assert 302 == rv.status_code  # on to Facebook's dialog, not a 404
    if not meta_app:
        assert "/meta/connect" not in page


def test_overview_counts_seven_and_thirty_days_and_the_last_delivery(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Orders seen, delivered, held and dead count by the day each event was made."""
    conn_id = add(runtime)
    now = datetime.now(UTC)
    add_event(runtime, conn_id, "1", created_at=now - timedelta(days=1), sent_at=now)
    add_event(runtime, conn_id, "2", created_at=now - timedelta(days=10))
    add_event(
        runtime,
        conn_id,
        "3",
        status="dead",
        created_at=now - timedelta(days=2),
        last_error="invalid: Meta refused it",
    )
    add_event(runtime, conn_id, "4", status="held", created_at=now - timedelta(days=20))
    add_event(runtime, conn_id, "5", created_at=now - timedelta(days=40))
    with runtime.sessions() as s:
        data = q.overview(s, conn_id, now)
    assert (2, 1, 1, 0) == (
        data.last_7.orders,
        data.last_7.delivered,
        data.last_7.dead,
        data.last_7.held,
    )
    assert (4, 2, 1, 1) == (
        data.last_30.orders,
        data.last_30.delivered,
        data.last_30.dead,
        data.last_30.held,
    )
    assert data.last_delivered_at is not None
    page = text(client.get(link(settings, conn_id)))
    assert "<svg" in page
    assert "Events that need you" in page
    assert "Meta refused the event as invalid." in page


# -- events --------------------------------------------------------------------------------


def test_events_search_and_pages_are_bounded(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Search finds an order or a trace id exactly; pages hold at most 50, older ones follow."""
    conn_id = add(runtime)
    for i in range(120):
        add_event(runtime, conn_id, str(1000 + i), fbtrace_id=f"TRACE{i}")
    base = link(settings, conn_id).replace(
        f"/admin/connections/{conn_id}?", f"/admin/connections/{conn_id}/events?"
    )
    page = text(client.get(base))
    assert 50 == page.count("<tr>") - 1
    older = html.unescape(re.search(r'href="([^"]*before=[^"]*)"', page).group(1))  # type: ignore[union-attr]
    page2 = text(client.get(older))
    assert "1069" in page2
    assert "1070" not in page2
    found = text(client.get(base + "&q=%231005"))
    assert 1 == found.count("<tr>") - 1
    assert "TRACE5" in found
    assert 1 == text(client.get(base + "&q=TRACE77")).count("<tr>") - 1


def test_event_detail_names_keys_never_values(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """The detail lists which hashed keys were sent, and no hash or IP appears."""
    conn_id = add(runtime)
    pk = add_event(runtime, conn_id, "2001", fbtrace_id="ABC", events_received=1)
    token = link(settings, conn_id).split("t=", 1)[1]
    page = text(client.get(f"/admin/connections/{conn_id}/events/{pk}?t={token}"))
    assert "Email" in page
    assert "IP address" in page
    assert "203.0.113.7" not in page
    assert sha("2001@example.com") not in page
    assert "ABC" in page


def test_replay_needs_the_forms_token_and_then_reaches_pending(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """A replay without a CSRF token, or with another store's, changes nothing."""
    conn_id = add(runtime)
    other = add(runtime, "woocommerce", WOO)
    pk = add_event(runtime, conn_id, "3001", status="dead", last_error="invalid: bad")
    token = link(settings, conn_id).split("t=", 1)[1]
    other_token = link(settings, other).split("t=", 1)[1]
    page = text(client.get(f"/admin/connections/{conn_id}/events/{pk}?t={token}"))
    good = csrf(page)
    foreign = csrf(
        text(client.get(f"/admin/connections/{other}/settings?t={other_token}"))
    )
    url = f"/admin/connections/{conn_id}/replay"
    for form in (
        {"t": token, "event": pk},
        {"t": token, "event": pk, "csrf_token": foreign},
    ):
        assert 400 == client.post(url, data=form).status_code
    assert EventStatus.DEAD == status_of(runtime, pk)
    rv = client.post(url, data={"t": token, "event": pk, "csrf_token": good})
    assert 303 == rv.status_code
    assert EventStatus.PENDING == status_of(runtime, pk)


def test_replay_all_of_a_reason_leaves_other_reasons_and_too_old_ones(
    runtime: Runtime,
) -> None:
    """One reason's dead events go back; another reason's stay, and so do the too old."""
    conn_id = add(runtime)
    now = datetime.now(UTC)
    a = add_event(runtime, conn_id, "1", status="dead", last_error="invalid: x")
    b = add_event(runtime, conn_id, "2", status="dead", last_error="too_old: y")
    c = add_event(
        runtime,
        conn_id,
        "3",
        status="dead",
        last_error="invalid: z",
        event_time=now - timedelta(days=8),
    )
    with runtime.sessions.begin() as s:
        result = q.replay_events(s, conn_id, now, status="dead", kind="invalid")
    assert (1, 1) == (result.replayed, result.too_old)
    assert [EventStatus.PENDING, EventStatus.DEAD, EventStatus.DEAD] == [
        status_of(runtime, pk) for pk in (a, b, c)
    ]


def test_replay_gives_physical_store_events_meta_s_62_days(runtime: Runtime) -> None:
    """A store-visit event 20 days old goes back; at 63 days it stays, counted too old."""
    conn_id = add(runtime)
    now = datetime.now(UTC)
    pks = []
    for event_id, days in (("20", 20), ("63", 63)):
        when = now - timedelta(days=days)
        pks.append(
            add_event(
                runtime,
                conn_id,
                event_id,
                status="dead",
                last_error="invalid: x",
                event_time=when,
                payload={
                    **meta_event(event_id, event_time=when),
                    "action_source": "physical_store",
                },
            )
        )
    with runtime.sessions.begin() as s:
        result = q.replay_events(s, conn_id, now, status="dead")
    assert (1, 1) == (result.replayed, result.too_old)
    assert [EventStatus.PENDING, EventStatus.DEAD] == [
        status_of(runtime, pk) for pk in pks
    ]


def status_of(runtime: Runtime, pk: int) -> str:
    with runtime.sessions() as s:
        return str(s.scalar(select(Event.status).where(Event.id == pk)))


# -- settings ------------------------------------------------------------------------------


def test_go_live_clears_the_test_event_code(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Go live empties test_event_code; the page then says the store is live."""
    conn_id = add(runtime, test_event_code="TEST42")
    token = link(settings, conn_id).split("t=", 1)[1]
    url = f"/admin/connections/{conn_id}/settings"
    page = text(client.get(f"{url}?t={token}"))
    rv = client.post(
        url, data={"t": token, "action": "go_live", "csrf_token": csrf(page)}
    )
    assert 303 == rv.status_code
    assert None is connection(runtime, conn_id).test_event_code
    assert "You are live" in text(client.get(rv.headers["Location"]))


@pytest.mark.parametrize(
    ("platform", "store", "form", "saved"),
    [
        pytest.param(
            "shopify",
            SHOP,
            {"value_basis": "excl_tax_and_shipping", "purchase_on": "created"},
            {"value_basis": "excl_tax_and_shipping", "purchase_on": "created"},
            id="shopify",
        ),
        pytest.param(
            "woocommerce",
            WOO,
            {"value_basis": "excl_tax", "on_hold_is_paid": "true"},
            {"value_basis": "excl_tax", "on_hold_is_paid": True},
            id="woocommerce",
        ),
    ],
)
def test_settings_are_saved_through_the_platforms_rules(
    client: Any,
    runtime: Runtime,
    settings: Settings,
    platform: str,
    store: str,
    form: dict[str, str],
    saved: dict[str, Any],
) -> None:
    """The form stores what the platform accepts, defaults removed."""
    conn_id = add(runtime, platform, store)
    token = link(settings, conn_id).split("t=", 1)[1]
    url = f"/admin/connections/{conn_id}/settings"
    page = text(client.get(f"{url}?t={token}"))
    assert "Purchase value sent to Meta" in page
    rv = client.post(url, data={"t": token, "csrf_token": csrf(page), **form})
    assert 303 == rv.status_code
    assert saved == connection(runtime, conn_id).settings


def test_a_setting_the_platform_refuses_is_explained_not_saved(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """Facebook channel ids without a country: refused in words, nothing stored."""
    conn_id = add(runtime)
    token = link(settings, conn_id).split("t=", 1)[1]
    url = f"/admin/connections/{conn_id}/settings"
    page = text(client.get(f"{url}?t={token}"))
    rv = client.post(
        url, data={"t": token, "csrf_token": csrf(page), "content_id": "catalog"}
    )
    assert 400 == rv.status_code
    assert "Catalog country" in text(rv)
    assert {} == connection(runtime, conn_id).settings


def connection(runtime: Runtime, conn_id: str) -> Connection:
    with runtime.sessions() as s:
        return queries.get_connection(s, conn_id)


def test_connections_set_with_an_empty_test_event_code_goes_live(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`connections set ID test_event_code=` leaves test mode (it used to print {} and stay)."""
    conn_id = add(runtime, test_event_code="TEST42")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CONNECTOR_ENCRYPTION_KEYS", ",".join(settings.encryption_keys))
    monkeypatch.setenv("CONNECTOR_INSTANCE_PATH", str(settings.instance_path))
    result = CliRunner().invoke(
        cli, ["connections", "set", conn_id, "test_event_code="]
    )
    assert 0 == result.exit_code, result.output
    assert '"test_event_code": null' in result.output
    assert None is connection(runtime, conn_id).test_event_code
    result = CliRunner().invoke(
        cli, ["connections", "set", conn_id, "test_event_code=TEST7"]
    )
    assert 0 == result.exit_code, result.output
    assert "TEST7" == connection(runtime, conn_id).test_event_code


# -- pixel and quality ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "store", "marker"),
    [
        pytest.param(
            "shopify",
            SHOP,
            "analytics.subscribe(&#39;checkout_completed&#39;",
            id="shopify",
        ),
        pytest.param("woocommerce", WOO, "woocommerce_thankyou", id="woocommerce"),
    ],
)
def test_the_pixel_page_fills_in_the_pixel_id(
    client: Any,
    runtime: Runtime,
    settings: Settings,
    platform: str,
    store: str,
    marker: str,
) -> None:
    """The ready-to-paste code carries this store's pixel id."""
    conn_id = add(runtime, platform, store)
    token = link(settings, conn_id).split("t=", 1)[1]
    page = text(client.get(f"/admin/connections/{conn_id}/pixel?t={token}"))
    assert (
        f"fbq(&#39;init&#39;, &#39;{PIXEL}&#39;)" in page
        or f"META_DEDUP_PIXEL_ID = &#39;{PIXEL}&#39;" in page
    )
    assert marker in page


def test_embedded_pages_load_app_bridge_and_only_shopify_frames_them(
    make_client: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    """An embedded link loads App Bridge with the API key; a standalone one does not."""
    client = make_client(shopify_api_key="the-api-key")
    settings = make_settings(shopify_api_key="the-api-key")
    conn_id = add(client.application.extensions["connector"])
    rv = client.get(link(settings, conn_id, mode="embedded"))
    page = text(rv)
    assert '<meta name="shopify-api-key" content="the-api-key">' in page
    assert (
        '<script src="https://cdn.shopify.com/shopifycloud/app-bridge.js"></script>'
        in page
    )
    assert (
        f"frame-ancestors https://{SHOP} https://admin.shopify.com"
        in rv.headers["Content-Security-Policy"]
    )
    assert "app-bridge.js" not in text(client.get(link(settings, conn_id)))


def test_an_unconfigured_meta_sign_in_names_no_setting_in_a_browser(
    client: Any, runtime: Runtime, settings: Settings
) -> None:
    """An old Connect Meta link on a server without a Meta app: plain words, no variable."""
    conn_id = add(runtime)
    token = sign_admin_link(settings.secret_key, conn_id, datetime.now(UTC))
    rv = client.get(
        f"/meta/connect?connection={conn_id}&token={token}",
        headers={"Accept": "text/html"},
    )
    assert 404 == rv.status_code
    page = text(rv)
    assert "<h1>Not available here</h1>" in page
    assert "Config" not in page


@pytest.mark.parametrize("code", ["", "   ", "X" * 65])
def test_test_mode_needs_a_real_code(
    client: Any, runtime: Runtime, settings: Settings, code: str
) -> None:
    """An empty or over-long code is refused: it never silently goes live or breaks."""
    conn_id = add(runtime, test_event_code="TEST42")
    token = link(settings, conn_id).split("t=", 1)[1]
    url = f"/admin/connections/{conn_id}/settings"
    page = text(client.get(f"{url}?t={token}"))
    rv = client.post(
        url,
        data={
            "t": token,
            "action": "test_mode",
            "test_event_code": code,
            "csrf_token": csrf(page),
        },
    )
    assert 400 == rv.status_code
    assert "TEST42" == connection(runtime, conn_id).test_event_code
