"""``hybrid_search``: passages from the tenant's documents joined to the knowledge graph.

See :mod:`spine.graph.hybrid`. The query is embedded as the calling task's model call.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spine.graph.hybrid import HybridQuery, HybridRetriever
from spine.platform.metering import CallContext
from spine.tools.tool import ModelArguments, Tool, ToolContext

__all__ = ["HybridSearchArguments", "hybrid_search_tool"]

MAX_PASSAGE_CHARS = 1_500
MAX_FACTS = 40


class HybridSearchArguments(BaseModel):
    """What the model passes to ``hybrid_search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4_000, description="The question.")
    k: int = Field(5, ge=1, le=20, description="How many passages to return.")
    filter: dict[str, Any] = Field(
        default_factory=dict, description='Metadata the documents must have, e.g. {"team": "ops"}.'
    )


def hybrid_search_tool(retriever: HybridRetriever) -> Tool[HybridSearchArguments]:
    """Return the ``hybrid_search`` tool on ``retriever``."""

    async def run(args: HybridSearchArguments, ctx: ToolContext) -> dict[str, Any]:
        context = CallContext(
            tenant=ctx.tenant, task_id=ctx.task_id, task_category=ctx.agent, use_cache=False
        )
        result = await retriever.search(
            HybridQuery(query=args.query, k=args.k, filter=args.filter), context
        )
        names = {node.id: node.properties.get("name") for node in result.graph.nodes}
        return {
            "passages": [
                {
                    "document_id": p.document_id,
                    "source": p.source,
                    "score": p.score,
                    "text": p.text[:MAX_PASSAGE_CHARS],
                    "mentions": p.mentions,
                }
                for p in result.passages
            ],
            "entities": [
                {"id": e.node.id, "name": names.get(e.node.id), "score": e.score, "via": e.via}
                for e in result.entities
            ],
            "facts": [
                {
                    "from": f.edge.source,
                    "relation": f.edge.type,
                    "to": f.edge.target,
                    "provenance": f.provenance,
                }
                for f in result.facts[:MAX_FACTS]
            ],
        }

    return Tool(
        name="hybrid_search",
        description=(
            "Search the documents for passages relevant to a question and return them with the "
            "knowledge-graph entities they mention and the facts around those entities, each "
            "with its source."
        ),
        arguments=ModelArguments(HybridSearchArguments),
        handler=run,
        timeout=30.0,
        effect="read",
    )
