"""The agent step journal, and pauses for human approval.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from spine.platform.schema import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "task_steps",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    with op.batch_alter_table("tasks") as tasks:
        tasks.add_column(sa.Column("approval", JSON, nullable=True))
        tasks.add_column(sa.Column("approval_expires_at", UtcDateTime(), nullable=True))
        tasks.add_column(
            sa.Column("resumes", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.create_index("ix_tasks_state_approval", "tasks", ["state", "approval_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_state_approval", "tasks")
    with op.batch_alter_table("tasks") as tasks:
        tasks.drop_column("resumes")
        tasks.drop_column("approval_expires_at")
        tasks.drop_column("approval")
    op.drop_table("task_steps")
