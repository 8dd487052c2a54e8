"""A key's own rate limits: requests and tokens per minute, beside the settings' defaults.

Both are nullable: a key without its own limits follows ``GENAI_LIMITS__KEY_*``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as keys:
        keys.add_column(sa.Column("requests_per_minute", sa.Integer(), nullable=True))
        keys.add_column(sa.Column("tokens_per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as keys:
        keys.drop_column("tokens_per_minute")
        keys.drop_column("requests_per_minute")
