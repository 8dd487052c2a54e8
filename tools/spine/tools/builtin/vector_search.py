"""``vector_search``: the caller's tenant's documents nearest in meaning to a query.

The query is embedded as the calling task's model call (its tenant's budgets and usage rows)
and searched in the tenant's documents only, with optional metadata filters.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from spine.platform.documents.vector_search import SearchQuery, SearchResult
from spine.platform.metering import CallContext
from spine.tools.tool import ModelArguments, Tool, ToolContext

__all__ = ["VectorSearchArguments", "VectorSearcher", "vector_search_tool"]

MAX_HIT_CHARS = 2_000


class VectorSearcher(Protocol):
    """What the tool needs of :class:`~spine.platform.documents.store.DocumentStore`."""

    async def search(self, query: SearchQuery, context: CallContext) -> SearchResult:
        """Return the tenant's chunks nearest to the query."""
        ...


class VectorSearchArguments(BaseModel):
    """What the model passes to ``vector_search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4_000, description="What to look for.")
    k: int = Field(5, ge=1, le=20, description="How many passages to return.")
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description='Metadata the documents must have, e.g. {"team": "ops"}.',
    )


def vector_search_tool(searcher: VectorSearcher) -> Tool[VectorSearchArguments]:
    """Return the ``vector_search`` tool, searching through ``searcher``."""

    async def run(args: VectorSearchArguments, ctx: ToolContext) -> dict[str, Any]:
        context = CallContext(
            tenant=ctx.tenant, task_id=ctx.task_id, task_category=ctx.agent, use_cache=False
        )
        result = await searcher.search(
            SearchQuery(query=args.query, k=args.k, filter=args.filter), context
        )
        return {
            "hits": [
                {
                    "document_id": hit.document_id,
                    "chunk": hit.chunk,
                    "score": round(hit.score, 4),
                    "source": hit.source,
                    "heading": hit.heading,
                    "text": hit.text[:MAX_HIT_CHARS],
                    "metadata": hit.metadata,
                }
                for hit in result.hits
            ]
        }

    return Tool(
        name="vector_search",
        description=(
            "Search the stored documents for the passages nearest in meaning to a query; "
            "optionally only documents whose metadata contains the given fields."
        ),
        arguments=ModelArguments(VectorSearchArguments),
        handler=run,
        timeout=30.0,
        effect="read",
    )
