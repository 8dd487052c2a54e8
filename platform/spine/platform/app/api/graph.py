"""``/v1/graph``: read-only exploration of the caller's knowledge graph.

Node ids are ``<Label>:<key>`` (``Person:42``). Labels, relationship types and property names
must be ones the mappings define (400 naming the field otherwise). Results are
``{"nodes": [...], "edges": [...]}`` a graph viewer can draw. ``POST /v1/graph/query`` runs
read-only Cypher for admin keys (see :mod:`spine.graph.cypher_guard`); each one, and each
refusal by role, is recorded in the audit log.

A node id may hold any character: ``/`` and newlines included, percent-encoded
(``/v1/graph/nodes/Thing%3Ax%2Fneighbors`` is the node ``Thing:x/neighbors``). Only a
literal ``/neighbors`` at the end of the path asks for the neighbors route.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Match
from starlette.types import Scope

from spine.graph.explore import (
    Direction,
    GraphExplorer,
    GraphNode,
    GraphView,
    PathView,
    QueryResult,
)
from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.inputs import StoredJson, StoredMoment, StoredText

__all__ = ["router"]


class _NodeIdConvertor(Convertor[str]):
    """A path parameter that is the rest of the path, newlines included (``path`` stops at one)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Starlette looks convertors up by name when a route's path is compiled.
register_url_convertor("node_id", _NodeIdConvertor())


class _NeighborsRoute(APIRoute):
    """The neighbors route, taken only when the request spells ``/neighbors`` unencoded.

    The router matches the decoded path, where ``Thing%3Ax%2Fneighbors`` (the node
    ``Thing:x/neighbors``) looks like the neighbors of ``Thing:x``; the raw path tells them apart.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        raw = scope.get("raw_path")
        if match is not Match.NONE and isinstance(raw, bytes) and not raw.endswith(b"/neighbors"):
            return Match.NONE, {}
        return match, child


router = APIRouter(prefix="/v1/graph", tags=["graph"])

Types = Annotated[
    list[str],
    Query(description="Relationship types to follow (repeat, or separate with commas)."),
]


class GraphQuery(BaseModel):
    """The body of ``POST /v1/graph/query``."""

    model_config = ConfigDict(extra="forbid")

    query: StoredText = Field(min_length=1, max_length=20_000)
    params: Annotated[dict[str, Any], StoredJson] = Field(default_factory=dict)


def _explorer(request: Request) -> GraphExplorer:
    return platform_of(request).knowledge.graph()


def _split(types: list[str]) -> list[str]:
    return [part.strip() for item in types for part in item.split(",") if part.strip()]


async def neighbors(
    node_id: str,
    request: Request,
    caller: Caller,
    depth: Annotated[int, Query(ge=1, le=3)] = 1,
    types: Types = [],  # noqa: B006 - FastAPI copies defaults
    direction: Direction = "both",
    at: StoredMoment | None = None,
    history: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> GraphView:
    """Return a node, its neighbors up to ``depth`` hops, and the edges between them."""
    when: datetime | None = at
    return await _explorer(request).neighbors(
        node_id,
        tenant=caller.tenant,
        depth=depth,
        types=_split(types),
        direction=direction,
        at=when,
        history=history,
        limit=limit,
    )


# Before the node route, which would take ``.../neighbors`` as part of the id.
router.add_api_route(
    "/nodes/{node_id:node_id}/neighbors",
    neighbors,
    methods=["GET"],
    response_model=GraphView,
    route_class_override=_NeighborsRoute,
)


@router.get("/nodes/{node_id:node_id}", response_model=GraphNode)
async def node(node_id: str, request: Request, caller: Caller) -> GraphNode:
    """Return one node."""
    return await _explorer(request).node(node_id, tenant=caller.tenant)


@router.get("/path", response_model=PathView)
async def path(
    request: Request,
    caller: Caller,
    start: Annotated[str, Query(alias="from", min_length=1)],
    end: Annotated[str, Query(alias="to", min_length=1)],
    max_depth: Annotated[int, Query(ge=1, le=6)] = 4,
    types: Types = [],  # noqa: B006
    history: bool = False,
) -> PathView:
    """Return a shortest path between two nodes (``length`` null when there is none)."""
    return await _explorer(request).path(
        start,
        end,
        tenant=caller.tenant,
        max_depth=max_depth,
        types=_split(types),
        history=history,
    )


@router.get("/search", response_model=GraphView)
async def search(
    request: Request,
    caller: Caller,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    label: Annotated[str | None, Query(max_length=64)] = None,
    property: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> GraphView:
    """Return nodes (of ``label``) whose property (any mapped one, or the uid; provenance such as
    ``event_id`` or ``source`` only when named as ``property``) contains ``q``."""
    return await _explorer(request).search(
        q, tenant=caller.tenant, label=label, property=property, limit=limit
    )


@router.post("/query", response_model=QueryResult, responses=documented(403))
async def query(body: GraphQuery, request: Request, caller: Caller) -> QueryResult:
    """Run read-only Cypher (admin keys); ``$tenant`` is the caller's tenant. Audited."""
    asked = {"query": body.query[:2000], "params": sorted(body.params)}
    async with audited(request, caller, "graph.query", target="cypher", details=asked):
        if not caller.is_admin:
            raise HTTPException(403, "the graph query API needs an admin key")
        return await _explorer(request).query(body.query, tenant=caller.tenant, params=body.params)
