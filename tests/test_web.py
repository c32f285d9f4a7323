"""The web shell: health, metrics, body limit, errors as JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.config import Settings
from connector.runtime import Runtime
from connector.web import create_app


def test_healthz_answers_ok(client: Any) -> None:
    """With the database reachable, /healthz is 200, with no worker running here."""
    rv = client.get("/healthz")
    assert 200 == rv.status_code
    assert {
        "status": "ok",
        "workers": {"alive": 0, "stale": 0, "last_beat_seconds": None},
    } == rv.get_json()


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """Apps with their own settings; their pools are closed after the test."""
    runtimes: list[Runtime] = []

    def factory(**overrides: Any) -> Any:
        runtimes.append(Runtime.from_settings(make_settings(**overrides)))
        return create_app(runtime=runtimes[-1])

    yield factory
    for rt in runtimes:
        rt.close()


def test_healthz_reports_a_dead_database(make_app: Callable[..., Any]) -> None:
    """With the database unreachable, /healthz is 503 with a reason, not a 500."""
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    rv = app.test_client().get("/healthz")
    assert 503 == rv.status_code
    assert "database unreachable" == rv.get_json()["reason"]


def test_metrics_are_prometheus_text(client: Any) -> None:
    """/metrics lists the outbox by status in Prometheus' text format."""
    rv = client.get("/metrics")
    assert 200 == rv.status_code
    assert rv.mimetype == "text/plain"
    assert 'connector_outbox_events{status="pending"} 0.0' in rv.get_data(as_text=True)


def test_webhook_bodies_over_the_webhook_limit_get_413(client: Any) -> None:
    """A webhook body over WEBHOOK_MAX_BODY_BYTES is refused before anything reads it."""
    from connector.web import WEBHOOK_MAX_BODY_BYTES

    rv = client.post(
        "/webhooks/shopify",
        data=b"{" + b" " * WEBHOOK_MAX_BODY_BYTES + b"}",
        content_type="application/json",
    )
    assert 413 == rv.status_code
    assert "Request Entity Too Large" == rv.get_json()["error"]


def test_unknown_platform_is_a_json_404(client: Any) -> None:
    """Errors are JSON with a name and a detail."""
    rv = client.post("/webhooks/nosuch", data=b"{}")
    assert 404 == rv.status_code
    assert {
        "error": "NotFound",
        "detail": "no platform named 'nosuch'",
    } == rv.get_json()


def test_admin_page_is_closed_without_a_password(client: Any, runtime: Runtime) -> None:
    """Outside local development the admin page needs ADMIN_PASSWORD."""
    rv = client.get("/admin", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert 404 == rv.status_code


def test_admin_page_with_password(make_app: Callable[..., Any]) -> None:
    """With ADMIN_PASSWORD, Basic auth opens the page and a wrong password does not."""
    app = make_app(admin_password="pw")
    client = app.test_client()
    assert 401 == client.get("/admin", auth=("admin", "nope")).status_code
    rv = client.get("/admin", auth=("admin", "pw"))
    assert 200 == rv.status_code
    assert b"<h1>Stores</h1>" in rv.data
