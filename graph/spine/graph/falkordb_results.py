"""Reading FalkorDB's compact result set straight into plain values (:mod:`spine.graph.values`).

A ``GRAPH.QUERY``/``GRAPH.RO_QUERY`` with ``--compact`` answers ``[header, rows, statistics]``
(or ``[statistics]`` when nothing is returned; an error met while running comes as the last
element). Every value is ``[type, value]``; nodes, relationships and properties name their
labels, types and keys by number, which the graph's schema turns into names
(``falkordb``'s :class:`~falkordb.asyncio.graph_schema.GraphSchema`, refreshed when a number is
new to it).

The official client parses the same reply into its own objects, one awaited call per value;
reading it here, synchronously and into the values the graph code uses, costs about a third
of that (``bench/graph.py``), and the client still builds every query and keeps the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.exceptions import ResponseError

from spine.graph.values import Node, Path, Relationship

__all__ = ["CompactResult", "Schema", "read_compact"]


class Schema(Protocol):
    """The names behind the numbers of a graph (``falkordb``'s ``GraphSchema``)."""

    labels: list[str]
    relationships: list[str]
    properties: list[str]

    async def refresh_labels(self) -> None:
        """Fetch the label names again."""
        ...

    async def refresh_relations(self) -> None:
        """Fetch the relationship type names again."""
        ...

    async def refresh_properties(self) -> None:
        """Fetch the property key names again."""
        ...


class CompactResult:
    """The columns, rows and statistics of one reply."""

    __slots__ = ("columns", "rows", "statistics")

    def __init__(self, columns: list[str], rows: list[list[Any]], statistics: list[str]) -> None:
        self.columns = columns
        self.rows = rows
        self.statistics = statistics

    def counted(self, name: str) -> float:
        """Return a statistic (``"Nodes created"``, ...), 0 when the server did not list it."""
        for line in self.statistics:
            key, _, value = line.partition(": ")
            if key == name:
                return float(value.split(" ")[0])
        return 0.0


class _UnknownNumber(Exception):
    """A label, type or key number the schema does not know yet."""


async def read_compact(reply: list[Any], schema: Schema) -> CompactResult:
    """Turn a ``--compact`` reply into plain values.

    Raises:
        ResponseError: The reply carries the server's error.
    """
    if reply and isinstance(reply[0], ResponseError):
        raise reply[0]
    if reply and isinstance(reply[-1], ResponseError):
        raise reply[-1]
    if len(reply) == 1:
        return CompactResult([], [], reply[0])
    columns = [str(name) for _, name in reply[0]]
    for attempt in range(2):
        try:
            rows = [[_value(cell, schema) for cell in row] for row in reply[1]]
            break
        except _UnknownNumber:
            if attempt:
                raise
            await schema.refresh_labels()
            await schema.refresh_relations()
            await schema.refresh_properties()
    return CompactResult(columns, rows, reply[2])


def _value(cell: list[Any], schema: Schema) -> Any:
    kind, value = cell[0], cell[1]
    read = _READERS.get(kind)
    if read is None:
        return value
    return read(value, schema)


def _name(names: list[str], number: int) -> str:
    try:
        return names[number]
    except IndexError:
        raise _UnknownNumber from None


def _properties(entries: list[Any], schema: Schema) -> dict[str, Any]:
    names = schema.properties
    return {_name(names, e[0]): _value(e[1:], schema) for e in entries}


def _node(value: list[Any], schema: Schema) -> Node:
    labels = schema.labels
    return Node(
        element_id=f"node_{value[0]}",
        labels=frozenset(_name(labels, n) for n in value[1]),
        properties=_properties(value[2], schema),
    )


def _relationship(value: list[Any], schema: Schema) -> Relationship:
    return Relationship(
        element_id=f"edge_{value[0]}",
        type=_name(schema.relationships, value[1]),
        start=f"node_{value[2]}",
        end=f"node_{value[3]}",
        properties=_properties(value[4], schema),
    )


def _path(value: list[Any], schema: Schema) -> Path:
    return Path(nodes=_value(value[0], schema), relationships=_value(value[1], schema))


def _map(value: list[Any], schema: Schema) -> dict[str, Any]:
    return {str(value[i]): _value(value[i + 1], schema) for i in range(0, len(value), 2)}


def _timestamp(value: Any, schema: Schema) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def _duration(value: Any, schema: Schema) -> str:
    seconds = int(value)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + ("T" + time if time else "") if seconds else "PT0S"


_READERS: dict[int, Callable[[Any, Schema], Any]] = {
    1: lambda value, schema: None,
    2: lambda value, schema: value if type(value) is str else str(value),
    3: lambda value, schema: int(value),
    4: lambda value, schema: value == "true" or value is True,
    5: lambda value, schema: float(value),
    6: lambda value, schema: [_value(item, schema) for item in value],
    7: _relationship,
    8: _node,
    9: _path,
    10: _map,
    11: lambda value, schema: {"latitude": float(value[0]), "longitude": float(value[1])},
    12: lambda value, schema: [float(v) for v in value],
    13: _timestamp,
    14: lambda value, schema: _timestamp(value, schema).date(),
    15: lambda value, schema: _timestamp(value, schema).time(),
    16: _duration,
}
