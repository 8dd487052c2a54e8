"""Reservations held per call and per process: ``budget_holds`` and ``budget_holders``.

A reservation writes one hold per counter beside the counter's ``reserved``; its settlement or
release deletes it. Each process that reserves beats in ``budget_holders``; the holds of a
process that stopped beating (killed, frozen) are given back by the others, instead of staying
reserved until their period ends.

Reservations held when this migration runs have no holds: their settlements count their spend
but give nothing back, so they stay reserved until their period ends, as any reservation left
by a dead process did before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spine.platform.schema import Money, UtcDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_holds",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("holder", sa.String(36), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.PrimaryKeyConstraint("id", "scope", "period", "day"),
    )
    op.create_index("ix_budget_holds_holder", "budget_holds", ["holder"])
    op.create_table(
        "budget_holders",
        sa.Column("holder", sa.String(36), primary_key=True),
        sa.Column("seen_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_holders")
    op.drop_index("ix_budget_holds_holder", table_name="budget_holds")
    op.drop_table("budget_holds")
