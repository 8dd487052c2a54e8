"""Large values of routing-weights versions stored once: ``routing_weight_parts``.

A version of the weights refers to its large values (a model's covariance, its full chunks of
pending gains) by digest instead of holding them; a value unchanged since the last version is
not written again. Versions stored before this migration hold all their values and still load.

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


def downgrade() -> None:
    op.drop_index("ix_routing_weight_parts_last_version", table_name="routing_weight_parts")
    op.drop_table("routing_weight_parts")
