"""Neo4j over Bolt: the :class:`~spine.graph.store.GraphStore` backend on the ``neo4j`` driver.

One long-lived async driver per process. Reads run in READ transactions (Neo4j enforces them)
with the query timeout sent to the server (the wait here ends a moment later, so the server's
answer that it stopped the query comes back); writes run in one write transaction; both are
managed transactions, which the driver retries on a dropped connection. Uniqueness of
``(tenant, uid)`` per label is a constraint. Records come back as plain values
(:mod:`spine.graph.values`); Neo4j's temporal values become :mod:`datetime` ones, durations
their ISO 8601 text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncManagedTransaction, unit_of_work
from neo4j import graph as neo4j_graph
from neo4j.exceptions import DriverError, Neo4jError, SessionExpired
from neo4j.exceptions import ServiceUnavailable as Neo4jUnavailable
from neo4j.time import Date, DateTime, Duration, Time

from spine.graph.store import (
    WAIT_GRACE,
    Backend,
    GraphError,
    QueryLimitExceeded,
    ReadResult,
    Record,
    Statement,
)
from spine.graph.values import Node, Path, Relationship
from spine.platform.errors import ServiceUnavailable, SpineError

__all__ = ["Neo4jStore"]

logger = logging.getLogger(__name__)

_UNAVAILABLE = (Neo4jUnavailable, SessionExpired, OSError, ConnectionError)
# Values the driver cannot pack (a type it does not know, an integer beyond 64 bits).
_UNPACKABLE = (TypeError, ValueError, OverflowError)
# Codes of a query stopped at the time or memory a transaction may use (the query's own cost).
_LIMITS = {
    "Neo.ClientError.Transaction.TransactionTimedOut": "time",
    "Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration": "time",
    "Neo.TransientError.General.MemoryPoolOutOfMemoryError": "memory",
    "Neo.TransientError.General.TransactionMemoryLimit": "memory",
}


class Neo4jStore:
    """The driver, the database it uses, and translated errors."""

    def __init__(self, driver: AsyncDriver, *, database: str | None = None) -> None:
        self.driver = driver
        self._database = database

    @classmethod
    def connect(
        cls, uri: str, *, user: str | None, password: str | None, database: str | None = None
    ) -> Neo4jStore:
        """Open (not connect) a driver for ``uri``; credentials when both are given."""
        auth = (user, password) if user and password is not None else None
        driver = AsyncGraphDatabase.driver(uri, auth=auth, connection_timeout=5.0)
        return cls(driver, database=database)

    @property
    def backend(self) -> Backend:
        """Neo4j."""
        return "neo4j"

    async def read(
        self,
        query: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> ReadResult:
        """Run a read in a READ transaction (see :class:`~spine.graph.store.GraphStore`)."""

        async def work(tx: AsyncManagedTransaction) -> ReadResult:
            result = await tx.run(query, dict(params))
            records: list[Record] = []
            truncated = False
            async for record in result:
                if max_rows is not None and len(records) >= max_rows:
                    truncated = True
                    break
                records.append(dict(zip(record.keys(), map(_plain, record), strict=True)))
            summary = await result.consume()
            return ReadResult(
                records=records, truncated=truncated, wrote=summary.counters.contains_updates
            )

        wait = None
        if timeout is not None:
            work = unit_of_work(timeout=timeout)(work)
            wait = timeout + WAIT_GRACE
        try:
            async with asyncio.timeout(wait):
                async with self.driver.session(**self._session_options()) as session:
                    return await session.execute_read(work)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and wait is not None:
                raise ServiceUnavailable(
                    f"the graph server did not answer within {wait:g} s"
                ) from exc
            translated = _translated(exc, "the query")
            if translated is None:
                raise
            raise translated from exc

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run statements in order in one write transaction."""
        if not statements:
            return

        async def work(tx: AsyncManagedTransaction) -> None:
            for text, params in statements:
                result = await tx.run(text, dict(params))
                await result.consume()

        try:
            async with self.driver.session(**self._session_options()) as session:
                await session.execute_write(work)
        except Exception as exc:
            translated = _translated(exc, "a write")
            if translated is None:
                raise
            raise translated from exc

    async def ensure_schema(self, labels: Iterable[str]) -> None:
        """Create a uniqueness constraint on ``(tenant, uid)`` per label."""
        names = sorted(set(labels))
        for label in names:
            await self.write(
                [
                    (
                        f"CREATE CONSTRAINT spine_{label.lower()}_uid IF NOT EXISTS "
                        f"FOR (n:`{label}`) REQUIRE (n.tenant, n.uid) IS UNIQUE",
                        {},
                    )
                ]
            )
        logger.info("graph schema ready for %d labels (neo4j)", len(names))

    async def ping(self, *, timeout: float) -> None:
        """Run ``RETURN 1``."""
        await self.read("RETURN 1 AS one", {}, timeout=timeout)

    async def close(self) -> None:
        """Close the driver."""
        await self.driver.close()

    def _session_options(self) -> dict[str, Any]:
        return {"database": self._database} if self._database else {}


def _translated(exc: Exception, what: str) -> SpineError | None:
    """Map a driver error to the store's errors (``None``: not one of the driver's)."""
    if isinstance(exc, _UNAVAILABLE):
        return ServiceUnavailable(f"the graph server does not answer: {exc!r}")
    if isinstance(exc, Neo4jError):
        message = exc.message or exc.code or repr(exc)
        limit = _LIMITS.get(exc.code or "")
        if limit is not None:
            return QueryLimitExceeded(
                f"the graph query ran past its {limit} limit: {message}", limit=limit
            )
        if exc.is_retryable():
            return ServiceUnavailable(f"the graph server is busy: {message}")
        return GraphError(f"the graph server refused {what}: {message}")
    if isinstance(exc, DriverError):
        return ServiceUnavailable(f"the graph driver failed: {exc!r}")
    if isinstance(exc, _UNPACKABLE):
        return GraphError(f"a parameter cannot be sent to the graph server: {exc}")
    return None


def _plain(value: Any) -> Any:
    """Turn the driver's graph and temporal values into plain ones, recursively."""
    if isinstance(value, neo4j_graph.Node):
        return _node(value)
    if isinstance(value, neo4j_graph.Relationship):
        return _relationship(value)
    if isinstance(value, neo4j_graph.Path):
        return Path(
            nodes=[_node(n) for n in value.nodes],
            relationships=[_relationship(r) for r in value.relationships],
        )
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, DateTime | Date | Time):
        return value.to_native()
    if isinstance(value, Duration):
        return value.iso_format()
    return value


def _node(node: neo4j_graph.Node) -> Node:
    return Node(
        element_id=node.element_id,
        labels=frozenset(node.labels),
        properties={k: _plain(v) for k, v in node.items()},
    )


def _relationship(rel: neo4j_graph.Relationship) -> Relationship:
    start, end = rel.start_node, rel.end_node
    return Relationship(
        element_id=rel.element_id,
        type=rel.type,
        start=start.element_id if start is not None else "",
        end=end.element_id if end is not None else "",
        properties={k: _plain(v) for k, v in rel.items()},
    )
