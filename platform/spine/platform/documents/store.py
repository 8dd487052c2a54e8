"""The vector store: documents cut into chunks, embedded through the router, searched by tenant.

PostgreSQL with pgvector only (Tier 3): on SQLite, or a PostgreSQL without pgvector, every
operation raises :class:`VectorStoreUnsupported` (HTTP 501) saying what is needed.

A document is stored with its chunks and ``status: queued`` in one transaction (:meth:`add`);
the embedding happens later, durably, in a task (agent ``embed_document``) that calls
:meth:`embed`. Embedding is all or nothing per document: the vectors of every chunk are written
in one transaction with ``status: embedded``, so a search never sees half a document. A
provider that is down leaves the document queued (its ``attempts`` and last ``error`` say so)
and the task is retried; a request that can never succeed marks it ``failed``.

Vectors of different models live in different spaces. A document is embedded by one model
only, chosen when it is added (``GENAI_DOCUMENTS__EMBEDDING_MODEL``, else the model of the
tenant's latest document, else the router's first choice) and recorded on it and its chunks,
with no fallback to another model. A search embeds the query with each model the tenant's
documents use (usually one) and searches each space.

The search itself (an HNSW scan with the tenant and metadata filters) is
:mod:`spine.platform.documents.vector_search`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.db import Database
from spine.platform.documents.chunking import Chunker
from spine.platform.documents.models import (
    Document,
    DocumentInput,
    DocumentStatus,
    TextEmbedder,
    VectorStoreUnsupported,
)
from spine.platform.documents.vector_search import SearchHit, SearchQuery, SearchResult, VectorIndex
from spine.platform.errors import (
    BadRequest,
    BudgetExceeded,
    NotFound,
    PayloadTooLarge,
    SpineError,
    UnknownModel,
)
from spine.platform.metering import CallContext
from spine.platform.models import EmbeddingRequest
from spine.platform.router import Requirements
from spine.platform.schema import EMBEDDING_DIMENSIONS, ChunkRow, DocumentRow, TaskRow, utcnow
from spine.platform.settings import DocumentSettings

__all__ = [
    "Document",
    "DocumentInput",
    "DocumentStatus",
    "DocumentStore",
    "TextEmbedder",
    "VectorStoreUnsupported",
]

logger = logging.getLogger(__name__)

_DOCS: sa.Table = DocumentRow.__table__  # type: ignore[assignment]
_CHUNKS: sa.Table = ChunkRow.__table__  # type: ignore[assignment]
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]
MAX_METADATA_BYTES = 16 * 1024
_FINISHED_TASK = ("succeeded", "failed", "cancelled", "dead_lettered")


class DocumentStore:
    """Adds, embeds, reads, deletes and searches documents in PostgreSQL with pgvector."""

    def __init__(self, db: Database, *, settings: DocumentSettings, calls: TextEmbedder) -> None:
        self._db = db
        self._settings = settings
        self._calls = calls
        self._chunker = Chunker(size=settings.chunk_chars, overlap=settings.overlap_chars)
        self._index = VectorIndex(db, settings)
        self._checked: bool = False
        # (tenant, model, query) -> its vector, least recently used first.
        self._query_vectors: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()

    async def require_vectors(self) -> None:
        """Make sure the database holds vectors, once per process.

        Raises:
            VectorStoreUnsupported: SQLite, or PostgreSQL without pgvector.
        """
        if self._checked:
            return
        if self._db.is_sqlite:
            raise VectorStoreUnsupported(
                "documents and vector search need PostgreSQL with pgvector (Tier 3); this "
                "deployment runs on SQLite: set GENAI_DATABASE_URL=postgresql://... or leave it "
                "unset for `spine up`'s embedded PostgreSQL",
                field="GENAI_DATABASE_URL",
            )
        query = sa.text(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        )
        async with self._db.transaction() as conn:
            kind = (await conn.execute(query)).scalar()
        if not str(kind).startswith("vector"):
            raise VectorStoreUnsupported(
                "this PostgreSQL had no pgvector extension when the schema was created, so "
                "chunks cannot hold vectors: install pgvector (the pgvector/pgvector image, or "
                "`spine up`'s embedded PostgreSQL) in a new database",
                field="GENAI_DATABASE_URL",
            )
        self._checked = True

    # -- documents ------------------------------------------------------------------------------

    async def add(
        self, given: DocumentInput, *, tenant: str, key_id: str | None = None
    ) -> Document:
        """Cut the document into chunks and store them, queued for embedding.

        Raises:
            VectorStoreUnsupported: See :meth:`require_vectors`.
            PayloadTooLarge: The text or the metadata is over its limit.
            BadRequest: The text is empty, or no model can embed it.
            ProviderNotConfigured: No model makes embeddings.
        """
        await self.require_vectors()
        size = len(given.text.encode("utf-8"))
        if size > self._settings.max_bytes:
            raise PayloadTooLarge(
                f"the document's text is {size} bytes, over the limit of "
                f"{self._settings.max_bytes} (GENAI_DOCUMENTS__MAX_BYTES)",
                field="text",
            )
        metadata = json.dumps(given.metadata, default=str)
        if len(metadata.encode("utf-8")) > MAX_METADATA_BYTES:
            raise PayloadTooLarge(
                f"the document's metadata is over {MAX_METADATA_BYTES} bytes", field="metadata"
            )
        # PostgreSQL's text and jsonb cannot hold a NUL character.
        for name, value in (("text", given.text), ("metadata", given.metadata)):
            if _holds_nul(value):
                raise BadRequest(
                    f"'{name}' holds a NUL character, which cannot be stored", field=name
                )
        chunks = self._chunker.split(given.text, markdown=given.format == "markdown")
        if not chunks:
            raise BadRequest("'text' is empty: a document needs some text", field="text")
        model = await self._model_for(tenant)
        now = utcnow()
        document_id = str(uuid.uuid4())
        row = {
            "id": document_id,
            "tenant": tenant,
            "key_id": key_id,
            "source": given.source,
            "format": given.format,
            "metadata": given.metadata,
            "status": "queued",
            "size": size,
            "chunk_count": len(chunks),
            "model": model,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        pieces = [
            {
                "document_id": document_id,
                "seq": chunk.seq,
                "tenant": tenant,
                "text": chunk.text,
                "heading": chunk.heading,
                "char_start": chunk.start,
                "char_end": chunk.end,
                "metadata": given.metadata,
            }
            for chunk in chunks
        ]
        async with self._db.transaction() as conn:
            await conn.execute(sa.insert(_DOCS), [row])
            await conn.execute(sa.insert(_CHUNKS), pieces)
        logger.info("document %s stored: %d chunks for %s", document_id, len(chunks), model)
        return await self.get(document_id, tenant=tenant)

    async def get(self, document_id: str, *, tenant: str) -> Document:
        """Return the tenant's document.

        Raises:
            NotFound: No such document for this tenant.
        """
        await self.require_vectors()
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(_DOCS).where(_DOCS.c.id == document_id, _DOCS.c.tenant == tenant)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"no document {document_id!r}", field="document_id")
        return _document(row._mapping)

    async def list_page(
        self,
        *,
        tenant: str,
        status: DocumentStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Document], str | None]:
        """Return the tenant's documents, newest first, ``limit`` at a time, and the next cursor."""
        await self.require_vectors()
        query = sa.select(_DOCS).where(_DOCS.c.tenant == tenant)
        if status is not None:
            query = query.where(_DOCS.c.status == status)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    _DOCS.c.created_at < created_at,
                    sa.and_(_DOCS.c.created_at == created_at, _DOCS.c.id < last_id),
                )
            )
        query = query.order_by(_DOCS.c.created_at.desc(), _DOCS.c.id.desc()).limit(limit + 1)
        async with self._db.transaction() as conn:
            rows = [row._mapping for row in (await conn.execute(query)).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        following = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [_document(row) for row in rows], following

    async def delete(self, document_id: str, *, tenant: str) -> None:
        """Remove the tenant's document and its chunks.

        Raises:
            NotFound: No such document for this tenant.
        """
        await self.require_vectors()
        async with self._db.transaction() as conn:
            gone = await conn.execute(
                sa.delete(_DOCS).where(_DOCS.c.id == document_id, _DOCS.c.tenant == tenant)
            )
            if not gone.rowcount:
                raise NotFound(f"no document {document_id!r}", field="document_id")
            await conn.execute(
                sa.delete(_CHUNKS).where(
                    _CHUNKS.c.document_id == document_id, _CHUNKS.c.tenant == tenant
                )
            )
        logger.info("document %s deleted", document_id)

    async def attach_task(self, document_id: str, task_id: str) -> None:
        """Record the task that embeds the document."""
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(_DOCS)
                .where(_DOCS.c.id == document_id)
                .values(task_id=task_id, updated_at=utcnow())
            )

    async def waiting(
        self, *, retry_after: float, orphan_after: float, limit: int = 100
    ) -> list[Document]:
        """Return queued documents that no live task will embed.

        Those whose task ended ``retry_after`` seconds ago or more (a provider outage outlasted
        its attempts, or a budget was spent), and those that never got a task within
        ``orphan_after`` seconds (the API process died in between).
        """
        if self._db.is_sqlite:
            return []
        now = utcnow()
        task_ended = sa.exists().where(
            _TASKS.c.id == _DOCS.c.task_id, _TASKS.c.state.in_(_FINISHED_TASK)
        )
        task_lost = ~sa.exists().where(_TASKS.c.id == _DOCS.c.task_id)
        query = (
            sa.select(_DOCS)
            .where(
                _DOCS.c.status == "queued",
                sa.or_(
                    sa.and_(
                        _DOCS.c.updated_at < now - timedelta(seconds=retry_after),
                        sa.or_(task_ended, task_lost),
                    ),
                    sa.and_(
                        _DOCS.c.updated_at < now - timedelta(seconds=orphan_after),
                        _DOCS.c.task_id.is_(None),
                    ),
                ),
            )
            .order_by(_DOCS.c.updated_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [_document(row._mapping) for row in rows]

    async def claim_retry(self, document: Document) -> bool:
        """Take the right to schedule ``document`` again; False when another process has it.

        The document's ``updated_at`` is the token: only the first process to move it on from
        what :meth:`waiting` returned may submit the new task.
        """
        async with self._db.transaction() as conn:
            claimed = await conn.execute(
                sa.update(_DOCS)
                .where(
                    _DOCS.c.id == document.id,
                    _DOCS.c.status == "queued",
                    _DOCS.c.updated_at == document.updated_at,
                )
                .values(updated_at=utcnow())
            )
        return bool(claimed.rowcount)

    # -- embedding ------------------------------------------------------------------------------

    async def embed(self, document_id: str, context: CallContext) -> Document | None:
        """Embed every chunk of a queued document and make it searchable, all at once.

        Returns the document (as it is now), or None when it was deleted meanwhile.

        Raises:
            SpineError: The embedding failed. A retryable failure, or a spent budget, leaves
                the document queued with the error noted; any other marks it failed.
        """
        tenant = context.tenant
        try:
            document = await self.get(document_id, tenant=tenant)
        except NotFound:
            return None
        if document.status != "queued":
            return document
        async with self._db.transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(_CHUNKS.c.seq, _CHUNKS.c.text, _CHUNKS.c.heading)
                    .where(_CHUNKS.c.document_id == document_id, _CHUNKS.c.tenant == tenant)
                    .order_by(_CHUNKS.c.seq)
                )
            ).all()
        texts = [f"{r.heading}\n\n{r.text}" if r.heading else r.text for r in rows]
        vectors: list[list[float]] = []
        try:
            for start in range(0, len(texts), self._settings.batch_size):
                batch = texts[start : start + self._settings.batch_size]
                metered = await self._calls.embed(
                    EmbeddingRequest(
                        texts=batch,
                        model=document.model,
                        dimensions=EMBEDDING_DIMENSIONS,
                        fallback=False,
                    ),
                    context,
                )
                vectors.extend(metered.embedding.vectors)
        except SpineError as exc:
            await self._failed(document, exc)
            raise
        model = document.model
        async with self._db.transaction() as conn:
            done = await conn.execute(
                sa.update(_DOCS)
                .where(
                    _DOCS.c.id == document_id,
                    _DOCS.c.tenant == tenant,
                    _DOCS.c.status == "queued",
                )
                .values(
                    status="embedded",
                    error=None,
                    embedded_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            if done.rowcount:
                await conn.execute(
                    sa.update(_CHUNKS)
                    .where(
                        _CHUNKS.c.document_id == sa.bindparam("p_document"),
                        _CHUNKS.c.seq == sa.bindparam("p_seq"),
                    )
                    .values(embedding=sa.bindparam("p_embedding"), model=model),
                    [
                        {"p_document": document_id, "p_seq": row.seq, "p_embedding": vector}
                        for row, vector in zip(rows, vectors, strict=True)
                    ],
                )
        logger.info("document %s embedded: %d chunks by %s", document_id, len(rows), model)
        try:
            return await self.get(document_id, tenant=tenant)
        except NotFound:
            return None

    async def _failed(self, document: Document, exc: SpineError) -> None:
        stays = exc.retryable or isinstance(exc, BudgetExceeded)
        error = {"type": exc.error_type, "message": exc.message, "retryable": stays}
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(_DOCS)
                .where(_DOCS.c.id == document.id, _DOCS.c.status == "queued")
                .values(
                    status="queued" if stays else "failed",
                    attempts=_DOCS.c.attempts + 1,
                    error=error,
                    updated_at=utcnow(),
                )
            )
        logger.warning(
            "document %s %s: %s", document.id, "stays queued" if stays else "failed", exc.message
        )

    async def _model_for(self, tenant: str) -> str:
        """Choose the model that embeds a new document of ``tenant`` (see the module doc)."""
        router = self._calls.router
        needs = Requirements.for_embedding([], dimensions=EMBEDDING_DIMENSIONS)
        wanted = self._settings.embedding_model
        if wanted is None:
            async with self._db.transaction() as conn:
                latest = (
                    await conn.execute(
                        sa.select(_DOCS.c.model)
                        .where(_DOCS.c.tenant == tenant, _DOCS.c.model.is_not(None))
                        .order_by(_DOCS.c.created_at.desc())
                        .limit(1)
                    )
                ).scalar()
            known = latest is not None and latest in router.catalog
            if known and router.catalog.get(str(latest)) in router.catalog.embedding_models():
                wanted = str(latest)
        # The plan refuses a model that cannot give vectors of the store's size.
        plan = router.plan(needs, model=wanted)
        return plan.models[0].name

    # -- search ---------------------------------------------------------------------------------

    async def search(self, query: SearchQuery, context: CallContext) -> SearchResult:
        """Return the ``k`` chunks of the tenant's documents nearest to the query.

        Raises:
            VectorStoreUnsupported: See :meth:`require_vectors`.
            BadRequest: The query is empty.
        """
        await self.require_vectors()
        if not query.query.strip():
            raise BadRequest("'query' is empty: say what to look for", field="query")
        tenant = context.tenant
        models = await self._index.models(tenant)
        hits: list[SearchHit] = []
        searched: list[str] = []
        missing: list[str] = []
        for model in models:
            try:
                vector = await self._query_vector(query.query, model, context)
            except UnknownModel:
                # Only that model can embed a query for its vectors: say what was left out.
                logger.warning("documents embedded by %s not searched: not configured", model)
                missing.append(model)
                continue
            searched.append(model)
            hits.extend(await self.nearest(vector, query, tenant, model))
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return SearchResult(hits=hits[: query.k], models=searched, missing_models=missing)

    async def nearest(
        self, vector: Sequence[float], query: SearchQuery, tenant: str, model: str
    ) -> list[SearchHit]:
        """Return the tenant's ``k`` chunks in ``model``'s space nearest to ``vector``."""
        return await self._index.nearest(vector, query, tenant=tenant, model=model)

    async def _query_vector(self, text: str, model: str, context: CallContext) -> list[float]:
        """Embed a query with ``model``, or return its vector from the last searches.

        A vector is cached per tenant (no tenant can time another's searches), only while the
        model is configured (one that is gone answers UnknownModel as before), and costs
        nothing again: a repeated query makes no model call, so no usage row either.
        """
        key = (context.tenant, model, text)
        size = self._settings.query_cache
        cached = self._query_vectors.get(key) if size else None
        if cached is not None and model in self._calls.router.catalog:
            self._query_vectors.move_to_end(key)
            return cached
        metered = await self._calls.embed(
            EmbeddingRequest(
                texts=[text], model=model, dimensions=EMBEDDING_DIMENSIONS, fallback=False
            ),
            context,
        )
        vector = metered.embedding.vectors[0]
        if size:
            self._query_vectors[key] = vector
            while len(self._query_vectors) > size:
                self._query_vectors.popitem(last=False)
        return vector


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _document(row: Any) -> Document:
    return Document(
        id=row["id"],
        tenant=row["tenant"],
        key_id=row["key_id"],
        source=row["source"],
        format=row["format"],
        metadata=row["metadata"] or {},
        status=row["status"],
        size=row["size"],
        chunk_count=row["chunk_count"],
        model=row["model"],
        attempts=row["attempts"],
        error=row["error"],
        task_id=row["task_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        embedded_at=row["embedded_at"],
    )
