"""The multiprocess metrics folder: private and fresh per server run (gunicorn.conf.py's
``on_starting``), dead workers' files dropped (``child_exit``), and a folder that disappears
(a cleaner of the temporary folder) costs the counts written so far, never a 500."""

from __future__ import annotations

import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector import metrics

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "gunicorn.conf.py"
ENV = "PROMETHEUS_MULTIPROC_DIR"


def _conf() -> dict[str, Any]:
    return runpy.run_path(str(CONF))


def test_each_server_run_gets_a_fresh_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    folders = []
    for _ in range(2):
        monkeypatch.delenv(ENV, raising=False)
        _conf()["on_starting"](object())
        folders.append(Path(os.environ[ENV]))
    first, second = folders
    assert first != second
    for folder in folders:
        assert folder.parent == tmp_path
        assert folder.is_dir()
        assert not folder.is_symlink()
        assert 0o700 == stat.S_IMODE(folder.stat().st_mode)
        assert [] == list(folder.iterdir())
    # the name cannot be guessed from the process id
    assert str(os.getpid()) not in first.name.split("-")


def test_a_configured_folder_is_emptied_of_the_last_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_4242.db").write_bytes(b"old counts")
    (folder / "README").write_text("not ours")
    monkeypatch.setenv(ENV, str(folder))
    _conf()["on_starting"](object())
    assert str(folder) == os.environ[ENV]
    assert ["README"] == sorted(p.name for p in folder.iterdir())


def test_a_missing_configured_folder_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "not-yet"
    monkeypatch.setenv(ENV, str(folder))
    _conf()["on_starting"](object())
    assert folder.is_dir()


_CHILD_EXIT = """
import runpy, types
runpy.run_path("gunicorn.conf.py")["child_exit"](None, types.SimpleNamespace(pid=4242))
"""


def test_child_exit_drops_the_dead_workers_live_gauges(tmp_path: Path) -> None:
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_4343.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")
    subprocess.run(
        [sys.executable, "-c", _CHILD_EXIT],
        env={**os.environ, ENV: str(tmp_path)},
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    left = {p.name for p in tmp_path.iterdir()}
    assert "gauge_livesum_4242.db" not in left
    assert {"counter_4242.db", "gauge_livesum_4343.db"} <= left


def test_metrics_answer_when_the_folder_has_gone(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route answers 200 with the database gauges and makes the folder again."""
    gone = tmp_path / "gone"
    monkeypatch.setattr(metrics, "MULTIPROC_DIR", str(gone))
    for _ in range(2):
        rv = client.get("/metrics")
        assert 200 == rv.status_code, rv.get_data(as_text=True)
        names = {
            f.name for f in text_string_to_metric_families(rv.get_data(as_text=True))
        }
        assert "connector_outbox_events" in names
        assert gone.is_dir()
        gone.rmdir()


_VANISH = """
import shutil, sys
from connector import metrics
metrics.count_webhook("shopify", "orders/paid", "accepted")
shutil.rmtree(metrics.MULTIPROC_DIR)
print(len(metrics.render()))
metrics.count_webhook("woocommerce", "order.updated", "accepted")
metrics.count_events("sent", 2, reason="accepted")
metrics.observe_graph_request(0.2, 2, "ok")
sys.stdout.write(metrics.render().decode())
"""


def test_counting_goes_on_after_the_folder_has_gone(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir(mode=0o700)
    out = subprocess.run(
        [sys.executable, "-c", _VANISH],
        env={**os.environ, ENV: str(folder)},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = out.stdout.split("\n", 1)[1]
    samples = {
        (s.name, s.labels.get("platform")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert 1 == samples[("connector_webhooks_total", "woocommerce")]
    assert 1 == samples[("connector_graph_requests_total", None)]
    assert folder.is_dir()
    assert 1 == out.stderr.count("metrics:"), out.stderr


def test_the_folder_a_run_made_goes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.delenv(ENV, raising=False)
    conf = _conf()
    conf["on_starting"](object())
    made = Path(os.environ[ENV])
    (made / "counter_1.db").write_bytes(b"")
    conf["on_exit"](object())
    assert not made.exists()


def test_a_configured_folder_stays_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, str(tmp_path))
    conf = _conf()
    conf["on_starting"](object())
    conf["on_exit"](object())
    assert tmp_path.is_dir()
