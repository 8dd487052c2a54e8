"""Vector search: the tenant's chunks nearest to a vector, with metadata filters (pgvector).

Search is an HNSW scan (cosine) that keeps the tenant and metadata filters (JSONB containment)
on the rows the index returns. With pgvector's iterative index scans (``relaxed_order``,
pgvector >= 0.8) the scan goes on until enough rows pass the filters, so a selective filter
does not starve the result; the index is asked for ``oversample`` times the rows wanted, and
those (whose distances are exact) are sorted again and cut. PostgreSQL plans each search for its
own tenant and filter, and takes the metadata index and an exact sort where a filter passes so
few rows that this is cheaper.

On PostgreSQL the search runs on a pooled connection's asyncpg driver directly
(:meth:`Database.driver`): the scan settings in one simple query with ``BEGIN``, then one
prepared statement (asyncpg caches it per connection), then ``COMMIT``. Through SQLAlchemy Core the same work cost about 3 ms of Python per
search (compiling, caching keys, the vector's text form built float by float); this is a fraction
of that. :func:`nearest_statement` stays the reference form of the query (the bench's exact scan
and ``EXPLAIN`` use it); :data:`NEAREST_SQL` must select the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.inputs import StoredJson, StoredText
from spine.platform.schema import ChunkRow, DocumentRow
from spine.platform.settings import DocumentSettings

__all__ = [
    "NEAREST_SQL",
    "SearchHit",
    "SearchQuery",
    "SearchResult",
    "VectorIndex",
    "nearest_statement",
    "scan_settings",
    "vector_literal",
]

_DOCS: sa.Table = DocumentRow.__table__  # type: ignore[assignment]
_CHUNKS: sa.Table = ChunkRow.__table__  # type: ignore[assignment]


class SearchQuery(BaseModel):
    """A vector search: the text to look for, how many hits, and metadata they must have."""

    model_config = ConfigDict(extra="forbid")

    query: StoredText
    k: int = Field(10, ge=1, le=100)
    filter: Annotated[dict[str, Any], StoredJson] = Field(
        default_factory=dict,
        description="Metadata every hit's document must contain (JSONB containment: "
        '{"team": "ops"} matches {"team": "ops", "year": 2024}).',
    )


class SearchHit(BaseModel):
    """One chunk that matched, with its score (cosine similarity, 1 is identical)."""

    document_id: str
    chunk: int
    text: str
    heading: str | None
    score: float
    metadata: dict[str, Any]
    source: str | None
    model: str


class SearchResult(BaseModel):
    """The best chunks, best first."""

    hits: list[SearchHit]
    models: list[str] = Field(description="The embedding models whose spaces were searched.")
    missing_models: list[str] = Field(
        default_factory=list,
        description="Models that embedded some of the tenant's documents but are no longer "
        "configured: those documents were not searched.",
    )


class VectorIndex:
    """Finds the nearest chunks of one tenant in one model's space."""

    def __init__(self, db: Database, settings: DocumentSettings) -> None:
        self._db = db
        self._settings = settings

    async def nearest(
        self, vector: Sequence[float], query: SearchQuery, *, tenant: str, model: str
    ) -> list[SearchHit]:
        """Return the tenant's ``k`` chunks in ``model``'s space nearest to ``vector``.

        Raises:
            ServiceUnavailable: The database is unreachable.
            BadRequest: A value cannot be searched for (the vector is not 384 numbers).
        """
        ef_search = max(self._settings.ef_search, query.k * self._settings.oversample)
        arguments: list[Any] = [
            vector_literal(vector),
            tenant,
            model,
            query.k * self._settings.oversample,
            query.k,
        ]
        sql = NEAREST_SQL.format(filter="")
        if query.filter:
            sql = NEAREST_SQL.format(filter="AND metadata @> $6::jsonb")
            arguments.append(json.dumps(query.filter))
        settings = _SCAN_SETTINGS.format(
            ef=int(ef_search), scan=int(self._settings.max_scan_tuples), mode="relaxed_order"
        )
        async with self._db.driver() as driver:
            # A failure leaves the transaction open: the pool then drops the connection.
            await driver.execute(f"BEGIN READ ONLY; {settings}")
            rows = await driver.fetch(sql, *arguments)
            await driver.execute("COMMIT")
        return [
            SearchHit(
                document_id=row["document_id"],
                chunk=row["seq"],
                text=row["text"],
                heading=row["heading"],
                score=1.0 - float(row["distance"]),
                metadata=row["metadata"] or {},
                source=row["source"],
                model=model,
            )
            for row in rows
        ]

    async def models(self, tenant: str) -> list[str]:
        """Return the models that embedded the tenant's searchable documents, sorted."""
        async with self._db.driver() as driver:
            rows = await driver.fetch(_MODELS_SQL, tenant)
        return sorted(str(row["model"]) for row in rows)


_MODELS_SQL = (
    "SELECT DISTINCT model FROM documents "
    "WHERE tenant = $1 AND status = 'embedded' AND model IS NOT NULL"
)

# The settings of one search's transaction (integers and a fixed word: nothing to quote).
_SCAN_SETTINGS = (
    "SET LOCAL hnsw.ef_search = {ef}; SET LOCAL hnsw.iterative_scan = {mode}; "
    "SET LOCAL hnsw.max_scan_tuples = {scan}; SET LOCAL plan_cache_mode = force_custom_plan"
)

# What nearest_statement builds, as one statement for asyncpg: $1 the query vector (text),
# $2 the tenant, $3 the model, $4 the candidates, $5 k, and $6 the metadata filter if any.
NEAREST_SQL = """
WITH found AS MATERIALIZED (
    SELECT document_id, seq, text, heading, metadata, embedding <=> $1::vector AS distance
    FROM chunks
    WHERE tenant = $2 AND model = $3 AND embedding IS NOT NULL {filter}
    ORDER BY embedding <=> $1::vector
    LIMIT $4
)
SELECT found.document_id, found.seq, found.text, found.heading, found.metadata,
       found.distance, documents.source
FROM found JOIN documents ON documents.id = found.document_id
ORDER BY found.distance, found.document_id, found.seq
LIMIT $5
"""


def vector_literal(vector: Sequence[float]) -> str:
    """Write a vector in pgvector's text form, ``[x,y,...]`` (``repr`` round-trips a float)."""
    return "[" + ",".join(map(repr, map(float, vector))) + "]"


def nearest_statement(
    vector: Sequence[float],
    *,
    tenant: str,
    model: str,
    k: int,
    metadata: dict[str, Any],
    oversample: int = 1,
) -> sa.Select[Any]:
    """Build the search: the ``k`` nearest chunks that pass the filters, in exact order.

    The inner query is what the HNSW index serves (its ``ORDER BY`` is the distance, the
    filters apply to the rows it returns). It asks for ``k * oversample`` rows: an iterative
    scan stops as soon as it has that many rows that pass the filters, and under a filter
    that passes one row in ten, the first ``k`` to pass are often not the ``k`` nearest of
    those that do. The candidates (whose distances are exact) are then materialized, sorted
    again (``relaxed_order`` returns them roughly in order) and cut to ``k``.
    """
    distance = _CHUNKS.c.embedding.cosine_distance(list(vector))
    conditions = [
        _CHUNKS.c.tenant == tenant,
        _CHUNKS.c.model == model,
        _CHUNKS.c.embedding.is_not(None),
    ]
    if metadata:
        wanted = sa.cast(sa.literal(json.dumps(metadata), sa.Text()), JSONB())
        conditions.append(sa.type_coerce(_CHUNKS.c.metadata, JSONB()).contains(wanted))
    found = (
        sa.select(
            _CHUNKS.c.document_id,
            _CHUNKS.c.seq,
            _CHUNKS.c.text,
            _CHUNKS.c.heading,
            _CHUNKS.c.metadata,
            distance.label("distance"),
        )
        .where(*conditions)
        .order_by(distance)
        .limit(k * oversample)
        .cte("found")
        .prefix_with("MATERIALIZED")
    )
    return (
        sa.select(found, _DOCS.c.source)
        .join(_DOCS, _DOCS.c.id == found.c.document_id)
        .order_by(found.c.distance, found.c.document_id, found.c.seq)
        .limit(k)
    )


async def scan_settings(
    conn: AsyncConnection, *, ef_search: int, max_scan_tuples: int, iterative: bool = True
) -> None:
    """Set the HNSW scan for this transaction only.

    ``ef_search`` is the candidate list; with ``iterative`` (pgvector >= 0.8) the scan goes on
    past it until enough rows pass the filters, or ``max_scan_tuples`` rows were visited.
    Every search is planned for its own tenant and filter (``force_custom_plan``): a generic
    plan, which the driver's prepared statements get after five runs, would choose between the
    HNSW index and an exact scan of the filtered rows without knowing how selective they are.
    """
    await conn.execute(
        sa.text(
            "SELECT set_config('hnsw.ef_search', :ef, true), "
            "set_config('hnsw.iterative_scan', :mode, true), "
            "set_config('hnsw.max_scan_tuples', :scan, true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true)"
        ),
        {
            "ef": str(ef_search),
            "mode": "relaxed_order" if iterative else "off",
            "scan": str(max_scan_tuples),
        },
    )
