"""``/v1/graph`` and the graph tools: tenant-bound reads, read-only queries, allowlisted names.

Two tenants hold graphs with the same node ids (``Person:1`` in both) and different data; on
every read path each sees only its own. Writes and injections through every endpoint are
refused, and the graph is unchanged afterwards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from spine.tools import ToolContext
from support.fake_models import FakeModelServer
from support.knowledge import (
    T0,
    clear_tenants,
    delete_event_streams,
    event_consumers,
    eventually,
    hired,
    knowledge,
    met,
    tenant_name,
)
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration


ACME = [
    hired(1, "c1", 0, "Ann Acme"),
    hired(2, "c1", 0, "Bob Acme"),
    hired(3, "c2", 0, "Cy Acme"),
    hired(1, "c2", 5, "Ann Acme"),  # Ann moves to c2
    met(2, 3),
    met(3, 4),
    hired(9, "c9", 0, "Only In Acme"),
    # Quotes and backslashes in data are values, whatever the graph server does with them.
    hired(10, "c9", 0, "O'Brien \\ it's x' MATCH (n) DETACH DELETE n //"),
]
GLOBEX = [hired(1, "g1", 0, "Gus Globex"), hired(2, "g1", 0, "Gil Globex"), met(1, 2)]


# One platform and one pair of graphs for the module: every test here only reads them (the
# refused writes check that nothing changed), and the last two write tenants of their own.
@pytest.fixture(scope="module")
async def spine(
    services: Any, module_pg_url: str, fake_models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    await delete_event_streams(services.nats_url)
    async with running_platform(
        services, module_pg_url, fake_models, workers=0, knowledge=knowledge(query_max_rows=5)
    ) as running:
        await clear_tenants(running.platform, "acme", "globex")
        yield running


@pytest.fixture(scope="module")
async def globex(spine: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    secret = (await spine.platform.keys.create(tenant="globex", role="admin")).secret
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def graphs(spine: RunningPlatform, globex: httpx.AsyncClient) -> None:
    for client, events in ((spine.client, ACME), (globex, GLOBEX)):
        answer = await client.post(
            "/v1/events",
            content=json.dumps(events),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert answer.status_code == 202, answer.text

    async def statuses() -> set[str]:
        page = (await spine.client.get("/v1/events", params={"limit": 200})).json()["data"]
        theirs = (await globex.get("/v1/events", params={"limit": 200})).json()["data"]
        return {e["status"] for e in [*page, *theirs]}

    async with event_consumers(spine.platform):
        await eventually(statuses, lambda s: s == {"mapped"})


async def counts(spine: RunningPlatform) -> tuple[int, int, list[Any]]:
    store = spine.platform.knowledge.store
    assert store is not None
    nodes = await store.read("MATCH (n) WHERE n.tenant IN ['acme', 'globex'] RETURN n", {})
    rels = await store.read(
        "MATCH (a)-[r]->() WHERE a.tenant IN ['acme', 'globex'] RETURN count(r) AS c", {}
    )
    props = sorted(json.dumps(r["n"].properties, sort_keys=True) for r in nodes.records)
    return len(nodes.records), rels.records[0]["c"], props


@pytest.mark.usefixtures("graphs")
async def test_each_tenant_reads_only_its_own_graph_on_every_path(
    spine: RunningPlatform, globex: httpx.AsyncClient
) -> None:
    ann = (await spine.client.get("/v1/graph/nodes/Person:1")).json()
    gus = (await globex.get("/v1/graph/nodes/Person:1")).json()
    assert ann["properties"]["name"] == "Ann Acme"
    assert gus["properties"]["name"] == "Gus Globex"
    assert "tenant" not in ann["properties"]
    assert ann["properties"]["source"] == "/hr"
    assert (await globex.get("/v1/graph/nodes/Person:9")).status_code == 404

    theirs = (await globex.get("/v1/graph/nodes/Person:1/neighbors", params={"depth": 3})).json()
    assert {n["id"] for n in theirs["nodes"]} == {"Person:1", "Person:2", "Company:g1"}
    assert all("Acme" not in json.dumps(n) for n in theirs["nodes"])

    found = (await globex.get("/v1/graph/search", params={"q": "acme"})).json()
    assert found["nodes"] == []
    found = (await spine.client.get("/v1/graph/search", params={"q": "only in"})).json()
    assert [n["id"] for n in found["nodes"]] == ["Person:9"]
    # Provenance is searched only when asked for by name.
    found = (await spine.client.get("/v1/graph/search", params={"q": "/hr"})).json()
    assert found["nodes"] == []
    by_source = {"q": "/hr", "property": "source"}
    found = (await spine.client.get("/v1/graph/search", params=by_source)).json()
    assert "Person:1" in {n["id"] for n in found["nodes"]}

    cross = await globex.get("/v1/graph/path", params={"from": "Person:1", "to": "Person:9"})
    assert cross.status_code == 404

    rows = await globex.post(
        "/v1/graph/query",
        json={"query": "MATCH (n:Person {tenant: $tenant}) RETURN n.name AS name ORDER BY name"},
    )
    assert rows.status_code == 200, rows.text
    assert rows.json()["rows"] == [["Gil Globex"], ["Gus Globex"]]

    tools = spine.platform.tools
    result = await tools.call(
        "graph_neighbors", {"id": "Person:1", "depth": 2}, ToolContext(tenant="globex")
    )
    assert result.ok, result.content
    assert "Acme" not in result.content
    result = await tools.call(
        "graph_query",
        {"query": "MATCH (n:Person {tenant: $tenant}) RETURN count(n) AS people"},
        ToolContext(tenant="globex"),
    )
    assert result.ok, result.content
    assert json.loads(result.content)["rows"] == [[2]]


@pytest.mark.usefixtures("graphs")
async def test_neighbors_paths_and_search_draw_nodes_and_edges(spine: RunningPlatform) -> None:
    view = (await spine.client.get("/v1/graph/nodes/Person:2/neighbors")).json()
    ids = {n["id"] for n in view["nodes"]}
    assert ids == {"Person:2", "Company:c1", "Person:3"}
    for edge in view["edges"]:
        assert {edge["source"], edge["target"]} <= ids
        assert edge["type"] in ("WORKS_AT", "KNOWS")
    out = (
        await spine.client.get(
            "/v1/graph/nodes/Person:2/neighbors",
            params={"depth": 2, "types": "KNOWS", "direction": "out"},
        )
    ).json()
    assert {n["id"] for n in out["nodes"]} == {"Person:2", "Person:3", "Person:4"}
    limited = (
        await spine.client.get(
            "/v1/graph/nodes/Person:2/neighbors", params={"depth": 1, "limit": 1}
        )
    ).json()
    assert len(limited["nodes"]) == 2

    # Ann works at c2 now; at day 2 she worked at c1; her history holds both.
    now = (await spine.client.get("/v1/graph/nodes/Person:1/neighbors")).json()
    assert {n["id"] for n in now["nodes"]} == {"Person:1", "Company:c2"}
    then = (
        await spine.client.get(
            "/v1/graph/nodes/Person:1/neighbors",
            params={"at": (T0 + timedelta(days=2)).isoformat()},
        )
    ).json()
    assert {n["id"] for n in then["nodes"]} == {"Person:1", "Company:c1"}
    history = (
        await spine.client.get("/v1/graph/nodes/Person:1/neighbors", params={"history": "true"})
    ).json()
    assert len(history["edges"]) == 2

    path = (
        await spine.client.get("/v1/graph/path", params={"from": "Person:1", "to": "Person:4"})
    ).json()
    assert path["length"] == 3
    assert path["nodes"][0]["id"] == "Person:1"
    assert {n["id"] for n in path["nodes"]} >= {"Person:1", "Company:c2", "Person:3", "Person:4"}
    none = (
        await spine.client.get("/v1/graph/path", params={"from": "Person:1", "to": "Person:9"})
    ).json()
    assert none["length"] is None

    found = (
        await spine.client.get(
            "/v1/graph/search", params={"q": "acme", "label": "Person", "property": "name"}
        )
    ).json()
    assert {n["id"] for n in found["nodes"]} == {"Person:1", "Person:2", "Person:3", "Person:9"}

    rows = await spine.client.post(
        "/v1/graph/query",
        json={
            "query": "MATCH (p:Person {tenant: $tenant})-[r:WORKS_AT]->(c) RETURN p, r, c",
            "params": {},
        },
    )
    body = rows.json()
    assert body["columns"] == ["p", "r", "c"]
    assert body["truncated"] is True  # 6 rows, the cap is 5
    assert len(body["rows"]) == 5
    assert {e["type"] for e in body["graph"]["edges"]} == {"WORKS_AT"}
    node_ids = {n["id"] for n in body["graph"]["nodes"]}
    assert all(e["source"] in node_ids for e in body["graph"]["edges"])


WRITES = [
    "CREATE (n:Person {tenant: $tenant, uid: 'Person:666'})",
    "MERGE (n:Person {tenant: $tenant, uid: 'Person:666'}) RETURN n",
    "MATCH (n:Person {tenant: $tenant}) SET n.name = 'pwned' RETURN n",
    "MATCH (n:Person {tenant: $tenant}) DETACH DELETE n",
    "MATCH (n:Person {tenant: $tenant})-[r]->() DELETE r",
    "MATCH (n:Person {tenant: $tenant}) REMOVE n.name RETURN n",
    "LOAD CSV FROM 'file:///etc/passwd' AS line RETURN line",
    "CALL db.idx.fulltext.createNodeIndex('Person', 'name')",
    "CALL dbms.procedures()",
    "MATCH (n {tenant: $tenant}) CALL { WITH n SET n.x = 1 } RETURN n",
    "MATCH (n {tenant: $tenant}) FOREACH (x IN [1] | CREATE (:Evil))",
    "MATCH (n {tenant: $tenant}) RETURN n; CREATE (:Evil)",
    "match (n {tenant: $tenant}) merge (m:Evil) return m",
    "MATCH (n) RETURN n",
    "MATCH (n) WHERE n.tenant = 'acme' RETURN n.name",
    "MATCH (n {tenant: 'acme'}) RETURN n",
    "MATCH (a {tenant: $tenant}), (b) RETURN b.name",
    "MATCH (a {tenant: $tenant}) WITH 1 AS x MATCH (a) RETURN a.name",
    # the server reads <--> and arrows with spaces inside as relationships
    "MATCH (a {tenant: $tenant}) RETURN [(x)<-->(y) WHERE y.tenant <> $tenant | properties(y)]",
    "MATCH (a {tenant: $tenant}) RETURN [(x) < - - > (y) WHERE y.tenant <> $tenant | y.name]",
]


@pytest.mark.usefixtures("graphs")
@pytest.mark.parametrize("query", WRITES)
async def test_writes_procedures_and_unanchored_queries_are_refused(
    spine: RunningPlatform, globex: httpx.AsyncClient, query: str
) -> None:
    before = await counts(spine)
    response = await globex.post("/v1/graph/query", json={"query": query})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "query_rejected"
    assert response.json()["error"]["field"] == "query"
    assert await counts(spine) == before


@pytest.mark.usefixtures("graphs")
async def test_every_spelling_of_a_relationship_is_one_the_guard_follows(
    spine: RunningPlatform,
) -> None:
    # Each spelling is a relationship to the server (same rows as the plain one), so the
    # guard must read it as one: anchored it passes, unanchored it is refused above.
    answers = []
    for arrow in ("--", "<-->", "< - - >", "- - >", "-->", "<-[]->"):
        query = (
            f"MATCH (p:Person {{tenant: $tenant}}) "
            f"RETURN p.uid AS p, [(p){arrow}(c) | c.uid] AS cs ORDER BY p"
        )
        response = await spine.client.post("/v1/graph/query", json={"query": query})
        assert response.status_code == 200, (arrow, response.text)
        answers.append(sorted(map(str, response.json()["rows"])))
    both, to = answers[0], answers[3]  # -- and <--> go both ways; - - > and --> one way
    assert both != to
    assert answers[1] == answers[2] == answers[5] == both
    assert answers[4] == to


@pytest.mark.usefixtures("graphs")
async def test_the_query_api_needs_an_admin_key_and_owns_tenant(spine: RunningPlatform) -> None:
    member = await spine.new_key("acme")
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {member}"}
    ) as client:
        refused = await client.post(
            "/v1/graph/query", json={"query": "MATCH (n {tenant: $tenant}) RETURN n"}
        )
        assert refused.status_code == 403
        assert (await client.get("/v1/graph/nodes/Person:1")).status_code == 200
    spoof = await spine.client.post(
        "/v1/graph/query",
        json={"query": "MATCH (n {tenant: $tenant}) RETURN n", "params": {"tenant": "globex"}},
    )
    assert spoof.status_code == 400
    assert spoof.json()["error"]["field"] == "params.tenant"


INJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/graph/nodes/Person) DETACH DELETE n //:1", {}, "id"),
    ("/v1/graph/nodes/Evil:1", {}, "id"),
    ("/v1/graph/nodes/nolabel", {}, "id"),
    ("/v1/graph/nodes/Person`:1", {}, "id"),
    ("/v1/graph/nodes/Person) DETACH DELETE n //:1/neighbors", {}, "id"),
    ("/v1/graph/nodes/Person:1/neighbors", {"types": "KNOWS]->() DELETE r //"}, "types[0]"),
    ("/v1/graph/nodes/Person:1/neighbors", {"types": "KNOWS,WORKS_AT`"}, "types[1]"),
    ("/v1/graph/nodes/Person:1/neighbors", {"depth": "1..9] DELETE r //"}, "depth"),
    ("/v1/graph/nodes/Person:1/neighbors", {"direction": "out) DELETE n"}, "direction"),
    ("/v1/graph/path", {"from": "Person:1", "to": "X) DETACH DELETE n //:2"}, "to"),
    ("/v1/graph/path", {"from": "Person:1", "to": "Person:2", "types": "A|B"}, "types[0]"),
    ("/v1/graph/search", {"q": "x", "label": "Person) DETACH DELETE n //"}, "label"),
    ("/v1/graph/search", {"q": "x", "property": "name) DETACH DELETE n //"}, "property"),
    ("/v1/graph/search", {"q": "x", "property": "password"}, "property"),
    ("/v1/graph/search", {"q": "') DETACH DELETE n //", "label": "Person"}, ""),
    ("/v1/graph/search", {"q": "x' RETURN 7 AS x //", "label": "Company"}, ""),
    ("/v1/graph/search", {"q": "\\' RETURN 7 AS x //"}, ""),
]


@pytest.mark.usefixtures("graphs")
async def test_quotes_and_backslashes_in_data_are_only_values(spine: RunningPlatform) -> None:
    name = "O'Brien \\ it's x' MATCH (n) DETACH DELETE n //"
    node = (await spine.client.get("/v1/graph/nodes/Person:10")).json()
    assert node["properties"]["name"] == name
    found = (await spine.client.get("/v1/graph/search", params={"q": "o'brien \\ it's"})).json()
    assert [n["id"] for n in found["nodes"]] == ["Person:10"]
    rows = await spine.client.post(
        "/v1/graph/query",
        json={
            "query": "MATCH (n:Person {tenant: $tenant, name: $name}) RETURN n.uid AS uid",
            "params": {"name": name},
        },
    )
    assert rows.json()["rows"] == [["Person:10"]], rows.text
    bad_key = await spine.client.post(
        "/v1/graph/query",
        json={"query": "MATCH (n {tenant: $tenant}) RETURN n", "params": {"a b": 1}},
    )
    assert bad_key.status_code == 400
    assert bad_key.json()["error"]["field"] == "params.a b"


@pytest.mark.usefixtures("graphs")
@pytest.mark.parametrize(("path", "params", "field"), INJECTIONS)
async def test_injections_through_every_endpoint_are_refused_naming_the_field(
    spine: RunningPlatform, path: str, params: dict[str, Any], field: str
) -> None:
    before = await counts(spine)
    response = await spine.client.get(path, params=params)
    if field:
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["field"] == field, response.json()
    else:  # a value: a parameter, so it is only text to look for
        assert response.status_code == 200, response.text
        assert response.json()["nodes"] == []
    assert await counts(spine) == before


def person_hired(person: Any, name: Any, company: str = "c1") -> dict[str, Any]:
    """A ``person.hired`` CloudEvent with any key and name."""
    event = hired(0, company, 0, "x")
    event["data"]["person"] = {"id": person, "name": name}
    return event


async def ingest(spine: RunningPlatform, client: httpx.AsyncClient, events: list[Any]) -> None:
    answer = await client.post(
        "/v1/events",
        content=json.dumps(events),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert answer.status_code == 202, answer.text

    async def statuses() -> list[str]:
        page = (await client.get("/v1/events", params={"limit": 200})).json()["data"]
        return [e["status"] for e in page]

    async with event_consumers(spine.platform):
        await eventually(statuses, lambda s: s == ["mapped"] * len(events))


async def test_a_list_value_of_one_tenant_breaks_no_search_of_another(
    spine: RunningPlatform,
) -> None:
    theirs, fresh = tenant_name("list"), tenant_name("fresh")
    try:
        # person.updated has no schema that would refuse a list.
        updated = person_hired(1, None)
        updated["type"], updated["data"] = (
            "com.example.person.updated",
            {"id": 1, "name": ["Grace", "Hopper"]},
        )
        for tenant, events in ((theirs, [updated]), (fresh, [])):
            secret = await spine.new_key(tenant)
            async with httpx.AsyncClient(
                base_url=spine.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
            ) as client:
                if events:
                    await ingest(spine, client, events)
                for query, found in (("ada", []), ("hopper", ["Person:1"] if events else [])):
                    answer = await client.get("/v1/graph/search", params={"q": query})
                    assert answer.status_code == 200, answer.text
                    assert [n["id"] for n in answer.json()["nodes"]] == found
    finally:
        await clear_tenants(spine.platform, theirs, fresh)


async def test_any_node_id_can_be_fetched_slashes_and_newlines_included(
    spine: RunningPlatform,
) -> None:
    tenant = tenant_name("ids")
    keys = ["x", "x/neighbors", "x/neighbors/neighbors", "new\nline", "sl/ash"]
    try:
        secret = await spine.new_key(tenant)
        async with httpx.AsyncClient(
            base_url=spine.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        ) as client:
            await ingest(spine, client, [person_hired(key, f"name of {key}") for key in keys])
            fetched = {}
            for key in keys:
                uid = quote(f"Person:{key}", safe="")
                node = await client.get(f"/v1/graph/nodes/{uid}")
                view = await client.get(f"/v1/graph/nodes/{uid}/neighbors")
                fetched[key] = (
                    node.json().get("id"),
                    sorted(n["id"] for n in view.json().get("nodes", [])),
                )
            assert fetched == {
                key: (f"Person:{key}", ["Company:c1", f"Person:{key}"]) for key in keys
            }
            # An unencoded /neighbors still asks for the neighbors.
            literal = (await client.get("/v1/graph/nodes/Person:x/neighbors")).json()
            assert {n["id"] for n in literal["nodes"]} == {"Person:x", "Company:c1"}
            literal = (await client.get("/v1/graph/nodes/Person:x%2Fneighbors/neighbors")).json()
            assert {n["id"] for n in literal["nodes"]} == {"Person:x/neighbors", "Company:c1"}
    finally:
        await clear_tenants(spine.platform, tenant)
