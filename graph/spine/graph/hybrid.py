"""Hybrid retrieval: passages from the vector store, joined to the graph facts around them.

1. The query's nearest passages come from the tenant's documents (vector search).
2. The graph entities they mention are found two ways: the ids a document names in its
   metadata (``"entities": ["Company:acme", ...]``, set by whoever adds it), and the graph
   nodes whose properties contain a name the query spells out (a capitalised word or a quoted
   phrase, e.g. ``"Acme"`` in ``who supplies Acme?``). A name in metadata that is not a node
   id of a known label is skipped, so one bad document cannot fail every query.
3. Each entity is scored by the passages that mention it (their similarities, summed) plus a
   fixed amount when the query names it; the best few are expanded to their neighborhood.
4. The answer is one ranked result: the passages (best first, each with its document and
   source), the entities (best first, each with why it was chosen), and the facts — the edges
   of the neighborhoods — each with its provenance (the event that stated it, and when).

Every read binds the caller's tenant: the vector search, the node lookups and the expansion.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from spine.graph.explore import GraphEdge, GraphExplorer, GraphNode, GraphView
from spine.platform.documents.vector_search import SearchHit, SearchQuery, SearchResult
from spine.platform.errors import NotFound
from spine.platform.metering import CallContext

__all__ = ["HybridQuery", "HybridResult", "HybridRetriever"]

logger = logging.getLogger(__name__)

_NAMED_BOOST = 0.5  # what naming an entity in the query is worth, beside a passage's similarity
_NAMES = re.compile(r'"([^"]{2,80})"|\b([A-Z][\w&.-]*(?:\s+[A-Z][\w&.-]*)*)')
_PROVENANCE = ("event_id", "source", "valid_from", "valid_to", "superseded_by")


class Searcher(Protocol):
    """What hybrid retrieval needs of :class:`~spine.platform.documents.store.DocumentStore`."""

    async def search(self, query: SearchQuery, context: CallContext) -> SearchResult:
        """Return the tenant's chunks nearest to the query."""
        ...


class HybridQuery(BaseModel):
    """A hybrid search: the question, how many passages, which documents, how far to expand."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4_000)
    k: int = Field(5, ge=1, le=50, description="Passages to return.")
    filter: dict[str, Any] = Field(default_factory=dict, description="Document metadata filter.")
    entities: int = Field(5, ge=0, le=20, description="Entities to expand.")
    depth: int = Field(1, ge=1, le=2, description="Hops of the expansion.")
    neighbors: int = Field(25, ge=1, le=200, description="Neighbors per entity, at most.")


class Passage(BaseModel):
    """A passage that matched, with the entities it mentions."""

    document_id: str
    chunk: int
    text: str
    heading: str | None
    score: float
    source: str | None
    metadata: dict[str, Any]
    mentions: list[str]


class RankedEntity(BaseModel):
    """An entity and why it is in the answer."""

    node: GraphNode
    score: float
    via: list[str] = Field(description='"document:<id>" for each passage, "named in the query".')


class Fact(BaseModel):
    """An edge of an entity's neighborhood, with where it came from."""

    edge: GraphEdge
    provenance: dict[str, Any]


class HybridResult(BaseModel):
    """Passages, entities and facts, each best first, and the subgraph they make."""

    passages: list[Passage]
    entities: list[RankedEntity]
    facts: list[Fact]
    graph: GraphView


class HybridRetriever:
    """Joins the vector store and the knowledge graph for one question."""

    def __init__(self, documents: Searcher, explorer: GraphExplorer) -> None:
        self._documents = documents
        self._explorer = explorer

    async def search(self, query: HybridQuery, context: CallContext) -> HybridResult:
        """Answer ``query`` for ``context``'s tenant."""
        tenant = context.tenant
        found = await self._documents.search(
            SearchQuery(query=query.query, k=query.k, filter=query.filter), context
        )
        scores: dict[str, float] = defaultdict(float)
        reasons: dict[str, list[str]] = defaultdict(list)
        passages = []
        for hit in found.hits:
            mentioned = self._mentions(hit)
            passages.append(_passage(hit, mentioned))
            for uid in mentioned:
                scores[uid] += hit.score
                reasons[uid].append(f"document:{hit.document_id}")
        for name in _named(query.query):
            view = await self._explorer.search(name, tenant=tenant, limit=5)
            for node in view.nodes:
                scores[node.id] += _NAMED_BOOST
                reasons[node.id].append("named in the query")
        ranked = sorted(scores, key=lambda uid: (-scores[uid], uid))[: query.entities]
        entities: list[RankedEntity] = []
        nodes: dict[str, GraphNode] = {}
        edges: dict[str, GraphEdge] = {}
        for uid in ranked:
            try:
                view = await self._explorer.neighbors(
                    uid, tenant=tenant, depth=query.depth, limit=query.neighbors
                )
            except NotFound:  # a document named a node this tenant's graph does not have
                continue
            nodes |= {node.id: node for node in view.nodes}
            edges |= {edge.id: edge for edge in view.edges}
            entities.append(
                RankedEntity(
                    node=nodes[uid], score=round(scores[uid], 4), via=sorted(set(reasons[uid]))
                )
            )
        chosen = {entity.node.id for entity in entities}
        # Facts about the chosen entities first, then the rest of their neighborhoods.
        facts = sorted(
            edges.values(), key=lambda e: (e.source not in chosen and e.target not in chosen, e.id)
        )
        return HybridResult(
            passages=passages,
            entities=entities,
            facts=[Fact(edge=edge, provenance=_provenance(edge)) for edge in facts],
            graph=GraphView(nodes=list(nodes.values()), edges=facts),
        )

    def _mentions(self, hit: SearchHit) -> list[str]:
        """Return the node ids a passage's document names (at most 20), skipping the bad ones."""
        named = hit.metadata.get("entities")
        if not isinstance(named, list):
            return []
        found: list[str] = []
        for uid in named:
            if len(found) == 20:
                break
            if isinstance(uid, str) and self._explorer.is_node_id(uid):
                found.append(uid)
            else:
                logger.debug(
                    "document %s names %.80r as an entity: not a node id, skipped",
                    hit.document_id,
                    uid,
                )
        return found


def _named(query: str) -> list[str]:
    """The names a query spells out: quoted phrases and capitalised words (not the first word
    of a sentence unless quoted), at most five."""
    names: list[str] = []
    for match in _NAMES.finditer(query):
        quoted, capitalised = match.groups()
        name = (quoted or capitalised or "").strip()
        starts_sentence = capitalised is not None and (
            match.start() == 0 or query[: match.start()].rstrip().endswith((".", "?", "!"))
        )
        if starts_sentence and " " not in name:
            continue
        if name and name not in names:
            names.append(name)
    return names[:5]


def _passage(hit: SearchHit, mentions: list[str]) -> Passage:
    return Passage(
        document_id=hit.document_id,
        chunk=hit.chunk,
        text=hit.text,
        heading=hit.heading,
        score=round(hit.score, 4),
        source=hit.source,
        metadata=hit.metadata,
        mentions=mentions,
    )


def _provenance(edge: GraphEdge) -> dict[str, Any]:
    return {key: edge.properties[key] for key in _PROVENANCE if key in edge.properties}
