"""Values read from the graph, the same whichever server answered: nodes, relationships, paths.

Each backend of :class:`~spine.graph.store.GraphStore` turns its driver's objects into these
(and its temporal values into :mod:`datetime` ones), so nothing above the store knows which
client library read them. An ``element_id`` is the server's own id of a node or relationship,
opaque and unique within one read; a node's stable id is its ``uid`` property.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Node", "Path", "Relationship"]


# Plain slotted dataclasses: a neighborhood read makes hundreds of them.
@dataclass(slots=True, kw_only=True)
class Node:
    """A node: the server's id of it, its labels and its properties."""

    element_id: str
    labels: frozenset[str]
    properties: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class Relationship:
    """A relationship: its id, type, the element ids of its two nodes, and its properties."""

    element_id: str
    type: str
    start: str
    end: str
    properties: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class Path:
    """A path: its nodes in order and the relationships between them."""

    nodes: list[Node]
    relationships: list[Relationship]
