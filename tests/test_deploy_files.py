"""The files a Heroku-like host reads: requirements.txt, .python-version, app.json, Procfile."""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from connector.config import Settings
from connector.crypto import KeyRing

ROOT = Path(__file__).resolve().parent.parent

# Heroku's app.json schema, field by field as its reference documents them
# (https://devcenter.heroku.com/articles/app-json-schema): every key is optional; ``name`` is a
# string of at most 30 characters; ``env`` maps a variable to a string or to an object with
# description, value, required and generator (only "secret" exists); ``formation`` maps a
# process type to quantity and size; ``addons`` holds plan names or objects with plan, as,
# options; ``buildpacks`` holds objects with a url; ``scripts`` maps postdeploy and
# pr-predestroy to commands.
_STRING_ARRAY = {"type": "array", "items": {"type": "string"}}
_SCRIPTS = {
    "type": "object",
    "properties": {
        "postdeploy": {"type": "string"},
        "pr-predestroy": {"type": "string"},
        "test-setup": {"type": "string"},
        "test": {"type": "string"},
    },
    "additionalProperties": False,
}
_ENV_VALUE = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "value": {"type": "string"},
                "required": {"type": "boolean"},
                "generator": {"enum": ["secret"]},
            },
            "additionalProperties": False,
        },
    ]
}
_FORMATION = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "quantity": {"type": "integer", "minimum": 0},
            "size": {"type": "string"},
        },
        "required": ["quantity"],
        "additionalProperties": False,
    },
}
_ADDON = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "plan": {"type": "string"},
                "as": {"type": "string"},
                "options": {"type": "object"},
            },
            "required": ["plan"],
            "additionalProperties": False,
        },
    ]
}
APP_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 30},
        "description": {"type": "string"},
        "keywords": _STRING_ARRAY,
        "website": {"type": "string", "pattern": "^https?://"},
        "repository": {"type": "string"},
        "logo": {"type": "string", "pattern": "^https?://"},
        "success_url": {"type": "string"},
        "scripts": _SCRIPTS,
        "env": {"type": "object", "additionalProperties": _ENV_VALUE},
        "formation": _FORMATION,
        "image": {"type": "string"},
        "addons": {"type": "array", "items": _ADDON},
        "buildpacks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string", "minLength": 1}},
                "required": ["url"],
                "additionalProperties": False,
            },
        },
        "environments": {"type": "object"},
        "stack": {"type": "string"},
    },
    "additionalProperties": False,
}


def app_json() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return doc


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(
        (kind.strip(), command.strip())
        for kind, _, command in (line.partition(":") for line in lines if line.strip())
    )


def test_app_json_validates_against_herokus_schema() -> None:
    """Every field of app.json has the name and type Heroku's schema documents."""
    errors = sorted(
        Draft202012Validator(APP_JSON_SCHEMA).iter_errors(app_json()), key=str
    )
    assert [] == [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"name": "x" * 31}, id="name-over-30-characters"),
        pytest.param({"env": {"A": {"generator": "uuid"}}}, id="unknown-generator"),
        pytest.param({"formation": {"web": {"quantity": "1"}}}, id="quantity-as-text"),
        pytest.param({"addons": [{"as": "DB"}]}, id="addon-without-plan"),
        pytest.param({"buildpack": [{"url": "heroku/python"}]}, id="misspelt-key"),
    ],
)
def test_the_schema_check_catches_what_heroku_would_refuse(
    broken: dict[str, Any],
) -> None:
    """The transcribed schema is strict enough to fail on a wrong field."""
    assert not Draft202012Validator(APP_JSON_SCHEMA).is_valid({**app_json(), **broken})


def test_app_json_runs_both_processes_on_postgresql() -> None:
    """One-click deploy starts a web and a worker process and provisions PostgreSQL."""
    doc = app_json()
    assert {"web", "worker"} <= set(doc["formation"])
    assert all(p["quantity"] >= 1 for p in doc["formation"].values())
    plans = [a if isinstance(a, str) else a["plan"] for a in doc["addons"]]
    assert any(p.split(":")[0] == "heroku-postgresql" for p in plans)
    assert {"url": "heroku/python"} in doc["buildpacks"]
    assert set(doc["formation"]) <= set(procfile())


def test_every_app_json_setting_is_described() -> None:
    """A person deploying sees what each setting is for."""
    for name, spec in app_json()["env"].items():
        assert isinstance(spec, dict), name
        assert spec.get("description"), name


def _deployed_environment(doc: dict[str, Any]) -> dict[str, str]:
    """The config vars a one-click deploy sets: generated secrets, defaults, and what a person types."""
    environ: dict[str, str] = {}
    for name, spec in doc["env"].items():
        if spec.get("generator") == "secret":
            environ[name] = secrets.token_hex(32)  # what the host's generator makes
        elif "value" in spec:
            environ[name] = spec["value"]
    environ["APP_URL"] = "https://my-connector.herokuapp.com"
    environ["DATABASE_URL"] = "postgres://u:p@db.example:5432/d"  # the add-on sets it
    return environ


def test_a_one_click_deploy_starts_in_production_without_a_manual_step() -> None:
    """Generated secrets and defaults make a valid production configuration; the key works."""
    doc = app_json()
    required = [n for n, s in doc["env"].items() if s.get("required")]
    environ = _deployed_environment(doc)
    assert set(required) <= set(environ)
    settings = Settings.from_env(environ)
    assert settings.is_production
    ring = KeyRing()
    ring.install(settings.encryption_keys)
    assert "shpat_secret" == ring.decrypt(ring.encrypt("shpat_secret"))


def test_production_settings_app_json_must_provide_are_there() -> None:
    """What production refuses to start without is in app.json, generated or asked for."""
    env = app_json()["env"]
    for name in ("CONNECTOR_ENCRYPTION_KEYS", "SECRET_KEY", "APP_URL"):
        assert env[name]["required"] is True, name
    assert env["CONNECTOR_ENV"]["value"] == "production"
    assert env["CONNECTOR_ENCRYPTION_KEYS"]["generator"] == "secret"
    assert env["SECRET_KEY"]["generator"] == "secret"


def test_the_release_phase_migrates() -> None:
    """The host runs `release` before it starts new web and worker processes."""
    assert "connector db upgrade" == procfile()["release"]


# -- requirements.txt -----------------------------------------------------------------------


def _pins() -> tuple[dict[str, Version], set[str], list[str]]:
    """Pinned versions, the names annotated as direct dependencies, and the other lines."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    other: list[str] = []
    current: str | None = None
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if current and re.search(r"(?:via|#)\s+capi-connector\b", line):
                direct.add(current)
            continue
        name, sep, version = line.partition("==")
        if sep:
            current = str(canonicalize_name(name))
            pins[current] = Version(version)
        else:
            current = None
            other.append(line)
    return pins, direct, other


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_requirements_pin_every_dependency_pyproject_declares() -> None:
    """Each dependency of pyproject.toml is pinned, within the range pyproject allows."""
    pins, direct, _ = _pins()
    declared = {str(canonicalize_name(r.name)): r for r in _declared()}
    assert sorted(declared) == sorted(direct)
    for name, req in declared.items():
        assert name in pins, name
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside {req.specifier}"
        )


def test_requirements_install_the_app_itself() -> None:
    """`pip install -r requirements.txt` gives the `connector` command (the app, editable)."""
    _, _, other = _pins()
    assert "-e ." in other
    assert all(not line.startswith("--") for line in other), (
        "no index or find-links lines"
    )


#: what the Procfile's processes import when they start: the web server's worker class
#: (gunicorn.conf.py), the app, the worker and every periodic job
_STARTUP_IMPORTS = """
import json, sys
already = set(sys.modules)  # the interpreter's own start (site, .pth hooks)
import gunicorn.workers.ggevent
import connector.web, connector.cli, connector.dispatcher, connector.jobs, connector.metrics
import connector.logs, adapters.shopify.adapter, adapters.woocommerce.adapter
connector.web.create_app
from importlib.metadata import packages_distributions
dists = packages_distributions()
names = {m.split(".")[0] for m in set(sys.modules) - already}
print(json.dumps(sorted({d for n in names for d in dists.get(n, [])})))
"""


def test_requirements_pin_every_distribution_the_processes_import() -> None:
    """A host installs requirements.txt alone: whatever the web and worker processes import
    at start must be pinned there, also what a dependency imports without declaring it
    (gunicorn's gevent worker imports packaging)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _STARTUP_IMPORTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    imported = {str(canonicalize_name(d)) for d in json.loads(out)}
    pins, _, _ = _pins()
    missing = sorted(imported - set(pins) - {"capi-connector"})
    assert not missing, f"imported at start but not in requirements.txt: {missing}"


def test_the_python_version_is_pinned_as_heroku_reads_it() -> None:
    """.python-version holds a major.minor version inside requires-python."""
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from packaging.specifiers import SpecifierSet

    assert Version(version) in SpecifierSet(project["requires-python"])
