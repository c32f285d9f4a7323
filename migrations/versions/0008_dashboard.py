"""dashboard: indexes that bound every dashboard query

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 02:30:00

Plain CREATE INDEX, which holds off writes to the outbox while it builds (seconds per
million rows). On a large production table, build them first by hand with CREATE INDEX
CONCURRENTLY and the same names and columns: this migration then skips them (IF NOT EXISTS).
It does not build them concurrently itself, because CONCURRENTLY waits for every open
transaction in the database, including the caller's own
(https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: name -> (columns, PostgreSQL INCLUDE columns for index-only scans)
INDEXES: dict[str, tuple[list[str], list[str]]] = {
    # the overview's 30-day counts and the match-quality sample
    "ix_events_connection_created": (
        ["connection_id", "created_at"],
        ["event_name", "status"],
    ),
    # the last event delivered (partial: see PARTIAL)
    "ix_events_connection_sent": (["connection_id", "sent_at"], []),
    # the events list, newest first, with or without a status filter
    "ix_events_connection_id": (["connection_id", "id"], []),
    "ix_events_connection_status_id": (["connection_id", "status", "id"], []),
    # search by event id (the order id or checkout token) and by Meta's trace id
    "ix_events_connection_event_id": (["connection_id", "event_id"], []),
    "ix_events_fbtrace_id": (["fbtrace_id"], []),
}


#: indexes that leave out the rows their queries never look for: a row waiting to be sent
#: has no sent_at and no fbtrace_id, so its insert, its claim and a retry write no entry
PARTIAL: dict[str, str] = {
    "ix_events_connection_sent": "sent_at IS NOT NULL",
    "ix_events_fbtrace_id": "fbtrace_id IS NOT NULL",
}


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, (columns, include) in INDEXES.items():
        where = sa.text(PARTIAL[name]) if name in PARTIAL else None
        if postgresql:
            op.create_index(
                name,
                "events",
                columns,
                postgresql_include=include,
                postgresql_where=where,
                if_not_exists=True,
            )
        else:
            op.create_index(name, "events", columns, sqlite_where=where)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="events")
