"""``/v1/documents`` and ``/v1/search``: the vector store over HTTP (PostgreSQL with pgvector).

``POST /v1/documents`` stores a text or markdown document (``queued``) and submits the task that
embeds it; ``GET`` shows where it stands (``queued``, ``embedded`` or ``failed``, with the last
error); ``DELETE`` removes it and its chunks. ``POST /v1/search`` finds the chunks nearest to a
query among the caller's tenant's documents, with metadata filters. Another tenant's document is
a 404 like a missing one. On SQLite every route answers 501: vectors need PostgreSQL.

A model call that fails while adding (choosing the model) or searching (embedding the query)
answers 503 when trying again may work (a provider down or cooling down, or none configured)
and 502 when the provider refused it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, ClassVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from spine.graph.hybrid import HybridQuery, HybridResult, HybridRetriever
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.documents.store import Document, DocumentInput, DocumentStatus
from spine.platform.documents.vector_search import SearchQuery, SearchResult
from spine.platform.errors import (
    ProviderNotConfigured,
    RunFailure,
    ServiceUnavailable,
    SpineError,
)
from spine.platform.metering import CallContext

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["documents"], responses=documented(501))


class UpstreamError(SpineError):
    """A model provider refused a call the request needed."""

    status_code: ClassVar[int] = 502
    error_type: ClassVar[str] = "upstream_error"


@asynccontextmanager
async def _model_calls_answered() -> AsyncIterator[None]:
    # Task failures have no HTTP status of their own: say whether to try again.
    try:
        yield
    except RunFailure as exc:
        if exc.retryable or isinstance(exc, ProviderNotConfigured):
            raise ServiceUnavailable(exc.message, field=exc.field, **exc.details) from exc
        raise UpstreamError(exc.message, field=exc.field, **exc.details) from exc


class DocumentList(BaseModel):
    """The caller's documents, newest first."""

    data: list[Document]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )


@router.post("/documents", status_code=202, response_model=Document, responses=documented(502))
async def add_document(
    given: DocumentInput, request: Request, response: Response, caller: Caller
) -> Document:
    """Store a document and queue its embedding; it is searchable once ``embedded``."""
    platform = platform_of(request)
    await platform.documents.require_vectors()
    await platform.metered_models()  # the catalog is complete once the router is warm
    async with _model_calls_answered():
        document = await platform.documents.add(given, tenant=caller.tenant, key_id=caller.key_id)
    await platform.indexer.schedule(document)
    response.headers["Location"] = f"/v1/documents/{document.id}"
    return await platform.documents.get(document.id, tenant=caller.tenant)


@router.get("/documents", response_model=DocumentList)
async def list_documents(
    request: Request,
    caller: Caller,
    status: DocumentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> DocumentList:
    """List the caller's documents, newest first, a page at a time."""
    found, following = await platform_of(request).documents.list_page(
        tenant=caller.tenant, status=status, limit=limit, cursor=cursor
    )
    return DocumentList(data=found, next_cursor=following)


@router.get("/documents/{document_id}", response_model=Document)
async def get_document(document_id: str, request: Request, caller: Caller) -> Document:
    """Show one of the caller's documents."""
    return await platform_of(request).documents.get(document_id, tenant=caller.tenant)


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(document_id: str, request: Request, caller: Caller) -> Response:
    """Remove one of the caller's documents and its chunks."""
    await platform_of(request).documents.delete(document_id, tenant=caller.tenant)
    return Response(status_code=204)


@router.post("/search", response_model=SearchResult, responses=documented(502))
async def search(query: SearchQuery, request: Request, caller: Caller) -> SearchResult:
    """Return the caller's chunks nearest in meaning to the query, best first."""
    platform = platform_of(request)
    await platform.documents.require_vectors()
    await platform.metered_models()  # the query is embedded through the warm router
    context = CallContext(tenant=caller.tenant, key_id=caller.key_id, use_cache=False)
    async with _model_calls_answered():
        return await platform.documents.search(query, context)


@router.post("/search/hybrid", response_model=HybridResult, responses=documented(502))
async def hybrid_search(query: HybridQuery, request: Request, caller: Caller) -> HybridResult:
    """Passages nearest to the query, the graph entities they mention, and the facts around
    them, each with its source (needs both the vector store and a graph)."""
    platform = platform_of(request)
    await platform.documents.require_vectors()
    retriever = HybridRetriever(platform.documents, platform.knowledge.graph())
    await platform.metered_models()
    context = CallContext(tenant=caller.tenant, key_id=caller.key_id, use_cache=False)
    async with _model_calls_answered():
        return await retriever.search(query, context)
