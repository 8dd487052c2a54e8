"""Awkward data against the real graph server: list values, odd keys, old times, self-loops.

Each test maps example events (``graph/spine/graph/examples/mappings``) with the real mapping
code, writes them with :class:`~spine.graph.writer.GraphWriter` to the session's FalkorDB (with
the platform's ``uid``/``tenant`` indexes), and reads them back with
:class:`~spine.graph.explore.GraphExplorer`, each under tenants of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from spine.events.cloudevent import dedupe_id, parse_structured
from spine.events.log import ReceivedEvent
from spine.graph.explore import GraphExplorer
from spine.graph.falkordb_store import FalkorStore
from spine.graph.hybrid import HybridQuery, HybridRetriever
from spine.graph.mapping import EventWrites, MappingError, MappingSet
from spine.graph.writer import GraphWriter
from spine.platform.documents.vector_search import SearchHit, SearchQuery, SearchResult
from spine.platform.metering import CallContext
from support.knowledge import EXAMPLES, tenant_name
from support.servers import BackingServices

pytestmark = pytest.mark.integration

MAPPINGS = MappingSet.load(EXAMPLES / "mappings")


@dataclass(slots=True)
class Graph:
    """The session's FalkorDB, read through an explorer, and the tenants a test wrote."""

    store: FalkorStore
    explorer: GraphExplorer
    tenants: list[str] = field(default_factory=list)

    def tenant(self) -> str:
        tenant = tenant_name("awk")
        self.tenants.append(tenant)
        return tenant

    async def write(self, *items: ReceivedEvent) -> None:
        await GraphWriter(self.store).write([planned(item) for item in items])


@pytest.fixture
async def graph(services: BackingServices) -> AsyncIterator[Graph]:
    if services.falkordb_url is None:
        pytest.skip("these probe FalkorDB's own behaviour")
    store = FalkorStore.connect(services.falkordb_url)
    await store.ensure_schema(MAPPINGS.labels_and_keys())  # the indexes ingestion makes
    graph = Graph(store=store, explorer=GraphExplorer(store, MAPPINGS))
    try:
        yield graph
    finally:
        for tenant in graph.tenants:
            await graph.store.write([("MATCH (n {tenant: $t}) DETACH DELETE n", {"t": tenant})])
        await graph.store.close()


def received(
    tenant: str, event_type: str, data: dict[str, Any], *, at: datetime | None = None
) -> ReceivedEvent:
    event_id = uuid.uuid4().hex
    event = parse_structured(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/awkward",
            "type": event_type,
            "time": (at or datetime(2026, 1, 1, tzinfo=UTC)).isoformat(),
            "data": data,
        }
    )
    return ReceivedEvent(key=dedupe_id(tenant, "/awkward", event_id), tenant=tenant, event=event)


def planned(item: ReceivedEvent) -> EventWrites:
    assert item.event.time is not None
    writes = MAPPINGS.plan(item, time_ms=int(item.event.time.timestamp() * 1000))
    assert writes is not None
    return writes


def hired(tenant: str, person: Any, name: Any, company: Any = "c1") -> ReceivedEvent:
    data = {"person": {"id": person, "name": name}, "company": {"id": company, "name": "C"}}
    return received(tenant, "com.example.person.hired", data)


async def test_a_list_value_breaks_no_search_of_any_tenant(graph: Graph) -> None:
    explorer = graph.explorer
    theirs, fresh = graph.tenant(), graph.tenant()
    await graph.write(hired(theirs, 1, ["Grace", "Hopper"]), hired(theirs, 2, "Ada"))

    # The server may evaluate the filter on every tenant's nodes: none of them may fail it.
    assert (await explorer.search("ada", tenant=fresh)).nodes == []
    assert (await explorer.search("ada", tenant=fresh, label="Person")).nodes == []
    found = await explorer.search("ada", tenant=theirs)
    assert [n.id for n in found.nodes] == ["Person:2"]
    # A list is searched item by item.
    for label, name in ((None, None), ("Person", None), (None, "name")):
        found = await explorer.search("hopper", tenant=theirs, label=label, property=name)
        assert [n.id for n in found.nodes] == ["Person:1"], (label, name)
        assert found.nodes[0].properties["name"] == ["Grace", "Hopper"]

    documents = _Documents(entities=[])
    result = await HybridRetriever(documents, explorer).search(
        HybridQuery(query="who is Ada?"), CallContext(tenant=fresh)
    )
    assert result.entities == []


# Keys the mappings accept: each is found again by the index, so replays and relationships work.
ACCEPTED = [
    "\tlead",
    " lead",
    "in side",
    "tab\tin",
    "new\nline in",
    "nbsp\xa0",
    "x\x02",
    "ls\u2028",
]
REFUSED = [f"k{end}" for end in " \t\n\v\f\r"] + ["a\x01b", "\x01"]


async def test_keys_the_mappings_accept_are_found_again_and_written_once(
    graph: Graph,
) -> None:
    explorer = graph.explorer
    tenant = graph.tenant()
    events = [hired(tenant, key, f"name {i}", company=key) for i, key in enumerate(ACCEPTED)]
    await graph.write(*events)
    await graph.write(*events)  # a replay
    for key in ACCEPTED:
        node = await explorer.node(f"Person:{key}", tenant=tenant)
        assert node.properties["id"] == key
        view = await explorer.neighbors(f"Person:{key}", tenant=tenant)
        assert [(e.type, e.target) for e in view.edges] == [("WORKS_AT", f"Company:{key}")]
    copies = await graph.store.read(
        "MATCH (n:Person) WHERE n.tenant = $t RETURN n.uid + '' AS uid, count(*) AS c",
        {"t": tenant},
    )
    assert sorted((r["uid"], r["c"]) for r in copies.records) == sorted(
        (f"Person:{key}", 1) for key in ACCEPTED
    )


@pytest.mark.parametrize("key", REFUSED)
def test_keys_the_uid_index_cannot_find_are_refused_naming_the_path(key: str) -> None:
    with pytest.raises(MappingError, match=r"data\.person\.id cannot key") as refused:
        planned(hired("t", key, "x"))
    assert refused.value.field == "data.person.id"


async def test_the_uid_index_misses_the_keys_the_mappings_refuse(graph: Graph) -> None:
    """Why they are refused: stored, but not found by the index a MERGE or a read uses."""
    tenant = graph.tenant()
    for key in REFUSED:
        uid = f"Person:{key}"
        await graph.store.write(
            [("CREATE (:Person {tenant: $t, uid: $u})", {"t": tenant, "u": uid})]
        )
        by_index = await graph.store.read(
            "MATCH (n:Person {tenant: $t, uid: $u}) RETURN count(n) AS c", {"t": tenant, "u": uid}
        )
        by_scan = await graph.store.read(
            "MATCH (n:Person) WHERE n.tenant = $t AND n.uid + '' = $u RETURN count(n) AS c",
            {"t": tenant, "u": uid},
        )
        assert (by_index.records[0]["c"], by_scan.records[0]["c"]) == (0, 1), repr(key)


@pytest.mark.parametrize("newer_first", [True, False])
async def test_the_newer_event_wins_before_1970_too(graph: Graph, newer_first: bool) -> None:
    explorer = graph.explorer
    tenant = graph.tenant()
    times = {
        "1950": datetime(1950, 1, 1, tzinfo=UTC),
        "1960": datetime(1960, 1, 1, tzinfo=UTC),
        "1969": datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
    }
    events = {
        name: received(tenant, "com.example.person.updated", {"id": 1, "name": name}, at=at)
        for name, at in times.items()
    }
    order = ["1969", "1960", "1950"] if newer_first else ["1950", "1960", "1969"]
    for name in order:  # one batch each
        await graph.write(events[name])
    node = await explorer.node("Person:1", tenant=tenant)
    assert node.properties["name"] == "1969"
    assert node.properties["valid_from"] == "1950-01-01T00:00:00.000Z"
    # Within one batch too (rows of one node are folded before the write).
    other = graph.tenant()
    batch = [
        received(other, "com.example.person.updated", {"id": 1, "name": n}, at=times[n])
        for n in order
    ]
    await graph.write(*batch)
    assert (await explorer.node("Person:1", tenant=other)).properties["name"] == "1969"


async def test_a_self_loop_is_among_the_neighbors(graph: Graph) -> None:
    explorer = graph.explorer
    tenant = graph.tenant()
    met = {"a": 5, "b": 5, "where": "mirror"}
    await graph.write(received(tenant, "com.example.person.met", met), hired(tenant, 5, "Narc"))
    for direction in ("out", "in", "both"):
        view = await explorer.neighbors("Person:5", tenant=tenant, direction=direction)
        edges = {(e.type, e.source, e.target) for e in view.edges}
        assert ("KNOWS", "Person:5", "Person:5") in edges, direction
        assert [n.id for n in view.nodes].count("Person:5") == 1
    both = await explorer.neighbors("Person:5", tenant=tenant, depth=2)
    assert {(e.type, e.target) for e in both.edges} == {
        ("KNOWS", "Person:5"),
        ("WORKS_AT", "Company:c1"),
    }


async def test_neighbours_over_the_limit_say_the_view_is_not_whole(graph: Graph) -> None:
    # 130 hires at one company once showed as 100 neighbours, said to be all of them.
    explorer = graph.explorer
    tenant = graph.tenant()
    await graph.write(*[hired(tenant, n, f"P{n}", company="big") for n in range(5)])
    capped = await explorer.neighbors("Company:big", tenant=tenant, limit=3)
    assert capped.truncated
    assert len([n for n in capped.nodes if n.id != "Company:big"]) == 3
    assert len(capped.edges) == 3
    whole = await explorer.neighbors("Company:big", tenant=tenant, limit=5)
    assert not whole.truncated
    assert len(whole.nodes) == 6


class _Documents:
    """A vector search that finds one passage naming ``entities`` (the seam hybrid owns)."""

    def __init__(self, entities: list[Any]) -> None:
        self.entities = entities

    async def search(self, query: SearchQuery, context: CallContext) -> SearchResult:
        hit = SearchHit(
            document_id="d1",
            chunk=0,
            text="a passage",
            heading=None,
            score=0.9,
            metadata={"entities": self.entities},
            source=None,
            model="m",
        )
        return SearchResult(hits=[hit], models=["m"])


async def test_hybrid_search_skips_entity_ids_that_are_not_node_ids(graph: Graph) -> None:
    explorer = graph.explorer
    tenant = graph.tenant()
    await graph.write(hired(tenant, 1, "Ann"))
    bad = ["Nope:1", ":x", "Person:", "Person", "", 42, None, "nope:1"]
    documents = _Documents(entities=[*bad, "Person:1", "Person:404"])
    result = await HybridRetriever(documents, explorer).search(
        HybridQuery(query="who works where?"), CallContext(tenant=tenant)
    )
    [passage] = result.passages
    assert passage.mentions == ["Person:1", "Person:404"]
    assert [e.node.id for e in result.entities] == ["Person:1"]  # 404: not in this graph
    assert [(f.edge.type, f.edge.target) for f in result.facts] == [("WORKS_AT", "Company:c1")]


async def test_a_query_parameter_may_start_with_an_underscore(graph: Graph) -> None:
    explorer = graph.explorer
    tenant = graph.tenant()
    await graph.write(hired(tenant, 1, "Ann"))
    result = await explorer.query(
        "MATCH (n:Person {tenant: $tenant}) WHERE n.name = $_x RETURN n.uid AS uid",
        tenant=tenant,
        params={"_x": "Ann"},
    )
    assert result.rows == [["Person:1"]]
