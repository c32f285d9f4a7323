"""A store's dashboard link as an attacker would try it: copied, logged, replayed, framed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connector.config import Settings
from connector.links import STANDALONE_LINK_TTL, sign_dashboard_link
from connector.redact import redact_query
from connector.runtime import Runtime
from connector.web import create_app
from tests.test_dashboard import SHOP, WOO, add, text

OUTSIDE = {"REMOTE_ADDR": "203.0.113.5"}


def token(settings: Settings, conn_id: str, mode: str = "standalone") -> str:
    return sign_dashboard_link(
        settings.secret_key, conn_id, datetime.now(UTC), mode=mode
    )


def test_a_standalone_link_works_once_and_then_only_in_the_browser_that_opened_it(
    runtime: Runtime, settings: Settings
) -> None:
    """The first browser gets the store for a while; the same link elsewhere opens nothing."""
    conn_id = add(runtime, "woocommerce", WOO)
    t = token(settings, conn_id)
    mine = create_app(runtime=runtime).test_client()
    rv = mine.get(f"/admin/connections/{conn_id}?t={t}", environ_base=OUTSIDE)
    assert 200 == rv.status_code
    page = text(rv)
    assert t not in page  # the pages hand on the session, not the link
    # The same browser goes on without the link (its session cookie holds the store)...
    rv = mine.get(f"/admin/connections/{conn_id}/settings", environ_base=OUTSIDE)
    assert 200 == rv.status_code
    # ...while the link, copied to another browser (from a history, a screen, a log), is spent.
    stranger = create_app(runtime=runtime).test_client()
    rv = stranger.get(f"/admin/connections/{conn_id}?t={t}", environ_base=OUTSIDE)
    assert 401 == rv.status_code
    assert "used already" in text(rv)
    assert "Connect Meta" not in rv.get_data(as_text=True)
    rv = stranger.get(f"/admin/connections/{conn_id}/settings", environ_base=OUTSIDE)
    assert rv.status_code in {401, 404}  # 404: no operator password is set


def test_two_links_signed_in_the_same_second_are_spent_apart(
    runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime, "woocommerce", WOO)
    now = datetime.now(UTC)
    first, second = (
        sign_dashboard_link(settings.secret_key, conn_id, now) for _ in range(2)
    )
    assert first != second
    for t in (first, second):
        browser = create_app(runtime=runtime).test_client()
        rv = browser.get(f"/admin/connections/{conn_id}?t={t}", environ_base=OUTSIDE)
        assert 200 == rv.status_code


def test_a_standalone_link_waits_minutes_not_hours_for_its_first_use(
    runtime: Runtime, settings: Settings
) -> None:
    conn_id = add(runtime, "woocommerce", WOO)
    expiry = int(token(settings, conn_id).split(".", 1)[0])
    now = datetime.now(UTC).timestamp()
    assert expiry - now <= STANDALONE_LINK_TTL.total_seconds() + 1
    assert STANDALONE_LINK_TTL <= timedelta(minutes=15)


def test_one_browser_may_hold_two_stores_and_neither_opens_the_third(
    runtime: Runtime, settings: Settings
) -> None:
    a = add(runtime, "woocommerce", WOO)
    b = add(runtime, "woocommerce", "https://second.example")
    c = add(runtime, "woocommerce", "https://third.example")
    browser = create_app(runtime=runtime).test_client()
    for conn_id in (a, b):
        rv = browser.get(
            f"/admin/connections/{conn_id}?t={token(settings, conn_id)}",
            environ_base=OUTSIDE,
        )
        assert 200 == rv.status_code
    assert (
        200 == browser.get(f"/admin/connections/{a}", environ_base=OUTSIDE).status_code
    )
    rv = browser.get(f"/admin/connections/{c}", environ_base=OUTSIDE)
    assert rv.status_code in {401, 404}  # 404: no operator password is set


def test_link_and_form_tokens_never_reach_a_log_line() -> None:
    line = (
        '203.0.113.5 "GET /admin/connections/abc?t=1796015363.standalone.0fefa4a2 HTTP/1.1" '
        "200 csrf_token=IkpXVCJ9.secretpart"
    )
    redacted = redact_query(line)
    assert "0fefa4a2" not in redacted
    assert "secretpart" not in redacted
    assert "/admin/connections/abc" in redacted


def test_the_operators_pages_of_a_shopify_store_cannot_be_framed(
    runtime: Runtime, make_settings: Any
) -> None:
    """The operator's buttons act with the operator's password: no shop may frame them."""
    rt = Runtime.from_settings(make_settings(admin_password="op-pass"))
    try:
        conn_id = add(rt, "shopify", SHOP)
        client = create_app(runtime=rt).test_client()
        for page in ("", "/settings", "/events", "/quality", "/pixel"):
            rv = client.get(
                f"/admin/connections/{conn_id}{page}",
                auth=("operator", "op-pass"),
                environ_base=OUTSIDE,
            )
            assert 200 == rv.status_code, page
            policy = rv.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in policy, page
            assert SHOP not in policy
    finally:
        rt.close()


def test_an_event_id_beyond_any_row_is_not_found(
    runtime: Runtime, make_settings: Any
) -> None:
    rt = Runtime.from_settings(make_settings(admin_password="op-pass"))
    try:
        conn_id = add(rt, "woocommerce", WOO)
        client = create_app(runtime=rt).test_client()
        for pk in ("9223372036854775807", "9223372036854775808", "9" * 30):
            rv = client.get(
                f"/admin/connections/{conn_id}/events/{pk}",
                auth=("operator", "op-pass"),
                environ_base=OUTSIDE,
            )
            assert 404 == rv.status_code, pk
    finally:
        rt.close()
