"""The knowledge graph: driver, schema, ingestion mappings and exploration queries."""

from spine.graph.cypher_guard import UnsafeQuery, check_query
from spine.graph.driver import open_driver, ping
from spine.graph.explore import (
    Direction,
    GraphEdge,
    GraphExplorer,
    GraphNode,
    GraphView,
    PathView,
    QueryResult,
)
from spine.graph.identifiers import Allowlist, UnknownIdentifier
from spine.graph.ingest import GraphIngestor, IngestStats
from spine.graph.mapping import EventMapping, MappingError, MappingSet
from spine.graph.store import GraphError, GraphStore
from spine.graph.writer import GraphWriter

__all__ = [
    "Allowlist",
    "Direction",
    "EventMapping",
    "GraphEdge",
    "GraphError",
    "GraphExplorer",
    "GraphIngestor",
    "GraphNode",
    "GraphStore",
    "GraphView",
    "GraphWriter",
    "IngestStats",
    "MappingError",
    "MappingSet",
    "PathView",
    "QueryResult",
    "UnknownIdentifier",
    "UnsafeQuery",
    "check_query",
    "open_driver",
    "ping",
]
