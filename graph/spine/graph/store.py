"""The graph store: the one seam between the graph code and a graph server.

Exploration, the writer, ingestion and hybrid retrieval see only :class:`GraphStore`. Two
backends implement it (:func:`spine.graph.backends.open_store` picks one from the settings):

- :class:`~spine.graph.neo4j_store.Neo4jStore`: Neo4j over Bolt, with the official ``neo4j``
  async driver (``GENAI_NEO4J_URI``);
- :class:`~spine.graph.falkordb_store.FalkorStore`: FalkorDB over its Redis protocol, with the
  official ``falkordb`` client (``GENAI_FALKORDB_URL``), reads through ``GRAPH.RO_QUERY``.

Every store answers the same way: records are dicts of plain values (nodes, relationships and
paths as :mod:`spine.graph.values`), a statement the server refuses is a :class:`GraphError`
(HTTP 400), a read the server stopped at its time or memory limit is
:class:`QueryLimitExceeded` (HTTP 400: the query asked too much, and asking again will not
help), and a server that does not answer, or not even a moment after the query's time limit,
is :class:`~spine.platform.errors.ServiceUnavailable` (HTTP 503). What differs between the two servers
(schema statements, shortest paths, what a parameter may hold) stays inside each backend, or
is asked of :attr:`GraphStore.backend` where a query must be written differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from spine.platform.errors import SpineError

__all__ = [
    "Backend",
    "GraphError",
    "GraphStore",
    "QueryLimitExceeded",
    "ReadResult",
    "Record",
    "Statement",
]

Backend = Literal["neo4j", "falkordb"]
Statement = tuple[str, Mapping[str, Any]]
Record = dict[str, Any]
"""One row of a read: column name to value (a node, relationship, path, list, map or scalar)."""
WAIT_GRACE = 2.0
"""Seconds a store waits past a read's timeout for the server to answer that it stopped it."""


class GraphError(SpineError):
    """The graph server refused a statement (a bad query, a value it cannot store)."""

    status_code = 400
    error_type = "graph_error"


class QueryLimitExceeded(GraphError):
    """The server stopped a read at the time or memory one query may use.

    The query's own cost, not the server's state: it would fail again the same way.
    ``details`` name the ``limit`` (``time`` or ``memory``).
    """

    error_type = "query_limit_exceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    """Records of a read, whether the row cap cut it short, and whether it wrote anything."""

    records: list[Record]
    truncated: bool
    wrote: bool


class GraphStore(Protocol):
    """A connection to one graph server, shared by a whole process."""

    @property
    def backend(self) -> Backend:
        """Name the kind of server, where a query must be written for it."""
        ...

    async def read(
        self,
        query: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> ReadResult:
        """Run a read-only query, keeping at most ``max_rows`` records.

        ``timeout`` bounds the query on the server; the wait here ends a moment later, so the
        server's own answer (:class:`QueryLimitExceeded`) comes back when it stops the query.

        Raises:
            QueryLimitExceeded: The server stopped the query at its time or memory limit.
            GraphError: The server refused the query (a write included) or a parameter.
            ServiceUnavailable: The server did not answer (or not soon after ``timeout``).
        """
        ...

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run statements in order; callers write idempotently (a retry gives the same graph).

        When this returns, the writes are durable as far as the server promises (FalkorDB as
        embedded: in its append-only file, fsynced).

        Raises:
            GraphError: The server refused a statement or a parameter.
            ServiceUnavailable: The server did not answer.
        """
        ...

    async def ensure_schema(self, labels: Iterable[str]) -> None:
        """Create what node lookups by ``(tenant, uid)`` need, per label; safe to repeat."""
        ...

    async def ping(self, *, timeout: float) -> None:
        """Raise :class:`~spine.platform.errors.ServiceUnavailable` unless the server answers."""
        ...

    async def close(self) -> None:
        """Close the connections."""
        ...
