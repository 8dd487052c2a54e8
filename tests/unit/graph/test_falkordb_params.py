"""FalkorDB's side of the store: what a parameter may hold, and how a compact reply is read."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.exceptions import ResponseError

from spine.graph.backends import describe_graph
from spine.graph.falkordb_params import checked_params, cypher_prefix
from spine.graph.falkordb_results import read_compact
from spine.graph.store import GraphError
from spine.graph.values import Node, Path, Relationship
from spine.platform.settings import load_settings


class Colour(enum.StrEnum):
    RED = "red"


def test_values_the_prefix_carries_exactly_pass_as_plain_values() -> None:
    params = {
        "text": "quote' \" back\\ slash\nline\u2028sep 😀",
        "n": -(2**63),
        "big": 2**63 - 1,
        "f": 1e-7,
        "flag": True,
        "none": None,
        "rows": ({"a b": [1, "x"], "ü": {"k": 1.5}},),
        "colour": Colour.RED,
    }
    checked = checked_params(params)
    assert checked["rows"] == [{"a b": [1, "x"], "ü": {"k": 1.5}}]
    assert type(checked["colour"]) is str
    assert checked["colour"] == "red"
    assert {k: v for k, v in checked.items() if k not in ("rows", "colour")} == {
        k: v for k, v in params.items() if k not in ("rows", "colour")
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"p": "a\x00b"}, "params.p"),
        ({"p": "\ud800"}, "params.p"),
        ({"p": 2**63}, "params.p"),
        ({"p": -(2**63) - 1}, "params.p"),
        ({"p": float("nan")}, "params.p"),
        ({"p": float("inf")}, "params.p"),
        ({"p": b"bytes"}, "params.p"),
        ({"p": datetime(2026, 1, 1, tzinfo=UTC)}, "params.p"),
        ({"p": {1, 2}}, "params.p"),
        ({"p": {"a`b": 1}}, "params.p.a`b"),
        ({"p": {"": 1}}, "params.p."),
        ({"p": {"k\x00": 1}}, "params.p.k\x00"),
        ({"p": [{"k": [1, 10**30]}]}, "params.p[0].k[1]"),
        ({"a b": 1}, "params"),
        ({"p` = 1 RETURN 7 //": 1}, "params"),
    ],
)
def test_what_the_prefix_cannot_carry_is_refused_naming_the_parameter(
    params: dict[str, Any], field: str
) -> None:
    with pytest.raises(GraphError) as caught:
        checked_params(params)
    assert caught.value.field == field
    assert caught.value.status_code == 400


def test_the_prefix_is_the_one_the_client_writes() -> None:
    assert cypher_prefix({}) == ""
    assert cypher_prefix({"q": 'a"b\\c', "n": [1, None, True]}) == (
        'CYPHER `q`="a\\"b\\\\c" `n`=[1,null,True] '
    )


class FakeSchema:
    """A schema that learns the names of number 1 only when refreshed."""

    def __init__(self) -> None:
        self.labels = ["Person"]
        self.relationships = ["KNOWS"]
        self.properties = ["uid"]
        self.refreshed = 0

    async def refresh_labels(self) -> None:
        self.labels = ["Person", "Company"]
        self.refreshed += 1

    async def refresh_relations(self) -> None:
        self.relationships = ["KNOWS", "WORKS_AT"]

    async def refresh_properties(self) -> None:
        self.properties = ["uid", "name"]


async def test_a_compact_reply_becomes_plain_values() -> None:
    ann = [8, [0, [0], [[0, 2, "Person:1"]]]]
    acme = [8, [5, [1], [[0, 2, "Company:a"], [1, 2, "ACME"]]]]
    works = [7, [3, 1, 0, 5, [[1, 5, "0.5"]]]]
    reply = [
        [[1, "n"], [1, "path"], [1, "m"], [1, "scalars"], [1, "at"], [1, "took"]],
        [
            [
                ann,
                [9, [[6, [ann, acme]], [6, [works]]]],
                [10, ["k", [3, 7], "none", [1, None]]],
                [6, [[4, "true"], [5, "1.5"], [2, "x"], [11, ["1.5", "2"]]]],
                [13, 86_400],
                [16, 93_784],
            ]
        ],
        ["Nodes created: 0", "Query internal execution time: 0.1 milliseconds"],
    ]
    schema = FakeSchema()
    result = await read_compact(reply, schema)
    assert schema.refreshed == 1  # label 1 was new
    assert result.columns == ["n", "path", "m", "scalars", "at", "took"]
    [[node, path, mapping, scalars, at, took]] = result.rows
    assert node == Node(
        element_id="node_0", labels=frozenset({"Person"}), properties={"uid": "Person:1"}
    )
    assert path == Path(
        nodes=[
            node,
            Node(
                element_id="node_5",
                labels=frozenset({"Company"}),
                properties={"uid": "Company:a", "name": "ACME"},
            ),
        ],
        relationships=[
            Relationship(
                element_id="edge_3",
                type="WORKS_AT",
                start="node_0",
                end="node_5",
                properties={"name": 0.5},
            )
        ],
    )
    assert mapping == {"k": 7, "none": None}
    assert scalars == [True, 1.5, "x", {"latitude": 1.5, "longitude": 2.0}]
    assert at == datetime(1970, 1, 2, tzinfo=UTC)
    assert took == "P1DT2H3M4S"
    assert result.counted("Nodes created") == 0
    assert result.counted("Properties set") == 0


async def test_an_error_in_a_reply_is_raised() -> None:
    with pytest.raises(ResponseError, match="boom"):
        await read_compact([[[1, "x"]], [], ResponseError("boom")], FakeSchema())
    stats_only = await read_compact([["Nodes created: 2"]], FakeSchema())
    assert stats_only.rows == []
    assert stats_only.counted("Nodes created") == 2


def test_the_graph_is_named_without_its_password() -> None:
    falkor = load_settings(_env_file=None, falkordb_url="redis://default:s3cret@127.0.0.1:1/0")
    shown = describe_graph(falkor)
    assert shown is not None
    assert "s3cret" not in shown
    assert "127.0.0.1:1/0" in shown
    both = load_settings(
        _env_file=None, falkordb_url="redis://127.0.0.1:1/0", neo4j_uri="bolt://neo4j:7687"
    )
    assert describe_graph(both) == "Neo4j at bolt://neo4j:7687 (Bolt)"
    assert describe_graph(load_settings(_env_file=None)) is None
