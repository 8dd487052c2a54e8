"""The knowledge graph: the store (Neo4j or FalkorDB), ingestion mappings and exploration."""

from spine.graph.backends import describe_graph, open_store
from spine.graph.cypher_guard import UnsafeQuery, check_query
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
from spine.graph.store import (
    Backend,
    GraphError,
    GraphStore,
    QueryLimitExceeded,
    ReadResult,
    Record,
    Statement,
)
from spine.graph.values import Node, Path, Relationship
from spine.graph.writer import GraphWriter

__all__ = [
    "Allowlist",
    "Backend",
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
    "Node",
    "Path",
    "PathView",
    "QueryLimitExceeded",
    "QueryResult",
    "ReadResult",
    "Record",
    "Relationship",
    "Statement",
    "UnknownIdentifier",
    "UnsafeQuery",
    "check_query",
    "describe_graph",
    "open_store",
]
