"""Every state database gets an install id of its own, part of every message id.

Segment drops a message whose ``messageId`` it has already seen (for about a day), across sources and
workspaces. Message ids were a hash of the change alone (destination, key, user, value, base run), so two
installs syncing the same source, a staging and a production one, or a state database rebuilt from scratch,
made the same ids and lost each other's messages as duplicates. The install id is made here, once per state
database: for a new one when it is created, for an existing one when it is upgraded. Changes already in the
outbox keep the ids they were given; the next run recomputes whatever is still owed (superseding those rows),
and its rows carry the install id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    install = op.create_table(
        "install",
        sa.Column("install_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("install_id"),
    )
    now = dt.datetime.now(dt.UTC)
    if op.get_bind().dialect.name == "sqlite":  # as schema.UTCDateTime stores it: naive UTC
        now = now.replace(tzinfo=None)
    op.bulk_insert(install, [{"install_id": uuid.uuid4().hex, "created_at": now}])


def downgrade() -> None:
    op.drop_table("install")
