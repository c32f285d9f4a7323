"""GET /metrics: prometheus-client's exposition, parsed by Prometheus' own parser."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.shopify.signature import sign_body
from connector.config import Settings
from connector.runtime import Runtime
from connector.web import create_app
from tests.conftest import fixture_bytes
from tests.fakes.graph import FakeGraph
from tests.fakes.server import LiveServer
from tests.test_dispatcher import (
    _unhashed_email,
    add_connection,
    add_events,
    drain,
    graph,  # noqa: F401 - the fixture
    worker_runtime,  # noqa: F401 - the fixture
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "shpss_metrics"
SHOP = "metrics-shop.myshopify.com"

Families = dict[str, Any]


def scrape(client: Any, **kwargs: Any) -> Families:
    rv = client.get("/metrics", **kwargs)
    assert 200 == rv.status_code, rv.get_data(as_text=True)
    return {
        f.name: f for f in text_string_to_metric_families(rv.get_data(as_text=True))
    }


def value(families: Families, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` with these labels (0 when there is none yet)."""
    return sum(
        float(s.value)
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(name="settings")
def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(shopify_api_secret=SECRET)


def test_metrics_parse_and_hold_every_family(client: Any) -> None:
    """The counters, histograms and gauges the README lists are all there, with their types."""
    families = scrape(client)
    expected = {
        "connector_webhooks": "counter",
        "connector_events": "counter",
        "connector_graph_requests": "counter",
        "connector_graph_request_seconds": "histogram",
        "connector_graph_request_events": "histogram",
        "connector_outbox_events": "gauge",
        "connector_outbox_oldest_pending_seconds": "gauge",
        "connector_connections": "gauge",
        "connector_workers": "gauge",
    }
    assert expected == {n: families[n].type for n in expected}


def test_worker_liveness_is_a_gauge_as_healthz_shows_it(
    client: Any, runtime: Runtime
) -> None:
    """One worker beat a moment ago, one long ago: one alive, one stale, the newest beat's age."""
    from connector.store import queries

    now = datetime.now(UTC)
    assert "connector_worker_last_beat_seconds" not in scrape(client)
    with runtime.sessions.begin() as session:
        queries.beat(
            session, "fresh", now=now - timedelta(seconds=3), claimed=0, sent=0
        )
        queries.beat(session, "gone", now=now - timedelta(hours=2), claimed=0, sent=0)
    families = scrape(client)
    assert 1 == value(families, "connector_workers", state="alive")
    assert 1 == value(families, "connector_workers", state="stale")
    age = value(families, "connector_worker_last_beat_seconds")
    assert 3 <= age < 60
    health = client.get("/healthz").get_json()["workers"]
    assert (health["alive"], health["stale"]) == (1, 1)


def _deliver(client: Any, body: bytes, *, secret: str = SECRET) -> int:
    rv = client.post(
        "/webhooks/shopify",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Hmac-Sha256": sign_body(body, secret.encode()),
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-API-Version": "2026-07",
        },
    )
    return int(rv.status_code)


def test_webhooks_are_counted_by_platform_topic_and_outcome(
    client: Any, runtime: Runtime
) -> None:
    """A signed paid order counts as accepted, a forged one as unauthorized."""
    add_connection(runtime, SHOP)
    body = fixture_bytes("shopify/order.json")
    labels = {"platform": "shopify", "topic": "orders/paid"}
    before = scrape(client)
    assert 200 == _deliver(client, body)
    assert 401 == _deliver(client, body, secret="not-the-secret")
    after = scrape(client)
    for outcome in ("accepted", "unauthorized"):
        assert 1 == value(
            after, "connector_webhooks_total", outcome=outcome, **labels
        ) - value(before, "connector_webhooks_total", outcome=outcome, **labels)


def test_a_made_up_platform_in_the_path_makes_no_new_label(client: Any) -> None:
    """The URL is the sender's to choose: an unknown platform is counted as `unknown`."""
    before = scrape(client)
    client.post("/webhooks/x-" + uuid.uuid4().hex, data=b"{}")
    after = scrape(client)
    names = {
        s.labels.get("platform")
        for s in after["connector_webhooks"].samples
        if s.labels.get("platform")
    }
    assert not any(n.startswith("x-") for n in names)
    assert 1 == value(after, "connector_webhooks_total", platform="unknown") - value(
        before, "connector_webhooks_total", platform="unknown"
    )


def test_sends_are_counted_with_latency_and_batch_size(
    worker_runtime: Runtime,  # noqa: F811 - the fixture
    graph: tuple[FakeGraph, LiveServer],  # noqa: F811 - the fixture
) -> None:
    """Events sent and dead (with Meta's code), requests timed and sized."""
    client = create_app(runtime=worker_runtime).test_client()
    conn_id = add_connection(worker_runtime)
    before = scrape(client)
    add_events(worker_runtime, conn_id, 40, payload=_unhashed_email)
    drain(worker_runtime)
    after = scrape(client)

    def delta(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert 39 == delta("connector_events_total", outcome="sent", reason="accepted")
    assert 1 == delta(
        "connector_events_total", outcome="dead", reason="invalid", code="100"
    )
    requests = delta("connector_graph_request_seconds_count")
    assert requests == delta("connector_graph_request_events_count")
    assert requests == delta("connector_graph_requests_total")
    assert requests >= 2  # the batch was refused, then split
    assert 1 <= delta("connector_graph_requests_total", outcome="refused", code="100")
    # The sizes of all requests: the refused ones count their events too.
    assert delta("connector_graph_request_events_sum") >= 40


def test_outbox_gauges_read_pending_and_the_oldest_wait(
    client: Any, runtime: Runtime
) -> None:
    """Pending rows are counted, and the longest-due one's wait is reported in seconds."""
    conn_id = add_connection(runtime)
    add_events(
        runtime, conn_id, 3, next_attempt_at=datetime.now(UTC) - timedelta(hours=1)
    )
    families = scrape(client)
    assert 3 == value(families, "connector_outbox_events", status="pending")
    assert 0 == value(families, "connector_outbox_events", status="dead")
    assert value(families, "connector_outbox_oldest_pending_seconds") >= 3600


def _basic(password: str) -> dict[str, str]:
    raw = base64.b64encode(f"ops:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.mark.parametrize(
    ("env", "token", "password", "headers", "status"),
    [
        pytest.param("development", None, None, {}, 200, id="development-is-open"),
        pytest.param("test", None, None, {}, 200, id="test-is-open"),
        pytest.param(
            "production",
            None,
            None,
            {},
            404,
            id="production-without-credentials-hides-it",
        ),
        pytest.param("production", "tok-1", "pw-1", {}, 401, id="no-header"),
        pytest.param(
            "production",
            "tok-1",
            "pw-1",
            {"Authorization": "Bearer tok-1"},
            200,
            id="operator-token",
        ),
        pytest.param(
            "production",
            "tok-1",
            "pw-1",
            {"Authorization": "Bearer tok-2"},
            401,
            id="wrong-token",
        ),
        pytest.param(
            "production", "tok-1", "pw-1", _basic("pw-1"), 200, id="admin-password"
        ),
        pytest.param(
            "production", "tok-1", "pw-1", _basic("pw-2"), 401, id="wrong-password"
        ),
        pytest.param(
            "production",
            None,
            "pw-1",
            {"Authorization": "Bearer pw-1"},
            401,
            id="password-is-not-a-token",
        ),
        pytest.param(
            "production",
            "tok-1",
            None,
            _basic("tok-1"),
            401,
            id="token-is-not-a-password",
        ),
    ],
)
def test_metrics_need_credentials_in_production(
    runtime: Runtime,
    make_settings: Callable[..., Settings],
    env: str,
    token: str | None,
    password: str | None,
    headers: dict[str, str],
    status: int,
) -> None:
    """Production asks for Bearer METRICS_TOKEN or Basic ADMIN_PASSWORD; development does not."""
    settings = make_settings(env=env, metrics_token=token, admin_password=password)
    from dataclasses import replace

    client = create_app(runtime=replace(runtime, settings=settings)).test_client()
    rv = client.get("/metrics", headers=headers)
    assert status == rv.status_code
    if status == 401:
        assert "Bearer" in rv.headers["WWW-Authenticate"]
        assert "connector_" not in rv.get_data(as_text=True)


_COUNT_ONE = """
import sys
from connector import metrics
metrics.count_webhook("shopify", "orders/paid", "accepted")
print(metrics.MULTIPROC_DIR)
"""
_RENDER = """
from connector import metrics
print(metrics.render().decode())
"""


def test_several_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR shared, one scrape sums what every process counted."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", _COUNT_ONE],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert str(tmp_path) == out.stdout.strip()
    text = subprocess.run(
        [sys.executable, "-c", _RENDER],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert 3 == value(
        families, "connector_webhooks_total", platform="shopify", outcome="accepted"
    )


def test_a_gunicorn_worker_without_the_variable_shares_its_masters_folder(
    tmp_path: Path,
) -> None:
    """Without gunicorn.conf.py, a worker's folder is named after its master (pid and start
    time) and is private: a real folder of this user, mode 0700."""
    code = (
        "import sys, os, json, gunicorn.arbiter\n"
        "from connector import metrics\n"
        "print(json.dumps([metrics.MULTIPROC_DIR, os.getppid(),"
        " metrics._start_time(os.getppid())]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    folder, ppid, started = json.loads(out)
    assert started
    assert str(tmp_path / f"capi-connector-metrics-{ppid}-{started}") == folder
    assert Path(folder).is_dir()
    assert 0o700 == stat.S_IMODE(Path(folder).stat().st_mode)


@pytest.mark.parametrize("planted", ["open-folder", "link", "file"])
def test_a_worker_never_uses_a_folder_someone_planted_at_its_name(
    tmp_path: Path, planted: str
) -> None:
    """A folder open to others, a link or a file at the predictable name is not counted into."""
    from connector.metrics import _start_time

    name = f"capi-connector-metrics-{os.getpid()}-{_start_time(os.getpid())}"
    target = tmp_path / name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if planted == "open-folder":
        target.mkdir()
        target.chmod(0o777)
    elif planted == "link":
        target.symlink_to(elsewhere)
    else:
        target.write_text("")
    code = (
        "import gunicorn.arbiter\n"
        "from connector import metrics\n"
        "metrics.count_webhook('shopify', 'orders/paid', 'accepted')\n"
        "print(metrics.MULTIPROC_DIR)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "None" == out.stdout.strip()
    assert "not a private folder" in out.stderr
    assert [] == list(elsewhere.iterdir())
    if planted == "open-folder":
        assert [] == list(target.iterdir())


def test_a_gunicorn_worker_counts_into_the_shared_folder(tmp_path: Path) -> None:
    """Loaded as gunicorn loads the app (client library imported first), counts reach the folder."""
    code = (
        "import gunicorn.arbiter, prometheus_client\n"
        "import connector.web.health\n"
        "from connector import metrics\n"
        "metrics.count_webhook('shopify', 'orders/paid', 'accepted')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)
    for _ in range(2):  # two workers of the same master
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    (folder,) = tmp_path.glob("capi-connector-metrics-*")
    text = subprocess.run(
        [sys.executable, "-c", _RENDER],
        env={**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert 2 == value(
        families, "connector_webhooks_total", platform="shopify", outcome="accepted"
    )
