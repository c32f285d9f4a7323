"""Secrets are stored only encrypted, survive key rotation, and fail clearly with a wrong key."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector.cli import cli
from connector.config import Settings
from connector.crypto import keyring
from connector.errors import CryptoError
from connector.runtime import Runtime
from connector.store import queries

TOKEN = "shpat_" + "7f3a9c" * 6


def run_cli(settings: Settings, keys: list[str], *args: str) -> Result:
    env = {
        "DATABASE_URL": settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": ",".join(keys),
        "CONNECTOR_INSTANCE_PATH": str(settings.instance_path),
        "SECRET_KEY": "test",
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def database_bytes(settings: Settings) -> bytes:
    """Every byte the database holds for our tables: the SQLite file, or a pg_dump of the schema."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(FULL)"))
        engine.dispose()
        data = Path(url.database or "").read_bytes()
        wal = Path(f"{url.database}-wal")
        return data + (wal.read_bytes() if wal.exists() else b"")
    schema = (url.query.get("options") or "").removeprefix("-csearch_path=")
    rv = subprocess.run(
        [
            "pg_dump",
            "--data-only",
            "-h",
            url.host or "127.0.0.1",
            "-U",
            url.username or "postgres",
            "-n",
            str(schema),
            url.database or "test",
        ],
        capture_output=True,
        check=True,
    )
    return rv.stdout


@pytest.fixture
def add_shop(
    runtime: Runtime, settings: Settings, encryption_key: str
) -> Callable[[], str]:
    def add() -> str:
        result = run_cli(
            settings,
            [encryption_key],
            "connections",
            "add",
            "shopify",
            "--shop",
            "secret-shop.myshopify.com",
            "--access-token",
            TOKEN,
            "--pixel-id",
            "1234567890",
            "--meta-token",
            "EAAB" + "x" * 40,
        )
        assert 0 == result.exit_code, result.output
        return result.output.strip().splitlines()[-1]

    return add


def test_connections_add_prints_the_id_last(
    add_shop: Callable[[], str], runtime: Runtime
) -> None:
    """The new connection's id is alone on the last line of standard output."""
    conn_id = add_shop()
    with runtime.sessions() as session:
        conn = queries.get_connection(session, conn_id)
        assert conn.store == "secret-shop.myshopify.com"
        assert conn.platform_token == TOKEN


def test_adding_a_store_again_updates_it(add_shop: Callable[[], str]) -> None:
    """A second `connections add` of the same store keeps one connection."""
    assert add_shop() == add_shop()


def test_tokens_are_never_stored_in_plain_text(
    add_shop: Callable[[], str], settings: Settings
) -> None:
    """The token appears nowhere in the database's bytes."""
    add_shop()
    data = database_bytes(settings)
    assert b"secret-shop.myshopify.com" in data  # the dump really holds the row
    assert TOKEN.encode() not in data
    assert b"EAAB" + b"x" * 40 not in data


def test_connections_list_never_echoes_tokens(
    add_shop: Callable[[], str], settings: Settings, encryption_key: str
) -> None:
    """Listing shows whether a token is set, never the token."""
    add_shop()
    out = run_cli(settings, [encryption_key], "connections", "list").output
    assert "secret-shop.myshopify.com" in out
    assert TOKEN not in out


def test_rotation_then_old_key_removed(
    add_shop: Callable[[], str],
    runtime: Runtime,
    settings: Settings,
    encryption_key: str,
) -> None:
    """After `keys rotate` the secrets decrypt with the new key alone."""
    conn_id = add_shop()
    new_key = Fernet.generate_key().decode()
    result = run_cli(settings, [new_key, encryption_key], "keys", "rotate")
    assert 0 == result.exit_code, result.output
    assert "re-encrypted 2 secret(s)" in result.output
    keyring.install([new_key])
    try:
        with runtime.sessions() as session:
            assert TOKEN == queries.get_connection(session, conn_id).platform_token
    finally:
        keyring.install([encryption_key])


def test_a_wrong_key_is_a_clear_error(
    add_shop: Callable[[], str], runtime: Runtime, encryption_key: str
) -> None:
    """Reading a secret with a key that never encrypted it says what to fix."""
    conn_id = add_shop()
    keyring.install([Fernet.generate_key().decode()])
    try:
        with (
            runtime.sessions() as session,
            pytest.raises(CryptoError, match="CONNECTOR_ENCRYPTION_KEYS"),
        ):
            queries.get_connection(session, conn_id)
    finally:
        keyring.install([encryption_key])


def test_wrong_key_on_the_command_line_is_not_a_crash(
    add_shop: Callable[[], str], settings: Settings
) -> None:
    """The CLI answers a wrong key with a message and a non-zero exit, not a traceback."""
    add_shop()
    result = CliRunner().invoke(
        cli,
        ["keys", "rotate"],
        env={
            "DATABASE_URL": settings.database_url,
            "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "CONNECTOR_INSTANCE_PATH": str(settings.instance_path),
        },
    )
    assert 0 != result.exit_code
    assert "cannot be decrypted" in result.output
    assert "Traceback" not in result.output
