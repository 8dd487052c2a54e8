"""Budgets by period, stored limits, and the thresholds each budget reached.

``budget_spend`` gains ``period`` (``daily``, ``weekly``, ``monthly``; the rows already there are
daily) and its ``day`` becomes the period's first day; ``budget_limits`` holds the limits set
over the admin API or the CLI; ``budget_alerts`` one row per budget, period and threshold
reached, whose primary key lets exactly one process announce it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spine.platform.schema import Money, UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    period = sa.Column("period", sa.String(8), nullable=False, server_default="daily")
    if op.get_bind().dialect.name == "postgresql":
        # In place: the counters of calls in flight stay where they are.
        op.add_column("budget_spend", period)
        op.drop_constraint("budget_spend_pkey", "budget_spend", type_="primary")
        op.create_primary_key("budget_spend_pkey", "budget_spend", ["scope", "period", "day"])
    else:
        # SQLite cannot change a primary key: the table is copied into its new shape.
        op.create_table(
            "budget_spend_periods",
            sa.Column("scope", sa.String(200), primary_key=True),
            period,
            sa.Column("day", sa.Date(), primary_key=True),
            sa.Column("spent", Money(), nullable=False),
            sa.Column("reserved", Money(), nullable=False),
        )
        op.execute(
            "INSERT INTO budget_spend_periods (scope, period, day, spent, reserved) "
            "SELECT scope, 'daily', day, spent, reserved FROM budget_spend"
        )
        op.drop_table("budget_spend")
        op.rename_table("budget_spend_periods", "budget_spend")
    op.create_table(
        "budget_limits",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(32), nullable=True),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("period_start", sa.Date(), primary_key=True),
        sa.Column("threshold", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("spent", Money(), nullable=False),
        sa.Column("reached_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_alerts")
    op.drop_table("budget_limits")
    op.execute("DELETE FROM budget_spend WHERE period <> 'daily'")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("budget_spend_pkey", "budget_spend", type_="primary")
        op.create_primary_key("budget_spend_pkey", "budget_spend", ["scope", "day"])
        op.drop_column("budget_spend", "period")
    else:
        with op.batch_alter_table("budget_spend", recreate="always") as spend:
            spend.drop_column("period")
