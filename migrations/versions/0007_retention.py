"""retention: events.pruned_at, and the indexes the daily prune reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 02:30:00

Safe while the previous release still runs: the new column is nullable with no default (a
catalog change only on PostgreSQL, and old processes insert NULL, "not pruned yet"), and on
a large PostgreSQL outbox the indexes are built CONCURRENTLY, so webhooks keep writing
during the build.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import connector.store.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "pruned_at",
                connector.store.types.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
    bind = op.get_bind()
    if (
        bind.dialect.name == "postgresql"
        and _estimated_rows(bind) > CONCURRENT_ABOVE_ROWS
    ):
        # A large outbox: build without blocking writers. CONCURRENTLY cannot run inside a
        # transaction, and it waits for transactions already open to finish.
        with op.get_context().autocommit_block():
            _create_indexes(postgresql_concurrently=True)
    else:
        # A small table indexes in milliseconds; the brief lock goes unnoticed.
        _create_indexes()


#: rows (PostgreSQL's estimate) above which the indexes are built CONCURRENTLY
CONCURRENT_ABOVE_ROWS = 50_000


def _estimated_rows(bind: sa.engine.Connection) -> float:
    estimate = bind.execute(
        sa.text(
            "SELECT coalesce(max(reltuples), 0) FROM pg_class "
            "WHERE oid IN (to_regclass('events'), to_regclass('webhook_receipts'))"
        )
    ).scalar()
    return float(estimate or 0)


def _create_indexes(**kw: bool) -> None:
    op.create_index(
        "ix_events_unpruned",
        "events",
        ["id"],
        unique=False,
        postgresql_where=sa.text("pruned_at IS NULL"),
        sqlite_where=sa.text("pruned_at IS NULL"),
        if_not_exists=True,
        **kw,
    )
    op.create_index(
        "ix_webhook_receipts_received_at",
        "webhook_receipts",
        ["received_at"],
        unique=False,
        if_not_exists=True,
        **kw,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_receipts_received_at", table_name="webhook_receipts")
    op.drop_index("ix_events_unpruned", table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("pruned_at")
