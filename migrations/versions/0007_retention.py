"""retention: events.pruned_at, and the indexes the daily prune reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 02:30:00

Safe while the previous release still runs: the new column is nullable with no default (a
catalog change only on PostgreSQL, and old processes insert NULL, "not pruned yet"), and on
PostgreSQL the indexes are built CONCURRENTLY, so webhooks keep writing during the build.
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
    if op.get_bind().dialect.name == "postgresql":
        # Outside the migration's transaction: CONCURRENTLY cannot run inside one.
        with op.get_context().autocommit_block():
            _create_indexes(postgresql_concurrently=True)
    else:
        _create_indexes()


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
