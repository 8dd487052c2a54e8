"""Neo4j's side of the store: the driver's values become the same plain values as FalkorDB's.

Neo4j itself cannot run here (no Docker); ``--backend=containers`` runs the integration tests
against it. These build the driver's own objects, as it hydrates them from Bolt.
"""

from __future__ import annotations

from datetime import UTC, datetime

from neo4j import graph as neo4j_graph
from neo4j.time import DateTime, Duration

from spine.graph.neo4j_store import _plain
from spine.graph.values import Node, Path, Relationship


def test_nodes_relationships_paths_and_times_become_plain_values() -> None:
    graph = neo4j_graph.Graph()
    ann = neo4j_graph.Node(graph, "4:x:1", 1, ["Person"], {"uid": "Person:1"})
    acme = neo4j_graph.Node(graph, "4:x:2", 2, ["Company"], {"uid": "Company:a"})
    works_at = graph.relationship_type("WORKS_AT")(graph, "5:x:3", 3, {"since": 2020})
    works_at._start_node, works_at._end_node = ann, acme
    at = DateTime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    value = _plain(
        {
            "path": neo4j_graph.Path(ann, works_at),
            "rows": [ann, works_at],
            "at": at,
            "took": Duration(days=1, hours=2),
        }
    )

    plain_ann = Node(
        element_id="4:x:1", labels=frozenset({"Person"}), properties={"uid": "Person:1"}
    )
    plain_acme = Node(
        element_id="4:x:2", labels=frozenset({"Company"}), properties={"uid": "Company:a"}
    )
    plain_rel = Relationship(
        element_id="5:x:3",
        type="WORKS_AT",
        start="4:x:1",
        end="4:x:2",
        properties={"since": 2020},
    )
    assert value == {
        "path": Path(nodes=[plain_ann, plain_acme], relationships=[plain_rel]),
        "rows": [plain_ann, plain_rel],
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "took": "P1DT2H",
    }
