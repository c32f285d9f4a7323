"""The ``connector`` command."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import click
from sqlalchemy import column, select, table, update
from sqlalchemy.exc import SQLAlchemyError

from connector import __version__, logs
from connector.config import MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, load_settings
from connector.crypto import generate_key, keyring
from connector.errors import ConnectorError, CryptoError, GraphError
from connector.events import PURCHASE, CanonicalEvent, CustomData, UserData
from connector.registry import get_adapter
from connector.retry import check_event_time
from connector.runtime import Runtime
from connector.store import queries
from connector.store.dashboard import set_test_event_code
from connector.store.models import (
    Connection,
    ConnectionStatus,
    Event,
    EventStatus,
    WebhookBody,
    WebhookReceipt,
)

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


def _runtime(ctx: click.Context, *, migrated: bool = True) -> Runtime:
    """The process's runtime; with ``migrated``, refuses in one line a database not at the
    newest schema (rather than failing later on a missing table)."""
    obj = ctx.ensure_object(dict)
    if "runtime" not in obj:
        try:
            obj["runtime"] = Runtime.from_settings(load_settings())
        except ConnectorError as exc:
            raise click.ClickException(str(exc)) from exc
        ctx.call_on_close(obj["runtime"].close)
    runtime: Runtime = obj["runtime"]
    if migrated and not obj.get("schema_checked"):
        problem = schema_problem(runtime)
        if problem is not None:
            raise click.ClickException(problem)
        obj["schema_checked"] = True
    return runtime


def schema_problem(runtime: Runtime) -> str | None:
    """One line saying what to run when the database is not at the newest schema, else None."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from connector import migrate

    where = runtime.engine.url.render_as_string(hide_password=True)
    heads = set(
        ScriptDirectory.from_config(
            migrate.alembic_config(runtime.settings.database_url)
        ).get_heads()
    )
    # Reading the version announces Alembic's dialect at INFO: not news on every command.
    alembic_log = logging.getLogger("alembic.runtime.migration")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        with runtime.engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        return f"cannot read the database at {where}: {_first_line(exc)}"
    finally:
        alembic_log.setLevel(level)
    if not current:
        return f"the database at {where} has no tables yet: run `connector db upgrade`"
    if current != heads:
        return f"the database at {where} is not at the newest schema: run `connector db upgrade`"
    return None


def _first_line(exc: SQLAlchemyError) -> str:
    # The driver's own message, first line only: its later lines may quote row values.
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


class ConnectorGroup(click.Group):
    """Turns the connector's own errors, and the database's, into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectorError as exc:
            raise click.ClickException(str(exc)) from exc
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {_first_line(exc)}") from exc


#: commands that run as a host's processes: their log lines go to stdout, as the host expects;
#: the others keep stdout for their output (an id, JSON) and log to stderr
PROCESS_COMMANDS = {"serve": "web", "worker": "worker", "db": "release"}


@click.group(cls=ConnectorGroup)
@click.version_option(__version__, prog_name="connector")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Send Shopify and WooCommerce conversions to Meta's Conversions API."""
    process = PROCESS_COMMANDS.get(ctx.invoked_subcommand or "", "cli")
    logs.configure(
        logs.format_for(os.environ),
        process=process,
        stream=sys.stdout if process != "cli" else sys.stderr,
    )
    # Alembic announces each of its plugins at INFO; the migrations it runs stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


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

    runtime = _runtime(ctx, migrated=False)
    migrate.upgrade(runtime.settings.database_url)
    app = create_app(runtime=runtime)
    stop = threading.Event()
    runner = None
    thread: threading.Thread | None = None
    if not no_worker:
        from connector import dispatcher, jobs

        runner = jobs.JobRunner(runtime, stop=stop).start()
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
        stopping = time.monotonic()
        if thread is not None:
            # Ctrl-C: the worker finishes or releases its batch before the process ends...
            from connector.dispatcher import SHUTDOWN_GRACE_SECONDS

            thread.join(SHUTDOWN_GRACE_SECONDS)
        if runner is not None:
            # ...while a periodic job, told at the same moment, gets what is left of its own
            # budget: its work is idempotent, so one stuck on a store is left to its thread.
            from connector.jobs import JOB_STOP_SECONDS

            runner.stop(
                timeout=max(0.5, JOB_STOP_SECONDS - (time.monotonic() - stopping))
            )


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
    type=click.IntRange(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
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
    if drain:
        rv = dispatcher.run_worker(runtime=runtime, drain=True)
    else:
        rv = _run_worker_with_jobs(runtime)
    if drain and rv is not None:
        click.echo(json.dumps(rv, sort_keys=True))


def _run_worker_with_jobs(
    runtime: Runtime, stop: threading.Event | None = None
) -> dict[str, Any] | None:
    """The dispatcher loop, and the periodic jobs on a thread beside it; one stop for both.

    Without ``stop``, SIGTERM and SIGINT (main thread) set one.
    """
    from connector import dispatcher, jobs

    previous: dict[int, object] = {}
    if stop is None:
        stop = threading.Event()
        previous = jobs.install_stop_signals(stop)
    runner = jobs.JobRunner(runtime, stop=stop).start()
    try:
        return dispatcher.run_worker(runtime=runtime, stop=stop)
    finally:
        stop.set()
        runner.stop()
        jobs.restore_signals(previous)


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply migrations up to the newest schema."""
    from connector import migrate

    settings = _runtime(ctx, migrated=False).settings
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
    from connector.domains import normalize_local_store_url, normalize_store_url

    if (consumer_key is None) != (consumer_secret is None):
        raise click.UsageError("--consumer-key and --consumer-secret go together")
    try:
        if _runtime(ctx).settings.woocommerce_allow_insecure:
            # Development only: the same store URLs the connect flow then accepts.
            store_url = normalize_local_store_url(store_url)
        else:
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
        # New Meta settings by hand (a token, or the right pixel) clear a needs_reconnect and
        # let held events go; if Meta still refuses, the worker holds them again.
        if meta_token is not None or pixel_id is not None:
            queries.reactivate(session, conn)
        else:
            queries.release_held(session, conn)
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


#: the key of `connections set` that enters test mode, or with no value goes live
TEST_EVENT_CODE = "test_event_code"


@connections.command("set")
@click.argument("connection_id")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_context
def connections_set(
    ctx: click.Context, connection_id: str, assignments: tuple[str, ...]
) -> None:
    """Change a connection's settings, e.g. `purchase_on=created` (an empty VALUE removes KEY).

    VALUE is read as JSON when it is JSON (true, 3, {"admin": "other"}), else as text. The
    settings each platform reads are listed in the README.
    """
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE", param_hint="KEY=VALUE"
            )
        try:
            changes[key.strip()] = json.loads(raw) if raw else None
        except ValueError:
            changes[key.strip()] = raw
    # test_event_code is the connection's own column, not a translation setting: an empty
    # value goes live (see connector.store.dashboard.set_test_event_code).
    test_code = changes.pop(TEST_EVENT_CODE, ...) if TEST_EVENT_CODE in changes else ...
    runtime = _runtime(ctx)
    with runtime.sessions.begin() as session:
        conn = queries.get_connection(session, connection_id)
        if test_code is not ...:
            try:
                set_test_event_code(
                    session, conn, None if test_code is None else str(test_code)
                )
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="KEY=VALUE") from exc
        settings = dict(conn.settings or {})
        settings.pop(
            TEST_EVENT_CODE, None
        )  # an older CLI stored it here, where nothing reads it
        for key, value in changes.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        problems = get_adapter(conn.platform).settings_problems(settings)
        if problems:
            raise click.UsageError("; ".join(problems))
        # A new dict, so the JSON column sees the change.
        conn.settings = settings
        shown: dict[str, Any] = dict(settings)
        if test_code is not ...:
            shown[TEST_EVENT_CODE] = conn.test_event_code
    click.echo(json.dumps(shown, indent=2, sort_keys=True))


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
    resealed, unreadable = _reseal_waiting_bodies(runtime, batch_size)
    if resealed or unreadable:
        click.echo(
            f"re-sealed {resealed} webhook body(ies) waiting for the worker"
            + (f"; {unreadable} no configured key opens" if unreadable else "")
        )


def _reseal_waiting_bodies(runtime: Runtime, batch_size: int) -> tuple[int, int]:
    """Webhook bodies still waiting for the worker, sealed again under the newest key."""
    from connector import inbox

    body, receipt = WebhookBody, WebhookReceipt
    resealed = unreadable = 0
    last = 0
    while True:
        with runtime.sessions.begin() as session:
            rows = session.execute(
                select(
                    body.receipt_id,
                    body.sealed,
                    receipt.connection_id,
                    receipt.delivery_id,
                )
                .join(receipt, receipt.id == body.receipt_id)
                .where(body.receipt_id > last)
                .order_by(body.receipt_id)
                .limit(batch_size)
                # a body the worker is translating now is gone when it commits
                .with_for_update(of=body, skip_locked=True)
            ).all()
            if not rows:
                return resealed, unreadable
            for row in rows:
                context = inbox.body_context(row.connection_id, row.delivery_id)
                try:
                    new = keyring.reseal(row.sealed, context)
                except CryptoError:
                    unreadable += 1
                    continue
                if new != bytes(row.sealed):
                    session.execute(
                        update(body)
                        .where(body.receipt_id == row.receipt_id)
                        .values(sealed=new)
                    )
                    resealed += 1
            last = rows[-1].receipt_id


def _connection_or_fail(ctx: click.Context, connection_id: str) -> Connection:
    with _runtime(ctx).sessions() as session:
        try:
            return queries.get_connection(session, connection_id)
        except ConnectorError as exc:
            raise click.ClickException(str(exc)) from exc


# -- events ------------------------------------------------------------------------------


@cli.group()
def events() -> None:
    """The outbox: inspect events and send dead or held ones again."""


def _event_summary(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "connection_id": e.connection_id,
        "event_name": e.event_name,
        "event_id": e.event_id,
        "event_time": e.event_time.isoformat(),
        "status": e.status,
        "attempts": e.attempts,
        "send_count": e.send_count,
        "next_attempt_at": e.next_attempt_at.isoformat(),
        "last_error": e.last_error,
    }


@events.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in EventStatus]),
    default=None,
    help="Only rows in this state.",
)
@click.option(
    "--connection", "connection_id", default=None, help="Only this connection."
)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def events_list(
    ctx: click.Context,
    status: str | None,
    connection_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List outbox rows, newest first."""
    stmt = select(Event).order_by(Event.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Event.status == status)
    if connection_id is not None:
        stmt = stmt.where(Event.connection_id == connection_id)
    with _runtime(ctx).sessions() as session:
        rows = [_event_summary(e) for e in session.scalars(stmt)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        error = f"  {_one_line(r['last_error'], 80)}" if r["last_error"] else ""
        click.echo(
            f"{r['id']:>8}  {r['connection_id']}  {r['event_name']:<16} {r['event_id']:<24} "
            f"{r['status']:<8} attempts={r['attempts']} sends={r['send_count']}{error}"
        )
    if not rows:
        click.echo("no events", err=True)


@events.command("show")
@click.argument("event_row_id", metavar="ID", type=int)
@click.pass_context
def events_show(ctx: click.Context, event_row_id: int) -> None:
    """Show one row: its state, Meta's answer, the payload sent and the last error."""
    with _runtime(ctx).sessions() as session:
        e = session.get(Event, event_row_id)
        if e is None:
            raise click.ClickException(f"no event {event_row_id}")
        doc = _event_summary(e)
        doc.update(
            events_received=e.events_received,
            fbtrace_id=e.fbtrace_id,
            sent_at=e.sent_at.isoformat() if e.sent_at else None,
            lease_owner=e.lease_owner,
            lease_expires_at=e.lease_expires_at.isoformat()
            if e.lease_expires_at
            else None,
            created_at=e.created_at.isoformat(),
            payload=e.payload,
        )
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@events.command("replay")
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option(
    "--dead", is_flag=True, help="Every dead row (of --connection, if given)."
)
@click.option(
    "--held", is_flag=True, help="Every held row (of --connection, if given)."
)
@click.option(
    "--connection", "connection_id", default=None, help="Only this connection."
)
@click.pass_context
def events_replay(
    ctx: click.Context,
    ids: tuple[int, ...],
    dead: bool,
    held: bool,
    connection_id: str | None,
) -> None:
    """Put dead or held rows back to pending, attempts reset; rows too old for Meta stay put."""
    if not (ids or dead or held):
        raise click.UsageError("name event ids, or pass --dead and/or --held")
    statuses = [EventStatus.DEAD, EventStatus.HELD]
    stmt = select(
        Event.id,
        Event.status,
        Event.event_time,
        Event.connection_id,
        Event.payload["action_source"].as_string().label("action_source"),
    )
    if ids:
        stmt = stmt.where(Event.id.in_(ids))
    else:
        statuses = [
            s for s, on in ((EventStatus.DEAD, dead), (EventStatus.HELD, held)) if on
        ]
    stmt = stmt.where(Event.status.in_(statuses))
    if connection_id is not None:
        stmt = stmt.where(Event.connection_id == connection_id)
    now = datetime.now(UTC)
    runtime = _runtime(ctx)
    with runtime.sessions.begin() as session:
        rows = session.execute(stmt).all()
        if ids:
            found = {r.id for r in rows}
            for missing in sorted(set(ids) - found):
                click.echo(
                    f"event {missing}: not found, or neither dead nor held", err=True
                )
        # Meta's window: 7 days, 62 for physical_store events (check_event_time).
        too_old = [
            r
            for r in rows
            if check_event_time(r.event_time, now, action_source=r.action_source)
            is not None
        ]
        late = {r.id for r in too_old}
        replay = [r.id for r in rows if r.id not in late]
        for start in range(0, len(replay), 1000):
            session.execute(
                update(Event)
                .where(Event.id.in_(replay[start : start + 1000]))
                .where(Event.status.in_(statuses))
                .values(
                    status=EventStatus.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=None,
                )
            )
        blocked = {
            c.id: c.status
            for c in session.scalars(
                select(Connection).where(
                    Connection.id.in_({r.connection_id for r in rows}),
                    Connection.status != ConnectionStatus.ACTIVE,
                )
            )
        }
    for r in too_old:
        click.echo(
            f"event {r.id}: event_time {r.event_time.isoformat()} is outside Meta's 7-day "
            "window (62 days for physical_store events); not replayed",
            err=True,
        )
    for conn_id, status in sorted(blocked.items()):
        click.echo(
            f"connection {conn_id} is {status}: its events will be held again until it is "
            "reconnected",
            err=True,
        )
    click.echo(f"{len(replay)} event(s) back to pending")


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- retention ----------------------------------------------------------------------------


@cli.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def prune_command(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove personal data and webhook receipts past their retention (the worker does it daily)."""
    from connector import retention

    runtime = _runtime(ctx)
    report = retention.prune(
        runtime.engine,
        retention.RetentionPolicy.from_settings(runtime.settings),
        now=datetime.now(UTC),
        dry_run=dry_run,
    )
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} personal data from {report.events_pruned} event(s), "
        f"{report.receipts_deleted} webhook receipt(s) and {report.states_deleted} "
        "expired sign-in state(s)"
    )


# -- test events --------------------------------------------------------------------------


@cli.command("send-test-event")
@click.option(
    "--connection", "connection_id", required=True, help="The connection's id."
)
@click.option(
    "--event-name",
    default=PURCHASE,
    show_default=True,
    help="Meta's standard event name to send.",
)
@click.pass_context
def send_test_event(ctx: click.Context, connection_id: str, event_name: str) -> None:
    """Send one test event with the connection's test_event_code and print Meta's answer."""
    from connector.capi import GraphClient

    conn = _connection_or_fail(ctx, connection_id)
    if not conn.test_event_code:
        raise click.ClickException(
            "this connection has no test_event_code: Meta would count the event as real; "
            "set one with `connector connections add ... --test-event-code CODE`"
        )
    if not conn.pixel_id or not conn.meta_token:
        raise click.ClickException("this connection has no Meta pixel and token yet")
    now = datetime.now(UTC)
    event = build_test_event(conn.id, conn.store, event_name, now)
    settings = _runtime(ctx).settings
    client = GraphClient(settings)
    try:
        result = client.send_events(
            conn.pixel_id,
            conn.meta_token,
            [event],
            test_event_code=conn.test_event_code,
        )
    except GraphError as exc:
        answer = {
            "error": str(exc),
            "code": exc.code,
            "error_subcode": exc.subcode,
            "type": exc.type,
            "is_transient": exc.is_transient,
            "fbtrace_id": exc.fbtrace_id,
        }
        click.echo(json.dumps(answer, indent=2))
        raise click.ClickException("Meta refused the test event") from exc
    finally:
        client.close()
    click.echo(
        json.dumps(
            {
                "events_received": result.events_received,
                "messages": list(result.messages),
                "fbtrace_id": result.fbtrace_id,
                "event_id": event["event_id"],
                "test_event_code": conn.test_event_code,
            },
            indent=2,
        )
    )


def build_test_event(
    conn_id: str, store: str, event_name: str, now: datetime
) -> dict[str, Any]:
    """A complete website event that identifies no shopper: only a hashed connector id."""
    url = store if store.startswith(("http://", "https://")) else f"https://{store}"
    external_id = hashlib.sha256(f"connector-test-{conn_id}".encode()).hexdigest()
    event = CanonicalEvent(
        event_name=event_name,
        event_id=f"test-{conn_id}-{int(now.timestamp())}",
        event_time=now,
        action_source="website",
        event_source_url=url,
        user_data=UserData(
            external_id=(external_id,),
            client_user_agent=f"capi-connector/{__version__} (test event)",
        ),
        custom_data=CustomData(value=Decimal("1.00"), currency="USD")
        if event_name == PURCHASE
        else CustomData(),
    )
    return event.to_meta()


if __name__ == "__main__":
    main()


# -- backfill -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--connection", "connection_id", required=True, help="The connection's id."
)
@click.option(
    "--since",
    "period",
    required=True,
    help="How far back to read the store's orders: 3d, 12h or 90m.",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be enqueued; enqueue nothing."
)
@click.pass_context
def backfill(
    ctx: click.Context, connection_id: str, period: str, dry_run: bool
) -> None:
    """Read the store's orders updated in the period and enqueue every event the outbox lacks.

    The same sweep the worker runs on a schedule: the same translation and unique keys as a
    webhook, so running it twice enqueues nothing the second time. Progress goes to standard
    error; the summary line is the last line of standard output.
    """
    from connector import sweep

    try:
        delta = sweep.parse_since(period)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    runtime = _runtime(ctx)
    _connection_or_fail(ctx, connection_id)
    now = datetime.now(UTC)
    err = sys.stderr
    interactive = err.isatty()

    def describe(counts: Any) -> str:
        if not isinstance(counts, sweep.SweepCounts):
            return ""
        return (
            f"enqueued {counts.enqueued} · present {counts.present} · "
            f"skipped {sum(counts.skipped.values())}"
        )

    # An endless iterable: the number of orders is not known ahead (Shopify gives no total).
    ticks: Iterator[Any] = iter(itertools.count())
    with click.progressbar(
        ticks,
        label=f"orders of {connection_id} since {(now - delta):%Y-%m-%d %H:%M} UTC",
        show_pos=True,
        item_show_func=describe,
        file=err,
    ) as bar:
        shown = [0]

        def progress(counts: sweep.SweepCounts) -> None:
            bar.update(counts.scanned - shown[0], counts)
            if not interactive and counts.scanned // 100 > shown[0] // 100:
                click.echo(f"  scanned {counts.scanned}: {describe(counts)}", err=True)
            shown[0] = counts.scanned

        counts = sweep.sweep_connection(
            runtime,
            connection_id,
            since=now - delta,
            until=now,
            dry_run=dry_run,
            progress=progress,
        )
    for reason, n in counts.skipped.most_common():
        click.echo(f"  skipped {n}: {reason}", err=True)
    prefix = "dry run, nothing enqueued: " if dry_run else ""
    summary = counts.summary()
    if dry_run:
        summary = summary.replace("enqueued", "would enqueue", 1)
    click.echo(f"{prefix}{summary}")


# -- quality ----------------------------------------------------------------------------


@cli.command("quality")
@click.option(
    "--connection",
    "connection_id",
    default=None,
    help="One connection's id (default: every connection).",
)
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=7,
    show_default=True,
    help="UTC days to cover, today included.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def quality_command(
    ctx: click.Context, connection_id: str | None, days: int, as_json: bool
) -> None:
    """Match-key coverage per event name, our strength estimate and Meta's latest scores."""
    from datetime import timedelta

    from connector.quality import render_report
    from connector.store import quality as quality_store

    runtime = _runtime(ctx)
    now = datetime.now(UTC)
    until = now.date()
    since = until - timedelta(days=days - 1)
    with runtime.sessions.begin() as session:
        if connection_id is not None:
            queries.get_connection(session, connection_id)  # NotFoundError: exit 1
            ids = [connection_id]
        else:
            ids = [c.id for c in queries.list_connections(session)]
        # Recount the period from the outbox, so the table is current without the worker.
        quality_store.refresh_coverage(
            session, since=since, until=until, now=now, connection_id=connection_id
        )
        reports = [
            quality_store.report(session, cid, since=since, until=until) for cid in ids
        ]
    if as_json:
        click.echo(json.dumps({"connections": reports}, indent=2))
        return
    if not reports:
        click.echo("No connections.")
        return
    click.echo("\n\n".join(render_report(r) for r in reports))
