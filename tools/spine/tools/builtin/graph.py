"""``graph_query`` and ``graph_neighbors``: the knowledge graph, read-only, for agents.

Both read through :class:`~spine.graph.explore.GraphExplorer`, so they bind the task's tenant
like the HTTP API does: ``graph_query`` takes read-only Cypher whose patterns start from
``{tenant: $tenant}`` nodes (see :mod:`spine.graph.cypher_guard`), ``graph_neighbors`` a node id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from spine.graph.explore import GraphExplorer
from spine.platform.errors import SpineError
from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = [
    "GraphNeighborsArguments",
    "GraphQueryArguments",
    "graph_neighbors_tool",
    "graph_query_tool",
    "graph_tools",
]


class GraphQueryArguments(BaseModel):
    """What the model passes to ``graph_query``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=4000,
        description=(
            "A read-only openCypher query. Start every pattern from a node written with "
            "{tenant: $tenant}, e.g. MATCH (p:Person {tenant: $tenant, uid: 'Person:42'})"
            "-[:WORKS_AT]->(c) RETURN c.name. No CREATE/MERGE/SET/DELETE/CALL."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Query parameters ($name); $tenant is set for you."
    )


class GraphNeighborsArguments(BaseModel):
    """What the model passes to ``graph_neighbors``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=3, max_length=600, description="The node id, <Label>:<key>, e.g. Person:42."
    )
    depth: int = Field(1, ge=1, le=3, description="Hops to follow (1 to 3).")
    types: list[str] = Field(
        default_factory=list, max_length=20, description="Relationship types to follow (all)."
    )
    direction: Literal["out", "in", "both"] = "both"
    at: AwareDatetime | None = Field(
        None, description="Follow the facts valid at this time (default: the current ones)."
    )
    limit: int = Field(50, ge=1, le=500, description="At most this many neighbors.")


def graph_query_tool(explorer: GraphExplorer) -> Tool[GraphQueryArguments]:
    """Return the ``graph_query`` tool."""

    async def run(args: GraphQueryArguments, ctx: ToolContext) -> dict[str, Any]:
        try:
            result = await explorer.query(args.query, tenant=ctx.tenant, params=args.params)
        except SpineError as exc:
            raise ToolFailure(exc.message, retryable=exc.retryable) from exc
        return result.model_dump(mode="json")

    return Tool(
        name="graph_query",
        description=(
            "Run a read-only Cypher query on the knowledge graph and get rows plus the nodes "
            "and edges they hold."
        ),
        arguments=ModelArguments(GraphQueryArguments),
        handler=run,
        timeout=30.0,
        effect="read",
    )


def graph_neighbors_tool(explorer: GraphExplorer) -> Tool[GraphNeighborsArguments]:
    """Return the ``graph_neighbors`` tool."""

    async def run(args: GraphNeighborsArguments, ctx: ToolContext) -> dict[str, Any]:
        at: datetime | None = args.at
        try:
            view = await explorer.neighbors(
                args.id,
                tenant=ctx.tenant,
                depth=args.depth,
                types=args.types,
                direction=args.direction,
                at=at,
                limit=args.limit,
            )
        except SpineError as exc:
            raise ToolFailure(exc.message, retryable=exc.retryable) from exc
        return view.model_dump(mode="json")

    return Tool(
        name="graph_neighbors",
        description=(
            "List a knowledge-graph node's neighbors (up to 3 hops) with the relationships "
            "between them."
        ),
        arguments=ModelArguments(GraphNeighborsArguments),
        handler=run,
        timeout=30.0,
        effect="read",
    )


def graph_tools(explorer: GraphExplorer) -> list[Tool[Any]]:
    """Return both graph tools."""
    return [graph_query_tool(explorer), graph_neighbors_tool(explorer)]
