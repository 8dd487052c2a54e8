"""Writing mapped events to the graph: batched ``UNWIND`` MERGEs, idempotent and in any order.

A batch of events becomes a handful of statements, one per (label), per (relationship type,
start label, end label) and per superseding type, each ``UNWIND``-ing its rows. Every write is
idempotent and independent of the order events come in:

- A node is MERGEd on ``(tenant, uid)``. Its properties and provenance (``event_id``,
  ``source``, ``event_time``) are those of the newest event that wrote it (``version`` =
  event time, then dedupe id); an older event replayed or retried later changes nothing.
  ``valid_from`` is the earliest event time seen.
- A plain relationship is MERGEd on its two nodes, its type and tenant, the same way.
- A superseding relationship is MERGEd on its two nodes, type, tenant and ``valid_from`` (the
  event's time). After each batch, the chain of such relationships from each node touched is
  recomputed: each one's ``valid_to`` (and ``superseded_by``) is the next one's start; the
  newest stays open. Nothing is deleted, so history stays queryable.

Replaying the stream, or a batch retried half-written (FalkorDB commits statement by
statement), gives the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spine.graph.mapping import EventWrites, NodeWrite, RelationshipWrite
from spine.graph.store import GraphStore, Statement

__all__ = ["GraphWriter", "statements_for"]

_NODE = """
UNWIND $rows AS row
MERGE (n:`{label}` {{tenant: row.tenant, uid: row.uid}})
SET n.valid_from = CASE WHEN n.valid_from IS NULL OR row.first < n.valid_from
                   THEN row.first ELSE n.valid_from END
WITH n, row WHERE n.version IS NULL OR n.version <= row.version
SET n += row.props, n.version = row.version, n.event_id = row.event_id,
    n.source = row.source, n.event_time = row.time
"""

_RELATIONSHIP = """
UNWIND $rows AS row
MATCH (a:`{start}` {{tenant: row.tenant, uid: row.start}})
MATCH (b:`{end}` {{tenant: row.tenant, uid: row.end}})
MERGE (a)-[r:`{type}` {{tenant: row.tenant}}]->(b)
SET r.valid_from = CASE WHEN r.valid_from IS NULL OR row.first < r.valid_from
                   THEN row.first ELSE r.valid_from END
WITH r, row WHERE r.version IS NULL OR r.version <= row.version
SET r += row.props, r.version = row.version, r.event_id = row.event_id,
    r.source = row.source, r.event_time = row.time
"""

_FACT = """
UNWIND $rows AS row
MATCH (a:`{start}` {{tenant: row.tenant, uid: row.start}})
MATCH (b:`{end}` {{tenant: row.tenant, uid: row.end}})
MERGE (a)-[r:`{type}` {{tenant: row.tenant, valid_from: row.first}}]->(b)
WITH r, row WHERE r.version IS NULL OR r.version <= row.version
SET r += row.props, r.version = row.version, r.event_id = row.event_id,
    r.source = row.source, r.event_time = row.time
"""

_CHAIN = """
UNWIND $rows AS row
MATCH (a:`{start}` {{tenant: row.tenant, uid: row.start}})-[r:`{type}` {{tenant: row.tenant}}]->()
WITH a, r ORDER BY r.valid_from, r.version
WITH a, collect(r) AS chain
UNWIND range(0, size(chain) - 1) AS i
WITH chain[i] AS r, CASE WHEN i + 1 < size(chain) THEN chain[i + 1] ELSE null END AS nxt
SET r.valid_to = CASE WHEN nxt IS NULL THEN null ELSE nxt.valid_from END,
    r.superseded_by = CASE WHEN nxt IS NULL THEN null ELSE nxt.event_id END
"""


class GraphWriter:
    """Writes the graph of a batch of mapped events."""

    def __init__(self, store: GraphStore) -> None:
        self._store = store

    async def write(self, batch: Sequence[EventWrites]) -> None:
        """Write every node, then every relationship, then the superseding chains."""
        await self._store.write(statements_for(batch))


def statements_for(batch: Sequence[EventWrites]) -> list[Statement]:
    """Return the statements that write a batch (labels and types are allowlisted by now)."""
    nodes: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    plain: dict[tuple[str, str, str], dict[tuple[str, ...], dict[str, Any]]] = {}
    facts: dict[tuple[str, str, str], dict[tuple[str, ...], dict[str, Any]]] = {}
    anchors: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
    for writes in batch:
        for node in writes.nodes:
            rows = nodes.setdefault(node.label, {})
            _fold(rows, (node.tenant, node.uid), _node_row(node))
        for rel in writes.relationships:
            group = (rel.type, rel.start_label, rel.end_label)
            if rel.supersedes:
                key: tuple[str, ...] = (rel.tenant, rel.start, rel.end, str(rel.time))
                _fold(facts.setdefault(group, {}), key, _relationship_row(rel))
                anchors.setdefault((rel.type, rel.start_label), {})[(rel.tenant, rel.start)] = {
                    "tenant": rel.tenant,
                    "start": rel.start,
                }
            else:
                key = (rel.tenant, rel.start, rel.end)
                _fold(plain.setdefault(group, {}), key, _relationship_row(rel))
    statements: list[Statement] = []
    for label, node_rows in sorted(nodes.items()):
        statements.append((_NODE.format(label=label), {"rows": list(node_rows.values())}))
    for (rel_type, start, end), rel_rows in sorted(plain.items()):
        text = _RELATIONSHIP.format(type=rel_type, start=start, end=end)
        statements.append((text, {"rows": list(rel_rows.values())}))
    for (rel_type, start, end), fact_rows in sorted(facts.items()):
        text = _FACT.format(type=rel_type, start=start, end=end)
        statements.append((text, {"rows": list(fact_rows.values())}))
    for (rel_type, start), anchor_rows in sorted(anchors.items()):
        text = _CHAIN.format(type=rel_type, start=start)
        statements.append((text, {"rows": list(anchor_rows.values())}))
    return statements


def _node_row(node: NodeWrite) -> dict[str, Any]:
    return {
        "tenant": node.tenant,
        "uid": node.uid,
        "props": node.properties,
        "first": node.time,
        "time": node.time,
        "version": node.version,
        "event_id": node.event_id,
        "source": node.source,
    }


def _relationship_row(rel: RelationshipWrite) -> dict[str, Any]:
    return {
        "tenant": rel.tenant,
        "start": rel.start,
        "end": rel.end,
        "props": rel.properties,
        "first": rel.time,
        "time": rel.time,
        "version": rel.version,
        "event_id": rel.event_id,
        "source": rel.source,
    }


def _fold(rows: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> None:
    """Merge rows of one node (or relationship) within a batch: one row per MERGE.

    FalkorDB may evaluate an ``UNWIND``'s rows eagerly, so two rows for one node in a
    statement could see each other's writes in any order; folding them here keeps the rule
    (the newest event's properties win, per property) exact.
    """
    seen = rows.get(key)
    if seen is None:
        rows[key] = row
        return
    older, newer = (seen, row) if seen["version"] <= row["version"] else (row, seen)
    rows[key] = {
        **newer,
        "props": {**older["props"], **newer["props"]},
        "first": min(seen["first"], row["first"]),
    }
