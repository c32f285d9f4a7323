"""fewer outbox indexes: drop ix_events_connection_status, a prefix of another

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:00:00

``ix_events_connection_status`` (connection_id, status) is the leading part of
``ix_events_connection_status_id`` (connection_id, status, id), added by 0008: every lookup
the first serves, the second serves as well. Each index costs a write on every outbox insert
and on every status change (a claim, a send), so the redundant one goes.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_connection_status", table_name="events")


def downgrade() -> None:
    op.create_index(
        "ix_events_connection_status", "events", ["connection_id", "status"]
    )
