"""Log output: JSON lines with the request id and ids of the work at hand, never a secret."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector import logs
from connector.runtime import Runtime
from connector.web import create_app
from tests.fakes.graph import FakeGraph
from tests.fakes.server import LiveServer
from tests.test_dispatcher import (
    add_connection,
    add_events,
    drain,
    graph,  # noqa: F401 - the fixture
    worker_runtime,  # noqa: F401 - the fixture
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Route every log record through the connector's JSON handler into a buffer."""
    buf = io.StringIO()
    handler = logs.configure("json", process="web", stream=buf, force=True)
    assert handler is not None

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buf.getvalue().splitlines()]

    try:
        yield read
    finally:
        logging.getLogger().removeHandler(handler)
        logs.clear()


@pytest.fixture
def client(runtime: Runtime) -> Any:
    app = create_app(runtime=runtime)

    @app.get("/_log")
    def _log() -> str:
        logging.getLogger("connector.test").info(
            "called back https://graph.example/x?access_token=EAAB-secret-token&y=1"
        )
        return "ok"

    @app.get("/_boom")
    def _boom() -> str:
        raise RuntimeError("GET https://graph.example/x?code=oauth-code-123 failed")

    return app.test_client()


def test_a_line_is_one_json_object_with_the_routers_request_id(
    client: Any, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """Heroku's X-Request-Id is reused on every line of the request and echoed back."""
    rid = "7f9c8d1e-5b2a-4c3d-9e8f-0a1b2c3d4e5f"
    rv = client.get("/_log", headers={"X-Request-Id": rid})
    assert rid == rv.headers["X-Request-Id"]
    (line,) = [r for r in json_lines() if r["logger"] == "connector.test"]
    assert rid == line["request_id"]
    assert {"time", "level", "logger", "message", "process_type"} <= set(line)
    assert ("INFO", "web") == (line["level"], line["process_type"])


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(None, id="absent"),
        pytest.param("two words", id="space"),
        pytest.param("x" * 201, id="too-long"),
        pytest.param("id\u00e9", id="non-ascii"),
    ],
)
def test_a_missing_or_odd_request_id_is_replaced_by_a_new_one(
    client: Any, json_lines: Callable[[], list[dict[str, Any]]], given: str | None
) -> None:
    """Only a well-formed id is trusted; otherwise one is generated, logged and echoed."""
    headers = {} if given is None else {"X-Request-Id": given}
    rv = client.get("/_log", headers=headers)
    rid = rv.headers["X-Request-Id"]
    assert rid != given
    assert len(rid) == 32
    (line,) = [r for r in json_lines() if r["logger"] == "connector.test"]
    assert rid == line["request_id"]


def test_two_requests_never_share_an_id(
    client: Any, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """The id is bound per request and unbound after it."""
    a = client.get("/_log").headers["X-Request-Id"]
    b = client.get("/_log").headers["X-Request-Id"]
    assert a != b
    logging.getLogger("connector.test").info("after the requests")
    ids = [r.get("request_id") for r in json_lines() if r["logger"] == "connector.test"]
    assert [a, b, None] == ids


def test_secrets_are_redacted_before_the_line_is_written(
    client: Any, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """Tokens and codes in messages and in tracebacks never reach the output."""
    client.get("/_log")
    client.get("/_boom")
    text = json.dumps(json_lines())
    assert "EAAB-secret-token" not in text
    assert "oauth-code-123" not in text
    assert "access_token=[redacted]" in text
    assert "code=[redacted]" in text


def test_the_worker_binds_the_connection_and_event_ids(
    worker_runtime: Runtime,  # noqa: F811 - the fixture
    graph: tuple[FakeGraph, LiveServer],  # noqa: F811 - the fixture
    json_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    """A send's log line says which connection and which events it was about."""
    conn_id = add_connection(worker_runtime)
    ids = add_events(worker_runtime, conn_id, 3)
    drain(worker_runtime)
    sent = [r for r in json_lines() if "events sent" in r["message"]]
    assert sent
    assert conn_id == sent[0]["connection_id"]
    assert sorted(ids) == sorted(sent[0]["event_ids"])
    stopped = [r for r in json_lines() if "stopped" in r["message"]]
    assert "connection_id" not in stopped[-1]


def test_only_known_keys_can_be_bound() -> None:
    """The context is a closed set of ids: nothing personal can be bound by mistake."""
    with pytest.raises(ValueError, match="email"):
        logs.bind(email="shopper@example.com")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONNECTOR_", "DATABASE_URL", "PROMETHEUS_"))
    }
    env["CONNECTOR_INSTANCE_PATH"] = str(tmp_path / "instance")
    env.update(extra)
    return env


def test_the_worker_process_writes_json_lines_to_stdout(tmp_path: Path) -> None:
    """`connector worker` with CONNECTOR_LOG_FORMAT=json: every stdout line is a JSON object."""
    env = _env(tmp_path, CONNECTOR_LOG_FORMAT="json")
    _run(["db", "upgrade"], env)
    out = _run(["worker", "--drain"], env).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    log_lines = [r for r in lines if "logger" in r]
    assert log_lines
    assert {"worker"} == {r["process_type"] for r in log_lines}


def test_development_logs_stay_readable_text(tmp_path: Path) -> None:
    """Without CONNECTOR_LOG_FORMAT, development logs are text lines for a person."""
    env = _env(tmp_path)
    _run(["db", "upgrade"], env)
    out = _run(["worker", "--drain"], env).stdout
    lines = out.splitlines()
    assert not any(line.startswith('{"level"') for line in lines)
    assert any(" INFO connector.dispatcher worker " in line for line in lines)
    assert not any("Context impl" in line for line in lines)


def test_gunicorns_access_log_can_go_through_the_same_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The logconfig_dict for gunicorn renders its access lines as redacted JSON on stdout."""
    import logging.config

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logging.config.dictConfig(logs.gunicorn_logconfig_dict("json"))
        logging.getLogger("gunicorn.access").info(
            '%(h)s "%(r)s" %(s)s',
            {
                "h": "10.1.2.3",
                "r": "GET /shopify/callback?code=abc123&shop=x HTTP/1.1",
                "s": "302",
            },
        )
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        for name in ("gunicorn.access", "gunicorn.error"):
            logging.getLogger(name).handlers.clear()
        root.setLevel(saved[1])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "gunicorn.access" == line["logger"]
    assert "abc123" not in line["message"]
    assert "code=[redacted]" in line["message"]


def test_gunicorn_access_atoms_keep_their_default_for_a_missing_header() -> None:
    """The access format names X-Request-Id; a request without it still logs a line, redacted."""
    from gunicorn.glogging import SafeAtoms  # type: ignore[import-untyped]

    from connector.redact import RedactSecrets

    atoms = SafeAtoms({"r": "GET /meta/connect?token=s3cret HTTP/1.1", "s": "200"})
    record = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '"%(r)s" %(s)s rid=%({x-request-id}i)s',
        (),
        None,
    )
    record.args = atoms
    assert RedactSecrets().filter(record)
    line = record.getMessage()
    assert "s3cret" not in line
    assert line.endswith("200 rid=-")
