"""match quality: per-event match keys, daily coverage, Meta's scores, warnings

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 02:12:09.054296
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import connector.store.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "match_coverage_daily",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event_name", sa.String(length=64), nullable=False),
        sa.Column("events_sent", sa.Integer(), nullable=False),
        sa.Column("key_counts", sa.JSON(), nullable=False),
        sa.Column("estimate_tenths", sa.Integer(), nullable=False),
        sa.Column(
            "updated_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_match_coverage_daily_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_match_coverage_daily")),
        sa.UniqueConstraint(
            "connection_id",
            "day",
            "event_name",
            name="uq_match_coverage_daily_connection_day_name",
        ),
    )
    op.create_table(
        "meta_event_scores",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("pixel_id", sa.String(length=64), nullable=False),
        sa.Column("event_name", sa.String(length=64), nullable=False),
        sa.Column("composite_score", sa.Float(), nullable=True),
        sa.Column("event_coverage", sa.Float(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.Column(
            "fetched_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_meta_event_scores_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meta_event_scores")),
        sa.UniqueConstraint(
            "connection_id", "event_name", name="uq_meta_event_scores_connection_name"
        ),
    )
    op.create_table(
        "meta_quality_checks",
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("pixel_id", sa.String(length=64), nullable=True),
        sa.Column("token_digest", sa.String(length=16), nullable=True),
        sa.Column(
            "checked_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_meta_quality_checks_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_meta_quality_checks")),
    )
    op.create_table(
        "quality_warnings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("event_name", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "raised_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "cleared_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_quality_warnings_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_warnings")),
        sa.UniqueConstraint(
            "connection_id",
            "kind",
            "event_name",
            name="uq_quality_warnings_connection_kind_name",
        ),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("match_keys", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("match_keys")

    op.drop_table("quality_warnings")
    op.drop_table("meta_quality_checks")
    op.drop_table("meta_event_scores")
    op.drop_table("match_coverage_daily")
