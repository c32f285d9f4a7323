"""The command line from any folder: the same development instance, and one line, not a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connector.config import APP_NAME, Settings, default_instance_path

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONNECTOR_", "SHOPIFY_", "META_", "PROMETHEUS_"))
        and k not in {"DATABASE_URL", "SECRET_KEY", "PYTHONPATH"}
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages as a wheel install lays them out: no project folder around them."""
    site = tmp_path_factory.mktemp("site-packages")
    for name in ("connector", "adapters", "migrations"):
        shutil.copytree(
            ROOT / name, site / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return site


def connector(
    args: list[str], *, cwd: Path, site: Path, data_home: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        cwd=cwd,
        env=_clean_env(PYTHONPATH=str(site), XDG_DATA_HOME=str(data_home)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_events_list_from_another_folder_finds_the_same_instance(
    installed: Path, tmp_path: Path
) -> None:
    """Migrated from one folder, listed from another: same database, same keys, no new instance."""
    data_home = tmp_path / "data"
    here, there = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    there.mkdir()
    up = connector(["db", "upgrade"], cwd=here, site=installed, data_home=data_home)
    assert 0 == up.returncode, up.stderr
    listed = connector(
        ["events", "list"], cwd=there, site=installed, data_home=data_home
    )
    assert 0 == listed.returncode, listed.stderr
    assert "no events" in listed.stderr
    assert (data_home / APP_NAME / "connector.db").exists()
    assert (data_home / APP_NAME / "secrets.json").exists()
    assert not (here / "instance").exists()
    assert not (there / "instance").exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["events", "list"], id="events-list"),
        pytest.param(["connections", "list"], id="connections-list"),
        pytest.param(["worker", "--drain"], id="worker"),
    ],
)
def test_an_unmigrated_database_is_one_line_saying_what_to_run(
    installed: Path, tmp_path: Path, args: list[str]
) -> None:
    """No 60-line traceback: one line naming `connector db upgrade`, and exit status 1."""
    rv = connector(args, cwd=tmp_path, site=installed, data_home=tmp_path / "data")
    assert 1 == rv.returncode
    errors = [line for line in rv.stderr.splitlines() if line.startswith("Error:")]
    assert 1 == len(errors), rv.stderr
    assert "connector db upgrade" in errors[0]
    assert "Traceback" not in rv.stderr + rv.stdout


def test_an_unreachable_database_is_one_line(installed: Path, tmp_path: Path) -> None:
    """A database that does not answer is named in one line too."""
    rv = subprocess.run(
        [sys.executable, "-m", "connector.cli", "events", "list"],
        cwd=tmp_path,
        env=_clean_env(
            PYTHONPATH=str(installed),
            XDG_DATA_HOME=str(tmp_path / "data"),
            DATABASE_URL="postgresql://nobody@127.0.0.1:9/none",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 1 == rv.returncode
    assert "Traceback" not in rv.stderr
    errors = [line for line in rv.stderr.splitlines() if line.startswith("Error:")]
    assert 1 == len(errors), rv.stderr
    assert errors[0].startswith("Error: cannot read the database at postgresql")
    assert "nobody@127.0.0.1:9" in errors[0]


def test_a_source_checkout_keeps_its_instance_folder_from_any_folder(
    tmp_path: Path,
) -> None:
    """Running from the project's source, the instance is the project's, wherever the shell is."""
    code = "from connector.config import Settings; print(Settings.from_env({}).instance_path)"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=_clean_env(PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        for cwd in (ROOT, tmp_path, ROOT / "tests")
    }
    assert {str(ROOT / "instance")} == seen


def test_connector_instance_path_still_wins(tmp_path: Path) -> None:
    """An explicit folder is used as given."""
    settings = Settings.from_env({"CONNECTOR_INSTANCE_PATH": str(tmp_path / "mine")})
    assert tmp_path / "mine" == settings.instance_path


def test_the_user_data_folder_follows_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a source checkout the instance is $XDG_DATA_HOME/capi-connector."""
    monkeypatch.setattr("connector.config.source_checkout", lambda: None)
    assert tmp_path / APP_NAME == default_instance_path(
        {"XDG_DATA_HOME": str(tmp_path)}
    )
