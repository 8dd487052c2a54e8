"""The graph store: one long-lived driver, and the few things Neo4j and FalkorDB do differently.

Everything goes through managed transactions (``execute_read``/``execute_write``), which retry
on a dropped connection: FalkorDB 4.16 leaves a stale handler behind when a Bolt connection
closes, so a fresh connection sometimes gets no answer and a second one does.

What differs, kept here:

- Schema. Neo4j gets a uniqueness constraint on ``(tenant, uid)`` per label; FalkorDB rejects
  ``CREATE CONSTRAINT`` over Bolt, so it gets range indexes on ``uid`` and ``tenant``.
- Sessions. FalkorDB's Bolt server takes the graph name from the *key* of the first entry of
  a request's extra map: a session with ``database=...`` or READ access mode reads and writes
  a graph named ``db`` or ``mode``. So on FalkorDB no session names a database or an access
  mode; managed transactions reach the default graph. It does not enforce READ either (see
  :mod:`spine.graph.cypher_guard`).
- Shortest paths. ``shortestPath`` fails over FalkorDB's Bolt; it gets an iterative deepening
  of fixed-length patterns instead (:mod:`spine.graph.explore`).
- Request size. FalkorDB 4.16.3's Bolt server crashes (SIGSEGV, the whole server) on a request
  message over about 4 KiB (measured: a 4,070-character parameter passes, 4,090 kills it;
  answers of any size are fine). So on FalkorDB a write's ``UNWIND $rows`` is cut into
  requests under :data:`FALKORDB_MAX_REQUEST` bytes, and a read or a single row that cannot
  fit is refused here, before it reaches the server.
- Parameters. FalkorDB 4.16.3's Bolt server splices parameters into the query text as
  literals without escaping them: a string parameter holding ``'`` ends the literal, and the
  rest runs as Cypher (measured: ``$x`` = ``"a' RETURN 7 AS x //"`` answered 7), and map keys
  go in unquoted. Every parameter sent to FalkorDB is therefore encoded here: backslashes
  and quotes escaped the way its literal parser undoes (``\\``, ``\'``), NUL (which it
  truncates at) replaced, and any map key that is not an identifier refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from neo4j import AsyncDriver, AsyncManagedTransaction, Record, unit_of_work
from neo4j.exceptions import (
    DriverError,
    Neo4jError,
    SessionExpired,
)
from neo4j.exceptions import (
    ServiceUnavailable as Neo4jUnavailable,
)

from spine.platform.errors import ServiceUnavailable, SpineError

__all__ = ["Backend", "GraphError", "GraphStore", "ReadResult", "Statement"]

logger = logging.getLogger(__name__)

Backend = Literal["neo4j", "falkordb"]
Statement = tuple[str, Mapping[str, Any]]

_UNAVAILABLE = (Neo4jUnavailable, SessionExpired, OSError, ConnectionError)
FALKORDB_MAX_REQUEST = 3500
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""Bytes of query text plus packed parameters sent to FalkorDB in one request (see above)."""


class GraphError(SpineError):
    """The graph server refused a statement (a bad query, a value it cannot store)."""

    status_code = 400
    error_type = "graph_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    """Records of a read, whether the row cap cut it short, and whether it wrote anything."""

    records: list[Record]
    truncated: bool
    wrote: bool


class GraphStore:
    """The driver, the backend behind it, and translated errors."""

    def __init__(
        self,
        driver: AsyncDriver,
        *,
        backend: Backend | Literal["auto"] = "auto",
        database: str | None = None,
    ) -> None:
        self.driver = driver
        self._backend: Backend | None = None if backend == "auto" else backend
        self._database = database
        self._detecting = asyncio.Lock()

    async def backend(self) -> Backend:
        """Return the server's kind; ``auto`` asks it once (FalkorDB calls itself Neo4j)."""
        if self._backend is not None:
            return self._backend
        async with self._detecting:
            if self._backend is None:
                try:
                    await self._run_read("CALL dbms.components() YIELD name RETURN name", {})
                    self._backend = "neo4j"
                except GraphError:
                    self._backend = "falkordb"
                logger.info("the graph server is %s", self._backend)
        return self._backend

    async def read(
        self,
        query: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> ReadResult:
        """Run a read in a READ transaction, keeping at most ``max_rows`` records.

        ``timeout`` bounds the transaction on the server (Neo4j) and the wait here (both).

        Raises:
            GraphError: The server refused the query.
            ServiceUnavailable: The server did not answer (or not within ``timeout``).
        """
        if await self.backend() == "falkordb":
            params = falkordb_params(params)
            size = len(query.encode()) + packed_size(params)
            if size > FALKORDB_MAX_REQUEST:
                raise GraphError(
                    f"the query and its parameters take {size} bytes; FalkorDB's Bolt server "
                    f"takes at most {FALKORDB_MAX_REQUEST}",
                    field="query",
                )
        try:
            if timeout is None:
                return await self._run_read(query, params, timeout=None, max_rows=max_rows)
            async with asyncio.timeout(timeout):
                return await self._run_read(query, params, timeout=timeout, max_rows=max_rows)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"the graph query did not finish within {timeout:g} s", field="timeout"
            ) from exc

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run statements in order in one write transaction.

        On FalkorDB each statement commits by itself; callers write idempotently, so a
        retry after a failure part-way gives the same graph.
        """
        if not statements:
            return

        async def work(tx: AsyncManagedTransaction) -> None:
            for text, params in statements:
                result = await tx.run(text, dict(params))
                await result.consume()

        if await self.backend() == "falkordb":
            statements = _cut_for_falkordb(
                [(text, falkordb_params(params)) for text, params in statements]
            )
        try:
            async with self.driver.session(**self._session_options()) as session:
                await session.execute_write(work)
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"the graph server does not answer: {exc!r}") from exc
        except Neo4jError as exc:
            if exc.is_retryable():
                raise ServiceUnavailable(f"the graph server is busy: {_message(exc)}") from exc
            raise GraphError(f"the graph server refused a write: {_message(exc)}") from exc
        except DriverError as exc:
            raise ServiceUnavailable(f"the graph driver failed: {exc!r}") from exc

    async def ensure_schema(self, labels: Iterable[str]) -> None:
        """Create what node lookups by ``(tenant, uid)`` need, per label; safe to repeat."""
        backend = await self.backend()
        for label in sorted(set(labels)):
            statements = (
                [
                    f"CREATE CONSTRAINT spine_{label.lower()}_uid IF NOT EXISTS "
                    f"FOR (n:`{label}`) REQUIRE (n.tenant, n.uid) IS UNIQUE"
                ]
                if backend == "neo4j"
                else [
                    f"CREATE INDEX FOR (n:`{label}`) ON (n.uid)",
                    f"CREATE INDEX FOR (n:`{label}`) ON (n.tenant)",
                ]
            )
            for statement in statements:
                try:
                    await self.write([(statement, {})])
                except GraphError as exc:
                    # FalkorDB answers an opaque error when the index exists already.
                    logger.debug("schema statement %r: %s", statement, exc.message)
        logger.info("graph schema ready for %d labels (%s)", len(set(labels)), backend)

    async def close(self) -> None:
        """Close the driver."""
        await self.driver.close()

    async def _run_read(
        self,
        query: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> ReadResult:
        async def work(tx: AsyncManagedTransaction) -> ReadResult:
            result = await tx.run(query, dict(params))
            records: list[Record] = []
            truncated = False
            async for record in result:
                if max_rows is not None and len(records) >= max_rows:
                    truncated = True
                    break
                records.append(record)
            summary = await result.consume()
            return ReadResult(
                records=records, truncated=truncated, wrote=summary.counters.contains_updates
            )

        if timeout is not None:
            # The server ends the transaction after ``timeout`` (Neo4j; FalkorDB ignores it).
            work = unit_of_work(timeout=timeout)(work)
        try:
            async with self.driver.session(**self._session_options()) as session:
                return await session.execute_read(work)
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"the graph server does not answer: {exc!r}") from exc
        except Neo4jError as exc:
            if exc.is_retryable():
                raise ServiceUnavailable(f"the graph server is busy: {_message(exc)}") from exc
            raise GraphError(f"the graph server refused the query: {_message(exc)}") from exc
        except DriverError as exc:
            raise ServiceUnavailable(f"the graph driver failed: {exc!r}") from exc

    def _session_options(self) -> dict[str, Any]:
        if self._backend == "neo4j" and self._database:
            return {"database": self._database}
        return {}


def falkordb_params(value: Any, *, where: str = "params") -> Any:
    """Encode parameters for FalkorDB's Bolt server, which splices them in as literals."""
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise GraphError(
                    f"{where}: the key {str(key)[:60]!r} must be an identifier (letters, digits "
                    "and _) for this graph server",
                    field=where,
                )
            encoded[key] = falkordb_params(item, where=f"{where}.{key}")
        return encoded
    if isinstance(value, list | tuple):
        return [falkordb_params(item, where=where) for item in value]
    return value


def packed_size(value: Any) -> int:
    """Return an upper bound of the PackStream size of a value (strings, numbers, lists, maps)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 9
    if isinstance(value, str):
        return len(value.encode()) + 5
    if isinstance(value, Mapping):
        return 5 + sum(packed_size(str(k)) + packed_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 5 + sum(packed_size(v) for v in value)
    return len(str(value).encode()) + 9


def _cut_for_falkordb(statements: Sequence[Statement]) -> list[Statement]:
    """Split each statement's ``$rows`` so every request stays under the size FalkorDB takes."""
    cut: list[Statement] = []
    for text, params in statements:
        fixed = len(text.encode()) + packed_size({k: v for k, v in params.items() if k != "rows"})
        rows = params.get("rows")
        if fixed + packed_size(rows) <= FALKORDB_MAX_REQUEST or not isinstance(rows, list):
            if fixed + packed_size(rows) > FALKORDB_MAX_REQUEST:
                raise GraphError(f"a statement of {fixed} bytes is too large for FalkorDB")
            cut.append((text, params))
            continue
        budget = FALKORDB_MAX_REQUEST - fixed - 5
        chunk: list[Any] = []
        used = 0
        for row in rows:
            size = packed_size(row)
            if size > budget:
                raise GraphError(
                    f"an event's values take {size} bytes, more than the {budget} that fit in "
                    "one request to FalkorDB's Bolt server; shorten the mapped properties"
                )
            if used + size > budget:
                cut.append((text, {**params, "rows": chunk}))
                chunk, used = [], 0
            chunk.append(row)
            used += size
        if chunk:
            cut.append((text, {**params, "rows": chunk}))
    return cut


def _message(exc: Neo4jError) -> str:
    return exc.message or exc.code or repr(exc)
