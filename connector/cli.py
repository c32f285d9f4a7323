"""The ``connector`` command."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
from sqlalchemy import column, select, table, update

from connector import __version__
from connector.config import load_settings
from connector.crypto import generate_key, keyring
from connector.errors import ConnectorError
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import Connection

log = logging.getLogger("connector")
F = TypeVar("F", bound=Callable[..., Any])

#: columns of ``connections`` that hold Fernet tokens
ENCRYPTED_COLUMNS = (
    "platform_token",
    "platform_key",
    "platform_refresh_token",
    "webhook_secret",
    "meta_token",
)


def _runtime(ctx: click.Context) -> Runtime:
    obj = ctx.ensure_object(dict)
    if "runtime" not in obj:
        try:
            obj["runtime"] = Runtime.from_settings(load_settings())
        except ConnectorError as exc:
            raise click.ClickException(str(exc)) from exc
        ctx.call_on_close(obj["runtime"].close)
    runtime: Runtime = obj["runtime"]
    return runtime


@click.group()
@click.version_option(__version__, prog_name="connector")
def cli() -> None:
    """Send Shopify and WooCommerce conversions to Meta's Conversions API."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConnectorError as exc:  # pragma: no cover - click handles most
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


# -- serve / worker / db ---------------------------------------------------------------


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
)
@click.option("--port", type=int, default=None, help="Port (default: $PORT or 8000).")
@click.option("--no-worker", is_flag=True, help="Do not start the in-process worker.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int | None, no_worker: bool) -> None:
    """Web app plus an in-process worker, for development (applies migrations first)."""
    from connector import migrate
    from connector.web import create_app

    runtime = _runtime(ctx)
    migrate.upgrade(runtime.settings.database_url)
    app = create_app(runtime=runtime)
    stop = threading.Event()
    if not no_worker:
        from connector import dispatcher

        thread = threading.Thread(
            target=dispatcher.run_worker,
            kwargs={"runtime": runtime, "stop": stop},
            name="connector-worker",
            daemon=True,
        )
        thread.start()
    try:
        app.run(
            host=host,
            port=port or runtime.settings.port,
            threaded=True,
            use_reloader=False,
        )
    finally:
        stop.set()


@cli.command()
@click.option("--drain", is_flag=True, help="Send everything that is due, then exit.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=None,
    help="Events per request to Meta (default 1000, Meta's maximum).",
)
@click.option(
    "--lease-seconds",
    type=click.IntRange(1),
    default=None,
    help="How long claimed events stay with this worker before another may take them over.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    drain: bool,
    batch_size: int | None,
    lease_seconds: int | None,
) -> None:
    """Run the dispatcher: claim due events, send them to Meta, retry, dead-letter."""
    from connector import dispatcher

    runtime = _runtime(ctx)
    overrides: dict[str, Any] = {}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if lease_seconds is not None:
        overrides["lease_seconds"] = lease_seconds
    if overrides:
        runtime = dataclasses.replace(
            runtime, settings=dataclasses.replace(runtime.settings, **overrides)
        )
    rv = dispatcher.run_worker(runtime=runtime, drain=drain)
    if drain and rv is not None:
        click.echo(json.dumps(rv, sort_keys=True))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply migrations up to the newest schema."""
    from connector import migrate

    settings = _runtime(ctx).settings
    migrate.upgrade(settings.database_url)
    click.echo("database is up to date")


# -- connections -----------------------------------------------------------------------


@cli.group()
def connections() -> None:
    """Stores connected to Meta."""


def _meta_options(fn: F) -> F:
    fn = click.option(
        "--test-event-code", default=None, help="Meta's test_event_code (test mode)."
    )(fn)
    fn = click.option(
        "--meta-token", default=None, help="Meta system-user access token."
    )(fn)
    fn = click.option("--pixel-id", default=None, help="Meta pixel (dataset) id.")(fn)
    return fn


def _validate_pixel(pixel_id: str | None) -> None:
    if pixel_id is not None and not pixel_id.isdigit():
        raise click.BadParameter("a pixel id is digits only", param_hint="--pixel-id")


@connections.group("add")
def connections_add() -> None:
    """Connect a store by hand (no OAuth needed)."""


@connections_add.command("shopify")
@click.option("--shop", required=True, help="NAME.myshopify.com")
@click.option(
    "--access-token", default=None, help="Admin API access token (custom app)."
)
@click.option(
    "--webhook-secret",
    default=None,
    help="The custom app's secret, if it signs webhooks.",
)
@_meta_options
@click.pass_context
def add_shopify(
    ctx: click.Context,
    shop: str,
    access_token: str | None,
    webhook_secret: str | None,
    pixel_id: str | None,
    meta_token: str | None,
    test_event_code: str | None,
) -> None:
    """Connect a Shopify shop."""
    from connector.domains import normalize_shop_domain

    try:
        shop = normalize_shop_domain(shop)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shop") from exc
    _validate_pixel(pixel_id)
    fields: dict[str, Any] = {
        "platform_token": access_token,
        "webhook_secret": webhook_secret,
    }
    _add(ctx, "shopify", shop, fields, pixel_id, meta_token, test_event_code)


@connections_add.command("woocommerce")
@click.option("--store-url", required=True, help="https://store.example")
@click.option(
    "--consumer-key", default=None, help="WooCommerce REST consumer key (ck_...)."
)
@click.option(
    "--consumer-secret", default=None, help="WooCommerce REST consumer secret (cs_...)."
)
@click.option(
    "--webhook-secret", default=None, help="The secret set on the store's webhooks."
)
@_meta_options
@click.pass_context
def add_woocommerce(
    ctx: click.Context,
    store_url: str,
    consumer_key: str | None,
    consumer_secret: str | None,
    webhook_secret: str | None,
    pixel_id: str | None,
    meta_token: str | None,
    test_event_code: str | None,
) -> None:
    """Connect a WooCommerce store."""
    from connector.domains import normalize_store_url

    if (consumer_key is None) != (consumer_secret is None):
        raise click.UsageError("--consumer-key and --consumer-secret go together")
    try:
        store_url = normalize_store_url(store_url, require_https=False)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--store-url") from exc
    _validate_pixel(pixel_id)
    fields: dict[str, Any] = {
        "platform_key": consumer_key,
        "platform_token": consumer_secret,
        "webhook_secret": webhook_secret,
    }
    _add(ctx, "woocommerce", store_url, fields, pixel_id, meta_token, test_event_code)


def _add(
    ctx: click.Context,
    platform: str,
    store: str,
    fields: dict[str, Any],
    pixel_id: str | None,
    meta_token: str | None,
    test_event_code: str | None,
) -> None:
    runtime = _runtime(ctx)
    # Only what was given changes: adding a store again updates it rather than duplicating it.
    changes = {k: v for k, v in fields.items() if v is not None}
    if pixel_id is not None:
        changes["pixel_id"] = pixel_id
    if meta_token is not None:
        changes["meta_token"] = meta_token
    if test_event_code is not None:
        changes["test_event_code"] = test_event_code
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(session, platform, store, **changes)
        if meta_token is not None:
            queries.reactivate(session, conn)
        conn_id = conn.id
    click.echo(f"connected {platform} store {store}")
    click.echo(conn_id)


@connections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def connections_list(ctx: click.Context, as_json: bool) -> None:
    """List connections (secrets are never shown, only whether they are set)."""
    runtime = _runtime(ctx)
    with runtime.sessions() as session:
        rows = [
            {
                "id": c.id,
                "platform": c.platform,
                "store": c.store,
                "status": c.status,
                "status_reason": c.status_reason,
                "pixel_id": c.pixel_id,
                "platform_token": "set" if c.platform_token else "missing",
                "webhook_secret": "set" if c.webhook_secret else "app secret",
                "meta_token": "set" if c.meta_token else "missing",
                "meta_token_expires_at": c.meta_token_expires_at.isoformat()
                if c.meta_token_expires_at
                else None,
                "test_event_code": c.test_event_code,
            }
            for c in queries.list_connections(session)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['id']}  {r['platform']:<11} {r['store']:<40} {r['status']:<16} "
            f"pixel={r['pixel_id'] or '-'} meta_token={r['meta_token']} "
            f"test={'yes' if r['test_event_code'] else 'no'}"
        )


# -- keys ------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Encryption keys for secrets at rest."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key to put first in CONNECTOR_ENCRYPTION_KEYS."""
    click.echo(generate_key())


@keys.command("rotate")
@click.option("--batch-size", type=int, default=200, show_default=True)
@click.pass_context
def keys_rotate(ctx: click.Context, batch_size: int) -> None:
    """Re-encrypt every stored secret with the first key; safe while the app serves."""
    runtime = _runtime(ctx)
    raw = table("connections", column("id"), *(column(c) for c in ENCRYPTED_COLUMNS))
    rotated = 0
    last_id = ""
    while True:
        with runtime.sessions.begin() as session:
            rows = session.execute(
                select(raw)
                .where(raw.c.id > last_id)
                .order_by(raw.c.id)
                .limit(batch_size)
            ).all()
            if not rows:
                break
            for row in rows:
                for name in ENCRYPTED_COLUMNS:
                    old = getattr(row, name)
                    if old is None:
                        continue
                    new = keyring.rotate(old)
                    if new == old:
                        continue
                    # Compare-and-set: a value the app rewrote meanwhile is already under the new key.
                    result = session.execute(
                        update(raw)
                        .where(raw.c.id == row.id, raw.c[name] == old)
                        .values({name: new})
                    )
                    rotated += int(result.rowcount or 0)  # type: ignore[attr-defined]
            last_id = rows[-1].id
    click.echo(f"re-encrypted {rotated} secret(s) with the newest key")


def _connection_or_fail(ctx: click.Context, connection_id: str) -> Connection:
    with _runtime(ctx).sessions() as session:
        try:
            return queries.get_connection(session, connection_id)
        except ConnectorError as exc:
            raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
