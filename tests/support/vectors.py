"""Synthetic vectors for recall tests and the vector benchmark, and a fast bulk loader.

Embeddings of real texts are not spread evenly over the sphere: they bunch around topics. The
synthetic set imitates that with a mixture of Gaussian clusters (a few hundred topic centres,
each point a centre plus noise, normalised), which is also where approximate search is usually
judged. :func:`uniform_vectors` gives the harder, structureless case for comparison.

:func:`load_chunks` writes vectors as chunks (and the documents that own them) with binary
``COPY`` through asyncpg, then builds the HNSW index once, as the schema declares it: inserting
row by row into an existing HNSW index costs far more than building it at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import sqlalchemy as sa
from pgvector.asyncpg import register_vector

from spine.platform.schema import ChunkRow

__all__ = [
    "Loaded",
    "clustered_vectors",
    "exact_top_k",
    "load_chunks",
    "recall_at_k",
    "uniform_vectors",
]

INDEX = "ix_chunks_embedding"


def clustered_vectors(
    count: int, *, dims: int = 384, clusters: int = 1000, spread: float = 1.0, seed: int = 7
) -> np.ndarray:
    """Return ``count`` unit vectors around ``clusters`` random centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    picked = rng.integers(0, clusters, size=count)
    noise = rng.standard_normal((count, dims)).astype(np.float32) * (spread / np.sqrt(dims))
    points: np.ndarray = centres[picked] + noise
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def uniform_vectors(count: int, *, dims: int = 384, seed: int = 7) -> np.ndarray:
    """Return ``count`` unit vectors spread evenly over the sphere (float32)."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((count, dims)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def exact_top_k(
    vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None
) -> list[int]:
    """Return the rows of the ``k`` vectors nearest to ``query`` by cosine (exact)."""
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    best = np.argpartition(-scores, k)[:k]
    return [int(i) for i in best[np.argsort(-scores[best])] if np.isfinite(scores[i])]


def recall_at_k(found: list[int], exact: list[int]) -> float:
    """Return the share of the exact top-k that the approximate search found."""
    if not exact:
        return 1.0
    return len(set(found) & set(exact)) / len(exact)


@dataclass(slots=True, kw_only=True)
class Loaded:
    """The chunk ids in row order (``<document id>:<seq>``), and how long loading took."""

    ids: list[str]
    copy_s: float
    index_s: float


async def load_chunks(
    dsn: str,
    vectors: np.ndarray,
    *,
    tenant: str,
    model: str,
    metadata: Callable[[int], dict[str, Any]],
    per_document: int = 100,
    maintenance_work_mem: str = "1GB",
    text: Callable[[int], str] | None = None,
) -> Loaded:
    """Store each vector as a chunk of ``tenant``'s documents, then build the HNSW index.

    Row ``i`` of ``vectors`` is chunk ``ids[i]`` of the answer; its text is ``text(i)``
    (default ``chunk <i>``).
    """
    connection = await asyncpg.connect(dsn)
    try:
        await register_vector(connection)
        now = datetime.now(UTC)
        documents: list[tuple[Any, ...]] = []
        chunks: list[tuple[Any, ...]] = []
        ids: list[str] = []
        document_id = ""
        for row, vector in enumerate(vectors):
            if row % per_document == 0:
                document_id = str(uuid.uuid4())
                size = min(per_document, len(vectors) - row)
                documents.append(
                    (
                        document_id,
                        tenant,
                        "synthetic",
                        "text",
                        "{}",
                        "embedded",
                        size,
                        size,
                        model,
                        now,
                        now,
                        now,
                    )
                )
            seq = row % per_document
            chunk_text = text(row) if text is not None else f"chunk {row}"
            chunks.append(
                (
                    document_id,
                    seq,
                    tenant,
                    chunk_text,
                    0,
                    len(chunk_text),
                    json.dumps(metadata(row)),
                    model,
                    vector,
                )
            )
            ids.append(f"{document_id}:{seq}")
        await connection.copy_records_to_table(
            "documents",
            records=documents,
            columns=[
                "id", "tenant", "source", "format", "metadata", "status", "size",
                "chunk_count", "model", "created_at", "updated_at", "embedded_at",
            ],
        )  # fmt: skip
        await connection.execute(f"DROP INDEX IF EXISTS {INDEX}")
        started = time.perf_counter()
        await connection.copy_records_to_table(
            "chunks",
            records=chunks,
            columns=[
                "document_id", "seq", "tenant", "text", "char_start", "char_end", "metadata",
                "model", "embedding",
            ],
        )  # fmt: skip
        copied = time.perf_counter()
        await connection.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        await connection.execute(_index_ddl())
        indexed = time.perf_counter()
        await connection.execute("ANALYZE chunks")
        await connection.execute("ANALYZE documents")
        return Loaded(ids=ids, copy_s=copied - started, index_s=indexed - copied)
    finally:
        await connection.close()


def _index_ddl() -> str:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex

    table: sa.Table = ChunkRow.__table__  # type: ignore[assignment]
    index = next(i for i in table.indexes if i.name == INDEX)
    # SQLAlchemy's dialect classes have untyped constructors.
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(CreateIndex(index).compile(dialect=dialect))
