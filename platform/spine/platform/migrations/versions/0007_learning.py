"""The learning loop: what routed each call (strategy, decision, experiment arm), feedback,
versions of the learned routing weights, the events the learner applied, and experiments.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from spine.platform.schema import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model_calls") as calls:
        calls.add_column(sa.Column("strategy", sa.String(64), nullable=True))
        calls.add_column(sa.Column("task_category", sa.String(100), nullable=True))
        calls.add_column(sa.Column("completion_id", sa.String(64), nullable=True))
        calls.add_column(sa.Column("decision", JSON, nullable=True))
        calls.add_column(sa.Column("experiment_id", sa.String(36), nullable=True))
        calls.add_column(sa.Column("arm", sa.String(100), nullable=True))
    op.create_index("ix_model_calls_completion_id", "model_calls", ["completion_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(100), nullable=False),
        sa.Column("call_ids", JSON, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("announced_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("tenant", "target_kind", "target_id", "key_id", name="uq_feedback"),
    )
    op.create_table(
        "routing_weights",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "learned_events",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("applied_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scope", JSON, nullable=False),
        sa.Column("arms", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("promoted_arm", sa.String(100), nullable=True),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("stopped_at", UtcDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("experiments")
    op.drop_table("learned_events")
    op.drop_table("routing_weights")
    op.drop_table("feedback")
    op.drop_index("ix_model_calls_completion_id", "model_calls")
    with op.batch_alter_table("model_calls") as calls:
        for column in ("arm", "experiment_id", "decision", "completion_id", "task_category"):
            calls.drop_column(column)
        calls.drop_column("strategy")
