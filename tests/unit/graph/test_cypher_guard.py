"""The query guard: read-only and tenant-anchored, conservatively."""

from __future__ import annotations

import pytest

from spine.graph.cypher_guard import UnsafeQuery, check_query

ACCEPTED = [
    "MATCH (n:Person {tenant: $tenant}) RETURN n LIMIT 5",
    "MATCH (a:Person {tenant: $tenant, uid: $uid})-[r:WORKS_AT*1..2]->(c) RETURN a, r, c",
    "MATCH p = (a {tenant: $tenant})-->(b) RETURN p",
    "MATCH (a {tenant: $tenant}) WITH a MATCH (a)<-[:KNOWS]-(b) RETURN b.name",
    "MATCH (a {tenant: $tenant}) WITH a AS x MATCH (x)--(y) RETURN y",
    "MATCH (a {tenant: $tenant}) RETURN [(a)-->(m) | m.name] AS names",
    "MATCH (n:Person {tenant: $tenant}) RETURN n.`create`, n.set // CREATE in a comment",
    "MATCH (n:Person {tenant: $tenant}) WHERE n.name = 'MERGE (x)' RETURN n;",
    "MATCH (a:Person {tenant: $tenant}), (b:Person {tenant: $tenant}) RETURN a, b",
    "MATCH (a {tenant: $tenant}) OPTIONAL MATCH (a)-[r]->(b) RETURN a, collect(b) AS bs ORDER BY a.name SKIP 1 LIMIT 3",
    "MATCH (a {tenant: $tenant}) UNWIND [1, 2] AS x RETURN a, x",
]

REFUSED = [
    "CREATE (n:X)",
    "MATCH (n {tenant: $tenant}) SET n.x = 1",
    "MERGE (n:X {tenant: $tenant})",
    "MATCH (n {tenant: $tenant}) DETACH DELETE n",
    "MATCH (n {tenant: $tenant}) REMOVE n.x",
    "LOAD CSV FROM 'file:///etc/passwd' AS l RETURN l",
    "CALL db.labels()",
    "MATCH (n {tenant: $tenant}) CALL { WITH n RETURN n AS m } RETURN m",
    "MATCH (n {tenant: $tenant}) FOREACH (x IN [1] | CREATE (:Y))",
    "GRAPH.QUERY g 'CREATE ()'",
    "MATCH (n) RETURN n",
    "MATCH (n {tenant: 'other'}) RETURN n",
    "MATCH (n {tenant: $other}) RETURN n",
    "MATCH (n) WHERE n.tenant = $tenant RETURN n",
    "MATCH (a {tenant: $tenant}), (b) RETURN b",
    "MATCH ()-[r]->() RETURN r",
    "MATCH (a {tenant: $tenant}) WITH 1 AS one MATCH (a) RETURN a",
    "MATCH (a {tenant: $tenant}) RETURN a UNION MATCH (a) RETURN a",
    "MATCH (a {tenant: $tenant}) RETURN [(x:Person)-->(y) | y.secret]",
    "MATCH (a {tenant: $tenant}) WHERE EXISTS { MATCH (a)-->(m) } MATCH (m) RETURN m",
    "MATCH (a {tenant: $tenant}) WHERE size([(a)-->(m) | m]) > 0 MATCH (m) RETURN m",
    "MATCH (a {tenant: $tenant}) WITH collect(a) AS xs UNWIND xs AS n MATCH (n)-->(m) RETURN m",
    "MATCH (a {tenant: $tenant}) WITH a UNWIND [1] AS a MATCH (a)--(b) RETURN b",
    "MATCH (n {tenant: $tenant}) RETURN n; MATCH (m) RETURN m",
    "match (n {tenant: $tenant}) create (m)",
    "",
]


@pytest.mark.parametrize("query", ACCEPTED)
def test_anchored_reads_pass(query: str) -> None:
    check_query(query)


@pytest.mark.parametrize("query", REFUSED)
def test_writes_calls_and_unanchored_patterns_are_refused(query: str) -> None:
    with pytest.raises(UnsafeQuery) as caught:
        check_query(query)
    assert caught.value.field == "query"
