"""order sweeps: high-water marks, periodic job leases, webhook repairs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 02:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import connector.store.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("tick", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column(
            "started_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "finished_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job", "tick", name=op.f("pk_job_runs")),
    )
    op.create_table(
        "sweep_states",
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column(
            "swept_until",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "last_run_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_counts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_sweep_states_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_sweep_states")),
    )
    op.create_table(
        "webhook_repairs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column(
            "repaired_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_webhook_repairs_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_repairs")),
    )
    with op.batch_alter_table("webhook_repairs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_repairs_connection_id"),
            ["connection_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_repairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_repairs_connection_id"))
    op.drop_table("webhook_repairs")
    op.drop_table("sweep_states")
    op.drop_table("job_runs")
