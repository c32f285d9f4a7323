"""fewer indexes: drop two that another index's leading columns already cover

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:00:00

``ix_events_connection_status`` (connection_id, status) is the leading part of
``ix_events_connection_status_id`` (connection_id, status, id), added by 0008, and
``ix_webhook_receipts_connection_id`` (connection_id) the leading part of the unique
``uq_webhook_receipts_delivery`` (connection_id, delivery_id): every lookup the first of each
pair serves (a connection's rows, the cascade of its deletion), the second serves as well.
Each index costs a write on every webhook and, for the outbox, on every status change (a
claim, a send), so the redundant ones go.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_connection_status", table_name="events")
    op.drop_index("ix_webhook_receipts_connection_id", table_name="webhook_receipts")


def downgrade() -> None:
    op.create_index(
        "ix_webhook_receipts_connection_id", "webhook_receipts", ["connection_id"]
    )
    op.create_index(
        "ix_events_connection_status", "events", ["connection_id", "status"]
    )
