"""On SQLite, ``budget_spend``'s primary key takes ``period`` too: ``(scope, period, day)``.

Migration 0009 copied the table into its new shape on SQLite with ``period`` outside the key,
so a weekly or monthly period starting on the same day as the daily one (a Monday, the 1st)
could not get its row: the call was refused. PostgreSQL had the right key from 0009 on.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spine.platform.schema import Money

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _copy_with_key(["scope", "period", "day"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _copy_with_key(["scope", "day"])


def _copy_with_key(key: list[str]) -> None:
    # SQLite cannot change a primary key: the table is copied into its new shape.
    op.create_table(
        "budget_spend_keyed",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("period", sa.String(8), nullable=False, server_default="daily"),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("spent", Money(), nullable=False),
        sa.Column("reserved", Money(), nullable=False),
        sa.PrimaryKeyConstraint(*key),
    )
    op.execute(
        "INSERT OR IGNORE INTO budget_spend_keyed (scope, period, day, spent, reserved) "
        "SELECT scope, period, day, spent, reserved FROM budget_spend"
    )
    op.drop_table("budget_spend")
    op.rename_table("budget_spend_keyed", "budget_spend")
