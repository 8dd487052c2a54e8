"""The query guard: read-only and tenant-anchored, conservatively."""

from __future__ import annotations

from typing import Any

import pytest

from spine.graph.cypher_guard import MAX_RANGE_VALUES, UnsafeQuery, check_query

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
    # every spelling of a relationship the server reads, anchored
    "MATCH (a {tenant: $tenant})<-->(b) RETURN b",
    "MATCH (a {tenant: $tenant}) < - - > (b) RETURN b",
    "MATCH (a {tenant: $tenant}) - - > (b) RETURN b",
    "MATCH (a {tenant: $tenant})<-[:K]->(b) RETURN b",
    "MATCH (a {tenant: $tenant}) RETURN [(a)<-->(y) | y.name], [(a) < - [:K] - (y) | y.name]",
    "MATCH (a {tenant: $tenant}) RETURN a.n - -1, (a.n) - (a.m), (a.n) < 2",
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
    # unanchored patterns in every spelling the server reads (<--> lexes as <- then ->)
    "MATCH (a {tenant: $tenant}) RETURN [(x)<-->(y) WHERE y.tenant <> $tenant | properties(y)]",
    "MATCH (a {tenant: $tenant}) WITH [(x)<-->(y) | y] AS ys RETURN ys",
    "MATCH (a {tenant: $tenant}) RETURN [(x) < - - > (y) | y]",
    "MATCH (a {tenant: $tenant}) RETURN [(x) < - - (y) | y]",
    "MATCH (a {tenant: $tenant}) RETURN [(x) - - > (y) | y]",
    "MATCH (a {tenant: $tenant}) RETURN [(x)<-[:K]->(y) | y]",
    "MATCH (a {tenant: $tenant}) RETURN [(x)-/* gap */->(y) | y]",
    "MATCH (a {tenant: $tenant}) RETURN size([(x)\n<\n-\n-\n>\n(y) | y])",
    "MATCH (a {tenant: $tenant}) WHERE exists((x)<-->(y)) RETURN a",
    "MATCH (a {tenant: $tenant}) RETURN COUNT { (x)<-->(y) }",
    "MATCH (x)<-->(y) RETURN y",
    "MATCH (x) < - - > (y) RETURN y",
    "MATCH (a {tenant: $tenant}), (x) - - > (y) RETURN y",
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


# What the server cannot stop once it starts: one expression allocating past any limit.
ANCHOR = "MATCH (p:Person {tenant: $tenant}) "
BOUNDED: list[tuple[str, dict[str, Any]]] = [
    (ANCHOR + "UNWIND range(1, 1000) AS x RETURN count(x)", {}),
    (ANCHOR + "UNWIND range(-5, 5, 2) AS x RETURN x", {}),
    (ANCHOR + "UNWIND range(10, 1, -1) AS x RETURN x", {}),
    (ANCHOR + "UNWIND range(1, $n) AS x RETURN x", {"n": 1_000_000}),
    (ANCHOR + "UNWIND range(0, 999) AS a UNWIND range(0, 999) AS b RETURN count(*)", {}),
    (ANCHOR + "RETURN range(5, 1) AS empty, range(1, 2000000000, 1000000000) AS few", {}),
    (ANCHOR + "RETURN p.range, p.reduce, {range: 1, reduce: 2} AS m", {}),
    (ANCHOR + "RETURN 'range(1, 2000000000)', 'reduce(s = 0, x IN [] | s)'", {}),
]
UNBOUNDED: list[tuple[str, dict[str, Any], str]] = [
    (ANCHOR + "UNWIND range(1,2000000000) AS x RETURN count(x)", {}, "2,000,000,000"),
    (ANCHOR + "UNWIND range(1, $n) AS x RETURN x", {"n": 10**9}, "1,000,000,000"),
    (ANCHOR + "RETURN `range`(1, 2000000000)", {}, "range()"),
    (ANCHOR + "RETURN range(5, 1) AS none, range(1, 2000000000) AS all", {}, "2,000,000,000"),
    (ANCHOR + "RETURN RANGE /* a comment */ (0, 1000000)", {}, "1,000,001"),
    (ANCHOR + "RETURN [a IN range(1, 1000) | [b IN range(1, 1001) | a + b]]", {}, "1,001,000"),
    (ANCHOR + "UNWIND range(1, size(p.friends)) AS x RETURN x", {}, "integer literals"),
    (ANCHOR + "UNWIND range(1, 2000000000 + 0) AS x RETURN x", {}, "integer literals"),
    (ANCHOR + "UNWIND range(1, 2e9) AS x RETURN x", {}, "integer literals"),
    (ANCHOR + "UNWIND range(1, $n) AS x RETURN x", {}, "integer literals"),
    (ANCHOR + "UNWIND range(1, $n) AS x RETURN x", {"n": "9"}, "integer literals"),
    (ANCHOR + "UNWIND range(1, 10, 0) AS x RETURN x", {}, "step"),
    (ANCHOR + "UNWIND range(1) AS x RETURN x", {}, "start, an end"),
    (ANCHOR + "RETURN size(reduce(s = 'ab', x IN range(1, 40) | s + s))", {}, "reduce()"),
    (ANCHOR + "RETURN reduce(total = 0, x IN [1, 2] | total + x)", {}, "reduce()"),
]


@pytest.mark.parametrize(("query", "params"), BOUNDED)
def test_bounded_ranges_pass(query: str, params: dict[str, Any]) -> None:
    check_query(query, params)


@pytest.mark.parametrize(("query", "params", "said"), UNBOUNDED)
def test_ranges_too_large_or_unknown_and_reduce_are_refused(
    query: str, params: dict[str, Any], said: str
) -> None:
    with pytest.raises(UnsafeQuery) as caught:
        check_query(query, params)
    assert caught.value.field == "query"
    assert caught.value.status_code == 400
    assert said in caught.value.message


def test_the_range_bound_is_the_product_of_all_ranges() -> None:
    side = 1000
    check_query(ANCHOR + f"UNWIND range(1, {side}) AS a UNWIND range(1, {side}) AS b RETURN a")
    assert side * side == MAX_RANGE_VALUES
    with pytest.raises(UnsafeQuery):
        check_query(ANCHOR + f"UNWIND range(1, {side}) AS a UNWIND range(0, {side}) AS b RETURN a")
