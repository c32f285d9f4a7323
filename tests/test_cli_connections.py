"""`connector connections ...`: connect by hand and change a connection's settings."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from connector.cli import cli
from connector.config import Settings
from connector.runtime import Runtime
from connector.store import queries
from tests.test_secrets_at_rest import run_cli


def invoke(settings: Settings, key: str, *args: str) -> Result:
    """Run the CLI as a user would: errors become messages and exit codes."""
    env = {
        "DATABASE_URL": settings.database_url,
        "CONNECTOR_ENCRYPTION_KEYS": key,
        "CONNECTOR_INSTANCE_PATH": str(settings.instance_path),
        "SECRET_KEY": "x",
    }
    return CliRunner().invoke(cli, list(args), env=env)


def test_set_reads_json_and_text_and_removes_empty(
    runtime: Runtime, settings: Settings, encryption_key: str
) -> None:
    """Values are JSON when they parse as JSON, text otherwise; an empty value removes the key."""
    added = run_cli(
        settings,
        [encryption_key],
        "connections",
        "add",
        "woocommerce",
        "--store-url",
        "https://shop.example",
    )
    conn_id = added.output.strip().splitlines()[-1]
    result = run_cli(
        settings,
        [encryption_key],
        "connections",
        "set",
        conn_id,
        "on_hold_is_paid=true",
        "content_id_format=sku",
        'action_sources={"admin": "phone_call"}',
    )
    assert 0 == result.exit_code, result.output
    expected = {
        "on_hold_is_paid": True,
        "content_id_format": "sku",
        "action_sources": {"admin": "phone_call"},
    }
    assert expected == json.loads(result.output)
    run_cli(
        settings, [encryption_key], "connections", "set", conn_id, "content_id_format="
    )
    with runtime.sessions() as session:
        stored = queries.get_connection(session, conn_id).settings
    assert {
        "on_hold_is_paid": True,
        "action_sources": {"admin": "phone_call"},
    } == stored


def test_set_refuses_a_value_the_platform_does_not_know(
    runtime: Runtime, settings: Settings, encryption_key: str
) -> None:
    """A typo in a setting is refused with the platform's words, and nothing changes."""
    added = run_cli(
        settings,
        [encryption_key],
        "connections",
        "add",
        "shopify",
        "--shop",
        "typo.myshopify.com",
    )
    conn_id = added.output.strip().splitlines()[-1]
    result = run_cli(
        settings, [encryption_key], "connections", "set", conn_id, "purchase_on=paidd"
    )
    assert 2 == result.exit_code
    assert "purchase_on must be one of" in result.output
    with runtime.sessions() as session:
        assert {} == queries.get_connection(session, conn_id).settings


def test_set_on_an_unknown_connection_is_a_clear_error(
    runtime: Runtime, settings: Settings, encryption_key: str
) -> None:
    """An unknown id is a message and exit status 1."""
    result = invoke(settings, encryption_key, "connections", "set", "nope", "a=1")
    assert 1 == result.exit_code
    assert "no connection nope" in result.output


def test_add_refuses_a_malformed_shop(
    settings: Settings, encryption_key: str, runtime: Runtime
) -> None:
    """Only NAME.myshopify.com is a shop domain."""
    result = invoke(
        settings,
        encryption_key,
        "connections",
        "add",
        "shopify",
        "--shop",
        "evil.example.com",
    )
    assert 2 == result.exit_code
    assert "myshopify.com" in result.output
