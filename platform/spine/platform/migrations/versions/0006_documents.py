"""Documents and their chunks, with pgvector embeddings and an HNSW index (cosine).

On PostgreSQL with pgvector available, ``chunks.embedding`` is a ``vector(384)`` under an HNSW
index, and ``chunks.metadata`` has a GIN index for containment filters. SQLite (Tier 1) and a
PostgreSQL without pgvector get the same tables and index names with plain types, so the
schema stays one; the vector store then answers that it needs PostgreSQL with pgvector.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from spine.platform.schema import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
# The size of the vectors this revision stores (all-MiniLM-L6-v2's); a later revision changes it.
DIMENSIONS = 384


def upgrade() -> None:
    bind = op.get_bind()
    vectors = bind.dialect.name == "postgresql" and _pgvector_available(bind)
    if vectors:
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    elif bind.dialect.name == "postgresql":
        logger.warning(
            "pgvector is not installed in this PostgreSQL: documents are stored, but the "
            "vector store stays off until it is (see README, Documents and search)"
        )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("source", sa.String(1000), nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error", JSON, nullable=True),
        sa.Column("task_id", sa.String(36), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("embedded_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_documents_tenant_created", "documents", ["tenant", "created_at"])
    op.create_index("ix_documents_status_updated", "documents", ["status", "updated_at"])
    embedding: sa.types.TypeEngine[Any]
    if vectors:
        from pgvector.sqlalchemy import Vector

        embedding = Vector(DIMENSIONS)
    else:
        embedding = sa.LargeBinary()
    op.create_table(
        "chunks",
        sa.Column("document_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("char_start", sa.Integer(), nullable=False),
        sa.Column("char_end", sa.Integer(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("embedding", embedding, nullable=True),
    )
    op.create_index("ix_chunks_tenant", "chunks", ["tenant"])
    if vectors:
        op.create_index(
            "ix_chunks_embedding",
            "chunks",
            ["embedding"],
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        )
        op.create_index(
            "ix_chunks_metadata",
            "chunks",
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        )
    else:
        # The same names as on PostgreSQL, so the declared schema matches; never used here.
        op.create_index("ix_chunks_embedding", "chunks", ["embedding"])
        op.create_index("ix_chunks_metadata", "chunks", ["metadata"])


def downgrade() -> None:
    op.drop_index("ix_chunks_metadata", "chunks")
    op.drop_index("ix_chunks_embedding", "chunks")
    op.drop_index("ix_chunks_tenant", "chunks")
    op.drop_table("chunks")
    op.drop_index("ix_documents_status_updated", "documents")
    op.drop_index("ix_documents_tenant_created", "documents")
    op.drop_table("documents")


def _pgvector_available(bind: sa.Connection) -> bool:
    found = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    return found is not None
