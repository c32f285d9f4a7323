"""webhook bodies: verified deliveries waiting for the worker to translate them

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 09:00:00

With ``CONNECTOR_WEBHOOK_TRANSLATION=worker`` the web process records a verified order or
checkout delivery and its body, sealed, and the worker makes its events
(``connector.inbox``). The table is empty otherwise, and whenever the worker keeps up.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import connector.store.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_bodies",
        sa.Column(
            "receipt_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey(
                "webhook_receipts.id",
                name="fk_webhook_bodies_receipt_id_webhook_receipts",
                ondelete="CASCADE",
            ),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "available_at",
            connector.store.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("receipt_id", name="pk_webhook_bodies"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # A sealed body (under 5 kB for a 28 kB order) is encrypted, so compressing it again
        # gains nothing: it is stored as is (EXTERNAL), and in the row itself while the row
        # fits a page, instead of in TOAST chunks that cost an index entry each.
        op.execute(
            "ALTER TABLE webhook_bodies ALTER COLUMN sealed SET STORAGE EXTERNAL"
        )
        op.execute("ALTER TABLE webhook_bodies SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    op.drop_table("webhook_bodies")
