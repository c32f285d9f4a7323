"""Shared fixtures: a migrated database (PostgreSQL when TEST_DATABASE_URL is set), settings, app."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector import migrate
from connector.config import Settings
from connector.runtime import Runtime
from connector.store.models import Base

FIXTURES = Path(__file__).parent / "fixtures"

# Shared machines are noisy: no per-example deadline. In CI the examples are derived from the
# test itself, so a run is repeatable; locally hypothesis keeps exploring.
hypothesis_settings.register_profile("default", deadline=None)
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "default")

# Tests never read the developer's environment: every setting comes from a fixture.
for _name in list(os.environ):
    if _name.startswith(("SHOPIFY_", "META_", "CONNECTOR_")) or _name in {
        "DATABASE_URL",
        "SECRET_KEY",
        "APP_URL",
        "ADMIN_PASSWORD",
    }:
        del os.environ[_name]


def fixture_bytes(relpath: str) -> bytes:
    """A recorded payload, as bytes: signatures cover bytes, never re-serialize them."""
    return (FIXTURES / relpath).read_bytes()


def _postgres_url_with_schema(base: str, schema: str) -> str:
    url = make_url(migrate_url(base))
    return url.update_query_dict(
        {"options": f"-csearch_path={schema}"}
    ).render_as_string(hide_password=False)


def migrate_url(url: str) -> str:
    from connector.config import normalize_database_url

    return normalize_database_url(url)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database for this test session; dropped at the end."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        path = tmp_path_factory.mktemp("db") / "connector.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        yield url
        return
    schema = f"test_{secrets.token_hex(6)}"
    admin = create_engine(migrate_url(base))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _postgres_url_with_schema(base, schema)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def encryption_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def make_settings(
    database_url: str, encryption_key: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for a test, with overrides."""

    def factory(**overrides: Any) -> Settings:
        base = Settings(
            env="test",
            instance_path=tmp_path / "instance",
            database_url=database_url,
            encryption_keys=(encryption_key,),
            secret_key="test-secret-key",
            app_url="https://connector.example",
        )
        return replace(base, **overrides)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime on the test database; every table is emptied after the test."""
    rt = Runtime.from_settings(settings)
    try:
        yield rt
    finally:
        with rt.engine.begin() as conn:
            for tbl in reversed(Base.metadata.sorted_tables):
                conn.execute(tbl.delete())
        rt.close()


@pytest.fixture
def app(runtime: Runtime) -> Any:
    from connector.web import create_app

    return create_app(runtime=runtime)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")
