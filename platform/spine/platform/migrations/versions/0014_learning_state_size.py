"""The learning state stops growing: ``routing_weight_parts``, and ``learned_events`` by age.

A version of the weights refers to its large values (a model's covariance, its full chunks of
pending gains) by digest instead of holding them; a value unchanged since the last version is
not written again. Versions stored before this migration hold all their values and still load.

``learned_events`` gets an index on ``applied_at``: the learner forgets an applied event id once
OUTCOMES can no longer deliver that event (it kept every id forever, one row per model call).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_weight_parts",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
    )
    op.create_index(
        "ix_routing_weight_parts_last_version", "routing_weight_parts", ["last_version"]
    )
    op.create_index("ix_learned_events_applied_at", "learned_events", ["applied_at"])


def downgrade() -> None:
    op.drop_index("ix_learned_events_applied_at", table_name="learned_events")
    op.drop_index("ix_routing_weight_parts_last_version", table_name="routing_weight_parts")
    op.drop_table("routing_weight_parts")
