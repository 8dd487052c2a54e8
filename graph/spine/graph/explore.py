"""Exploring the graph: a node, its neighbors, a shortest path, a search, a read-only query.

Every query binds the caller's tenant (``$tenant``) on its start nodes and relationships;
labels, relationship types and property names come from the allowlist; values are
parameters. Results are nodes and edges as JSON a graph viewer can draw: a node's ``id`` is its
``uid`` (``<Label>:<key>``), an edge names its ``source`` and ``target`` nodes by that id.

Time: relationships that supersede others carry ``valid_from``/``valid_to`` (stored as epoch
ms, shown as ISO 8601 UTC times, as is ``event_time``; so are a query's columns named for
them, such as ``r.valid_from``). By default only current facts are followed (``valid_to``
unset); ``at`` follows the facts valid at that time; ``history`` follows all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from spine.graph.cypher_guard import check_query
from spine.graph.identifiers import PROVENANCE_PROPERTIES, Allowlist
from spine.graph.mapping import MappingSet
from spine.graph.store import GraphStore, QueryLimitExceeded
from spine.graph.values import Node, Path, Relationship
from spine.platform.errors import BadRequest, NotFound

__all__ = [
    "Direction",
    "GraphEdge",
    "GraphExplorer",
    "GraphNode",
    "GraphView",
    "PathView",
    "QueryResult",
    "TenantLeak",
]

Direction = Literal["out", "in", "both"]
_HIDDEN = frozenset({"tenant", "version"})
# What a search leaves out unless asked for by name: provenance, but not the uid users name.
_NOT_SEARCHED = PROVENANCE_PROPERTIES - {"uid"}
_MAX_PATH_DEPTH = 6
# A query parameter's name: what Cypher writes as ``$name`` without backticks.
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class TenantLeak(BadRequest):
    """A query reached data of another tenant (the guard should make this impossible)."""

    status_code = 403
    error_type = "forbidden"


# Plain dataclasses, not models: a neighborhood makes dozens of them per request, and
# pydantic serializes them as they are inside the GraphView model that crosses the boundary.
@dataclass(slots=True, kw_only=True)
class GraphNode:
    """A node: its id (``<Label>:<key>``), labels and properties (provenance included)."""

    id: str
    labels: list[str]
    properties: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class GraphEdge:
    """A relationship between two nodes, named by their ids."""

    id: str
    type: str
    source: str
    target: str
    properties: dict[str, Any]


class GraphView(BaseModel):
    """Nodes and edges, each once."""

    nodes: list[GraphNode] = Field(default_factory=list)
    edges: list[GraphEdge] = Field(default_factory=list)
    truncated: bool = Field(
        False, description="More neighbours than the limit: only the first ones are here."
    )


class PathView(GraphView):
    """A shortest path: its nodes in order, its edges, and its length (``None``: no path)."""

    length: int | None = None


class QueryResult(BaseModel):
    """A query's columns and rows (nodes and edges rendered as JSON), and the graph they hold."""

    columns: list[str]
    rows: list[list[Any]]
    graph: GraphView
    truncated: bool


class GraphExplorer:
    """Tenant-bound reads of the graph."""

    def __init__(
        self,
        store: GraphStore,
        mappings: MappingSet,
        *,
        query_timeout: float = 10.0,
        max_rows: int = 1000,
    ) -> None:
        self.store = store
        self.allowlist: Allowlist = mappings.allowlist
        self._mappings = mappings
        self._timeout = query_timeout
        self._max_rows = max_rows

    # -- nodes -------------------------------------------------------------------------------

    async def node(self, uid: str, *, tenant: str, field: str = "id") -> GraphNode:
        """Return one node by its id (``field`` names the id in errors)."""
        label = self._label_of(uid, field=field)
        result = await self.store.read(
            f"MATCH (n:`{label}` {{tenant: $tenant, uid: $uid}}) RETURN n",
            {"tenant": tenant, "uid": uid},
            timeout=self._timeout,
        )
        if not result.records:
            raise NotFound(f"no node {uid!r}", field=field)
        return _Collector(tenant).node(result.records[0]["n"])

    def is_node_id(self, uid: str) -> bool:
        """Return whether ``uid`` is written as a node id (``<Label>:<key>``, a known label)."""
        try:
            self._label_of(uid)
        except BadRequest:  # UnknownIdentifier included
            return False
        return True

    def neighbors_query(
        self,
        uid: str,
        *,
        tenant: str,
        depth: int = 1,
        types: Sequence[str] = (),
        direction: Direction = "both",
        at: datetime | None = None,
        history: bool = False,
        limit: int = 100,
    ) -> tuple[str, dict[str, Any]]:
        """Return the Cypher and parameters of :meth:`neighbors` (the benchmark runs it raw)."""
        label = self._label_of(uid)
        if not 1 <= depth <= 3:
            raise BadRequest("depth must be 1, 2 or 3", field="depth")
        checked = [self.allowlist.type(t, field=f"types[{i}]") for i, t in enumerate(types)]
        rel = ":" + "|".join(f"`{t}`" for t in checked) if checked else ""
        left, right = {"out": ("-", "->"), "in": ("<-", "-"), "both": ("-", "-")}[direction]
        params: dict[str, Any] = {"tenant": tenant, "uid": uid, "limit": limit}
        valid = _validity("r", at=at, history=history, params=params)
        # One round trip: the start node comes back even when it has no neighbors. A path
        # back to the start counts only as a self-loop (length 1), so self-loops are drawn.
        text = (
            f"MATCH (a:`{label}` {{tenant: $tenant, uid: $uid}}) "
            f"OPTIONAL MATCH p = (a){left}[{rel}*1..{depth}]{right}(m) "
            "WHERE (m <> a OR length(p) = 1) "
            f"AND all(r IN relationships(p) WHERE r.tenant = $tenant{valid}) "
            "WITH a, m, head(collect(p)) AS p LIMIT $limit "
            "RETURN a, nodes(p) AS nodes, relationships(p) AS rels"
        )
        return text, params

    async def neighbors(
        self,
        uid: str,
        *,
        tenant: str,
        depth: int = 1,
        types: Sequence[str] = (),
        direction: Direction = "both",
        at: datetime | None = None,
        history: bool = False,
        limit: int = 100,
    ) -> GraphView:
        """Return a node and its neighbors up to ``depth`` hops, with the edges between."""
        text, params = self.neighbors_query(
            uid,
            tenant=tenant,
            depth=depth,
            types=types,
            direction=direction,
            at=at,
            history=history,
            limit=limit + 1,  # one more than shown tells whether there were more
        )
        result = await self.store.read(text, params, timeout=self._timeout)
        if not result.records:
            raise NotFound(f"no node {uid!r}", field="id")
        collector = _Collector(tenant)
        collector.walk(result.records[0]["a"])
        reached = [record for record in result.records if record["nodes"] is not None]
        for record in reached[:limit]:
            collector.walk(record["nodes"])
            collector.walk(record["rels"])
        view = collector.view()
        view.truncated = len(reached) > limit
        return view

    async def path(
        self,
        start: str,
        end: str,
        *,
        tenant: str,
        max_depth: int = 4,
        types: Sequence[str] = (),
        history: bool = False,
    ) -> PathView:
        """Return a shortest path between two nodes (ignoring direction), or none."""
        if not 1 <= max_depth <= _MAX_PATH_DEPTH:
            raise BadRequest(f"max_depth must be 1 to {_MAX_PATH_DEPTH}", field="max_depth")
        self._label_of(start, field="from")
        self._label_of(end, field="to")
        checked = [self.allowlist.type(t, field=f"types[{i}]") for i, t in enumerate(types)]
        first = await self.node(start, tenant=tenant, field="from")
        last = await self.node(end, tenant=tenant, field="to")
        if first.id == last.id:
            return PathView(nodes=[first], length=0)
        rel = ":" + "|".join(f"`{t}`" for t in checked) if checked else ""
        params: dict[str, Any] = {"tenant": tenant, "from": start, "to": end}
        valid = _validity("r", at=None, history=history, params=params)
        match = (
            f"MATCH (a:`{self._label_of(start, field='from')}` {{tenant: $tenant, uid: $from}}), "
            f"(b:`{self._label_of(end, field='to')}` {{tenant: $tenant, uid: $to}}) "
        )
        where = f"WHERE all(r IN relationships(p) WHERE r.tenant = $tenant{valid}) "
        returned = "RETURN nodes(p) AS nodes, relationships(p) AS rels"
        if self.store.backend == "neo4j":
            queries = [
                f"{match}MATCH p = shortestPath((a)-[{rel}*..{max_depth}]-(b)) {where}{returned}"
            ]
        else:
            # FalkorDB's shortestPath cannot filter relationships by tenant while it
            # searches: try each length, shortest first.
            queries = [
                f"{match}MATCH p = (a)-[{rel}*{k}..{k}]-(b) {where}{returned} LIMIT 1"
                for k in range(1, max_depth + 1)
            ]
        for text in queries:
            result = await self.store.read(text, params, timeout=self._timeout)
            if result.records:
                collector = _Collector(tenant)
                collector.walk(result.records[0]["nodes"])
                collector.walk(result.records[0]["rels"])
                view = collector.view()
                return PathView(nodes=view.nodes, edges=view.edges, length=len(view.edges))
        return PathView(length=None)

    async def search(
        self,
        text: str,
        *,
        tenant: str,
        label: str | None = None,
        property: str | None = None,
        limit: int = 20,
    ) -> GraphView:
        """Return nodes whose property (any mapped one, or the uid, by default) contains ``text``.

        Provenance (event ids, sources, times) is searched only when named as ``property``: a
        hex event id holds short names by chance ("ada" in about 1 of 140). A value that is
        not text, a number or a boolean is skipped, not an error (the server may look at other
        tenants' nodes before the tenant filter); on FalkorDB a list is searched item by item.
        """
        if not text.strip():
            raise BadRequest("the search text is empty", field="q")
        pattern = (
            f"(n:`{self.allowlist.label(label)}` {{tenant: $tenant}})"
            if label
            else ("(n {tenant: $tenant})")
        )
        if property is not None:
            names = [self.allowlist.property(property)]
        elif label is not None:
            names = self._mappings.node_properties(label)
        else:
            names = sorted(self.allowlist.properties - _NOT_SEARCHED)
        # toString() refuses lists (and the whole query with them); toStringOrNull() does not.
        if self.store.backend == "neo4j":
            matches = "toLower(toStringOrNull(n[k])) CONTAINS $text"
        else:
            matches = (
                "any(v IN CASE WHEN typeOf(n[k]) = 'List' THEN n[k] ELSE [n[k]] END "
                "WHERE toLower(toStringOrNull(v)) CONTAINS $text)"
            )
        result = await self.store.read(
            f"MATCH {pattern} WHERE any(k IN $props WHERE {matches}) RETURN n LIMIT $limit",
            {"tenant": tenant, "props": names, "text": text.lower(), "limit": limit},
            timeout=self._timeout,
        )
        collector = _Collector(tenant)
        for record in result.records:
            collector.walk(record["n"])
        return collector.view()

    # -- caller-written queries --------------------------------------------------------------

    async def query(
        self, text: str, *, tenant: str, params: Mapping[str, Any] | None = None
    ) -> QueryResult:
        """Run a read-only, tenant-anchored query (see :mod:`spine.graph.cypher_guard`).

        ``$tenant`` is always the caller's tenant; a parameter of that name is refused. The
        server stops the query at the time and memory one query may use: that is a 400 naming
        ``query`` (:class:`~spine.graph.store.QueryLimitExceeded`), not an outage.
        """
        params = dict(params or {})
        if "tenant" in params:
            raise BadRequest(
                "the parameter 'tenant' is set by the platform to your tenant",
                field="params.tenant",
            )
        for name in params:
            if not _PARAM_NAME.match(name):
                raise BadRequest(
                    f"params: {name[:60]!r} is not a parameter name", field=f"params.{name[:60]}"
                )
        check_query(text, params)
        try:
            result = await self.store.read(
                text, {**params, "tenant": tenant}, timeout=self._timeout, max_rows=self._max_rows
            )
        except QueryLimitExceeded as exc:
            raise QueryLimitExceeded(
                f"query: {exc.message}; narrow it (fewer start nodes, shorter paths, a LIMIT)",
                field="query",
                **exc.details,
            ) from exc
        if result.wrote:  # the guard and the server refuse writes; this would be a hole
            raise TenantLeak("the query changed the graph", field="query")
        collector = _Collector(tenant)
        columns = list(result.records[0]) if result.records else []
        times = [_is_time_name(column.rsplit(".", 1)[-1]) for column in columns]
        rows = [
            [
                _shown_time(v) if is_time else collector.value(v)
                for v, is_time in zip(record.values(), times, strict=True)
            ]
            for record in result.records
        ]
        await self._fill_ends(collector, tenant)
        return QueryResult(
            columns=columns, rows=rows, graph=collector.view(), truncated=result.truncated
        )

    async def _fill_ends(self, collector: _Collector, tenant: str) -> None:
        """Fetch the end nodes of returned edges that the rows did not return themselves."""
        missing = collector.dangling()
        if not missing:
            return
        if self.store.backend == "neo4j":
            text = "MATCH (n) WHERE elementId(n) IN $ids AND n.tenant = $tenant RETURN n"
            ids: list[Any] = missing
        else:
            text = "MATCH (n) WHERE id(n) IN $ids AND n.tenant = $tenant RETURN n"
            ids = [int(m.rsplit("_", 1)[1]) for m in missing if m.rsplit("_", 1)[-1].isdigit()]
        result = await self.store.read(text, {"ids": ids, "tenant": tenant}, timeout=self._timeout)
        for record in result.records:
            collector.walk(record["n"])

    def _label_of(self, uid: str, *, field: str = "id") -> str:
        label, sep, key = uid.partition(":")
        if not sep or not key:
            raise BadRequest(f"{field}: a node id is <Label>:<key>, not {uid[:80]!r}", field=field)
        return self.allowlist.label(label, field=field)


def _validity(var: str, *, at: datetime | None, history: bool, params: dict[str, Any]) -> str:
    if history:
        return ""
    if at is None:
        return f" AND {var}.valid_to IS NULL"
    params["at"] = int(at.timestamp() * 1000)
    return (
        f" AND coalesce({var}.valid_from, 0) <= $at"
        f" AND ({var}.valid_to IS NULL OR {var}.valid_to > $at)"
    )


class _Collector:
    """Turns graph values into JSON and gathers the nodes and edges met, each once."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.nodes: dict[str, GraphNode] = {}
        self.edges: dict[str, GraphEdge] = {}
        self._ids: dict[str, str] = {}  # element id -> uid
        self._raw_edges: list[Relationship] = []
        self._edge_ids: set[str] = set()
        self._edge_properties: dict[str, dict[str, Any]] = {}

    def walk(self, value: Any) -> None:
        """Gather the nodes and edges in a value without rendering it."""
        if isinstance(value, Node):
            self.node(value)
        elif isinstance(value, Relationship):
            self._relationship(value)
        elif isinstance(value, Path):
            for node in value.nodes:
                self.node(node)
            for rel in value.relationships:
                self._relationship(rel)
        elif isinstance(value, list | tuple):
            for item in value:
                self.walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                self.walk(item)

    def value(self, value: Any) -> Any:
        if isinstance(value, Node):
            return asdict(self.node(value))
        if isinstance(value, Relationship):
            return self.edge(value)
        if isinstance(value, Path):
            return {
                "nodes": [asdict(self.node(n)) for n in value.nodes],
                "edges": [self.edge(r) for r in value.relationships],
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items()}
        return _scalar(value)

    def node(self, node: Node) -> GraphNode:
        known = self._ids.get(node.element_id)
        if known is not None:  # met before (a path's start node comes back on every path)
            return self.nodes[known]
        properties = node.properties
        self._check_tenant(properties)
        uid = str(properties.get("uid") or node.element_id)
        self._ids[node.element_id] = uid
        found = self.nodes.get(uid)
        if found is None:
            found = GraphNode(id=uid, labels=sorted(node.labels), properties=_shown(properties))
            self.nodes[uid] = found
        return found

    def edge(self, rel: Relationship) -> dict[str, Any]:
        properties = self._relationship(rel)
        return {"id": rel.element_id, "type": rel.type, "properties": _shown(properties)}

    def _relationship(self, rel: Relationship) -> dict[str, Any]:
        if rel.element_id in self._edge_ids:
            return self._edge_properties[rel.element_id]
        properties = rel.properties
        self._check_tenant(properties)
        self._edge_ids.add(rel.element_id)
        self._edge_properties[rel.element_id] = properties
        self._raw_edges.append(rel)
        return properties

    def dangling(self) -> list[str]:
        ends = {end for rel in self._raw_edges for end in (rel.start, rel.end) if end}
        return sorted(ends - set(self._ids))

    def view(self) -> GraphView:
        for rel in self._raw_edges:
            if rel.element_id in self.edges or not rel.start or not rel.end:
                continue
            self.edges[rel.element_id] = GraphEdge(
                id=rel.element_id,
                type=rel.type,
                source=self._ids.get(rel.start, rel.start),
                target=self._ids.get(rel.end, rel.end),
                properties=_shown(self._edge_properties[rel.element_id]),
            )
        return GraphView.model_construct(
            nodes=list(self.nodes.values()), edges=list(self.edges.values())
        )

    def _check_tenant(self, properties: Mapping[str, Any]) -> None:
        if properties.get("tenant") != self.tenant:
            raise TenantLeak("the query reached data of another tenant", field="query")


def _shown(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _shown_time(v) if k in _TIME_PROPERTIES else v if type(v) in _PLAIN else _scalar(v)
        for k, v in properties.items()
        if k not in _HIDDEN
    }


_TIME_PROPERTIES = frozenset({"event_time", "valid_from", "valid_to"})
"""Provenance properties stored as epoch milliseconds (comparable in Cypher on both backends)."""


def _is_time_name(name: str) -> bool:
    return name in _TIME_PROPERTIES


def _shown_time(value: Any) -> Any:
    """Return epoch milliseconds as an ISO 8601 UTC time; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return value
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _scalar(value) if type(value) not in _PLAIN else value


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [_scalar(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
