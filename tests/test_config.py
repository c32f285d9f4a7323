"""Settings from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from connector.config import Settings, load_settings, normalize_database_url
from connector.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            "postgres://u:p@h:5432/db",
            "postgresql+psycopg://u:p@h:5432/db",
            id="heroku-alias",
        ),
        pytest.param(
            "postgresql://h/db", "postgresql+psycopg://h/db", id="plain-postgresql"
        ),
        pytest.param(
            "postgresql+psycopg://h/db",
            "postgresql+psycopg://h/db",
            id="explicit-driver-kept",
        ),
        pytest.param("sqlite:///x.db", "sqlite:///x.db", id="sqlite-untouched"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    """Heroku's postgres:// and plain postgresql:// both reach psycopg 3."""
    assert expected == normalize_database_url(given)


def test_defaults_use_sqlite_in_the_instance_folder(tmp_path: Path) -> None:
    """With no DATABASE_URL the connector runs on a SQLite file in its instance folder."""
    settings = Settings.from_env({"CONNECTOR_INSTANCE_PATH": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'connector.db'}"
    assert settings.meta_api_version == "v25.0"
    assert settings.meta_graph_url == "https://graph.facebook.com"
    assert settings.port == 8000
    assert (settings.batch_size, settings.lease_seconds) == (1000, 120)


def test_worker_tuning_comes_from_the_environment() -> None:
    """Batch size, lease, poll interval and HTTP timeout can be set per process."""
    settings = Settings.from_env(
        {
            "CONNECTOR_BATCH_SIZE": "500",
            "CONNECTOR_LEASE_SECONDS": "60",
            "CONNECTOR_POLL_INTERVAL": "0.5",
            "CONNECTOR_HTTP_TIMEOUT": "10",
        }
    )
    assert (500, 60, 0.5, 10.0) == (
        settings.batch_size,
        settings.lease_seconds,
        settings.poll_interval,
        settings.http_timeout,
    )


def test_production_lists_every_missing_setting() -> None:
    """Production refuses to start and names every problem at once."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {"CONNECTOR_ENV": "production", "APP_URL": "http://x.example"}
        )
    message = str(info.value)
    assert "CONNECTOR_ENCRYPTION_KEYS is required" in message
    assert "SECRET_KEY is required" in message
    assert "APP_URL must be https" in message


def test_production_with_everything_starts() -> None:
    """A complete production environment is accepted."""
    key = Fernet.generate_key().decode()
    settings = Settings.from_env(
        {
            "CONNECTOR_ENV": "production",
            "CONNECTOR_ENCRYPTION_KEYS": f"{key}, {Fernet.generate_key().decode()}",
            "SECRET_KEY": "s",
            "APP_URL": "https://connector.example/",
            "DATABASE_URL": "postgres://u@h/db",
        }
    )
    assert settings.encryption_keys[0] == key
    assert settings.app_url == "https://connector.example"
    assert settings.database_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        pytest.param(
            {"CONNECTOR_ENCRYPTION_KEYS": "not-a-key"}, "not a Fernet key", id="bad-key"
        ),
        pytest.param({"PORT": "eighty"}, "PORT must be a whole number", id="bad-port"),
        pytest.param(
            {"APP_URL": "connector.example"}, "APP_URL must be", id="relative-url"
        ),
        pytest.param(
            {"META_API_VERSION": "25.0"}, "META_API_VERSION", id="version-without-v"
        ),
        pytest.param(
            {"SHOPIFY_ADMIN_URL_TEMPLATE": "https://x"},
            "{shop}",
            id="template-without-shop",
        ),
        pytest.param({"CONNECTOR_ENV": "staging"}, "CONNECTOR_ENV", id="unknown-env"),
        pytest.param(
            {"CONNECTOR_BATCH_SIZE": "5000"}, "Meta's limit", id="batch-too-big"
        ),
        pytest.param(
            {"CONNECTOR_LEASE_SECONDS": "1"}, "at least 2", id="lease-too-short"
        ),
        pytest.param(
            {"CONNECTOR_HTTP_TIMEOUT": "soon"}, "number of seconds", id="timeout-nan"
        ),
    ],
)
def test_invalid_values_are_named(env: dict[str, str], fragment: str) -> None:
    """A wrong value stops the start with a message naming the variable."""
    with pytest.raises(ConfigError, match=None) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_development_generates_keys_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Development keys are generated once into the instance folder, then reused."""
    env = {"CONNECTOR_INSTANCE_PATH": str(tmp_path)}
    first = load_settings(env)
    second = load_settings(env)
    assert first.encryption_keys == second.encryption_keys
    assert first.secret_key == second.secret_key
    Fernet(first.encryption_keys[0])
    stored = json.loads((tmp_path / "secrets.json").read_text())
    assert stored["encryption_key"] == first.encryption_keys[0]
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
    assert sum("generated development keys" in r.message for r in caplog.records) == 1


def test_production_never_generates_keys(tmp_path: Path) -> None:
    """Production never falls back to generated keys."""
    with pytest.raises(ConfigError):
        load_settings(
            {
                "CONNECTOR_ENV": "production",
                "CONNECTOR_INSTANCE_PATH": str(tmp_path),
                "APP_URL": "https://x.example",
            }
        )
    assert not (tmp_path / "secrets.json").exists()
