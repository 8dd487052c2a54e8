"""FalkorDB over its Redis protocol: the :class:`~spine.graph.store.GraphStore` backend on the
official ``falkordb`` client.

One ``redis.asyncio`` connection pool per process (with hiredis), with the password of the
URL, on one graph key (:data:`GRAPH`, the name FalkorDB's Bolt server used, so a graph written
before is found). The pool is built here rather than by ``falkordb.asyncio.FalkorDB``, whose
constructor opens a blocking connection to ask ``INFO`` (is the server a cluster?) and so
fails, and holds up the event loop, whenever the server is down at start-up.

- Reads are ``GRAPH.RO_QUERY``: the server refuses any write in them. ``timeout`` goes to the
  server, which stops the query between records; the wait here ends
  :data:`~spine.graph.store.WAIT_GRACE` later, so the server's answer is what comes back. The
  embedded server also caps the memory of one query
  (:class:`~spine.platform.embedded.servers.FalkorServer`). A graph not written yet reads
  empty.
- Writes are ``GRAPH.QUERY``, one per statement, in order; each commits by itself (callers
  write idempotently). One the server stops at its default time limit is undone and, like one
  that outlasts :data:`WRITE_TIMEOUT` here, is :class:`~spine.platform.errors.ServiceUnavailable`. The embedded server runs with ``appendfsync always``, so a write is in
  its append-only file, fsynced, before it is answered.
- Parameters: checked, then written as the client writes them
  (:mod:`spine.graph.falkordb_params`), which carries any string exactly.
- Results: the compact reply is read straight into plain values
  (:mod:`spine.graph.falkordb_results`), with the client's schema of the graph. Floats are
  stored exactly but answered with 15 significant digits (FalkorDB's reply format).
- Schema: range indexes on ``uid`` and ``tenant`` per label (writes MERGE on both; FalkorDB runs
  writes one at a time, so MERGE makes no duplicates).
- Errors: a refusal is a :class:`~spine.graph.store.GraphError` with the server's message; a
  query the server stopped at its time or memory limit is
  :class:`~spine.graph.store.QueryLimitExceeded`; a server that is down, loading, out of memory
  (Redis ``maxmemory``) or failing to persist, a wrong password, or no answer even after the
  grace, is :class:`~spine.platform.errors.ServiceUnavailable`. A pooled connection broken by a
  server restart is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from falkordb.asyncio.graph import AsyncGraph
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from spine.graph.falkordb_params import cypher_prefix
from spine.graph.falkordb_results import CompactResult, read_compact
from spine.graph.store import (
    WAIT_GRACE,
    Backend,
    GraphError,
    QueryLimitExceeded,
    ReadResult,
    Record,
    Statement,
)
from spine.platform.errors import ServiceUnavailable, SpineError

__all__ = ["GRAPH", "FalkorStore"]

logger = logging.getLogger(__name__)

GRAPH = "falkordb"
WRITE_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 5.0
_EMPTY_GRAPH = "empty key"  # "Invalid graph operation on empty key": no graph written yet
# Replies that mean "not now" rather than "not this statement".
_BUSY = ("MISCONF", "OOM", "LOADING", "BUSY", "READONLY", "Max pending")
# Replies that mean "this query asked for more than one query may have".
_LIMITS = {"Query timed out": "time", "Query's mem consumption exceeded capacity": "memory"}
_MESSAGE_LIMIT = 300  # the server may quote the query, parameters included
_CHANGES = ("Nodes created", "Nodes deleted", "Relationships created", "Relationships deleted",
            "Properties set", "Properties removed", "Labels added", "Labels removed",
            "Indices created", "Indices deleted")  # fmt: skip


class FalkorStore:
    """A connection pool to FalkorDB, one graph in it, and translated errors."""

    def __init__(
        self, client: redis.Redis, *, graph: str = GRAPH, write_timeout: float = WRITE_TIMEOUT
    ) -> None:
        self._client = client
        self._name = graph
        # The client's graph: it keeps the schema (label, type and key names by number).
        self._graph = AsyncGraph(client, graph)
        self._write_timeout = write_timeout

    @classmethod
    def connect(cls, url: str, *, graph: str = GRAPH) -> FalkorStore:
        """Open (not connect) a pool for ``url`` (``redis://``, ``rediss://`` or ``falkor://``)."""
        for alias, scheme in (("falkor://", "redis://"), ("falkors://", "rediss://")):
            if url.startswith(alias):
                url = scheme + url.removeprefix(alias)
        client = redis.Redis.from_url(
            url,
            decode_responses=True,  # names and strings as text, as the schema expects
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, graph=graph)

    @property
    def backend(self) -> Backend:
        """FalkorDB."""
        return "falkordb"

    async def read(
        self,
        query: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> ReadResult:
        """Run ``GRAPH.RO_QUERY`` (see :class:`~spine.graph.store.GraphStore`)."""
        text = cypher_prefix(params) + query
        server_ms = None if timeout is None else max(1, round(timeout * 1000))
        wait = None if timeout is None else timeout + WAIT_GRACE
        try:
            async with asyncio.timeout(wait):
                result = await self._run("GRAPH.RO_QUERY", text, timeout_ms=server_ms)
        except ResponseError as exc:
            if _EMPTY_GRAPH in str(exc):
                return ReadResult(records=[], truncated=False, wrote=False)
            if str(exc).startswith("Query timed out") and timeout is not None:
                raise QueryLimitExceeded(
                    f"the graph query ran past its time limit ({timeout:g} s)", limit="time"
                ) from exc
            raise _translated(exc, "the query") from exc
        except TimeoutError as exc:
            if timeout is None:
                raise _translated(exc, "the query") from exc
            raise ServiceUnavailable(f"the graph server did not answer within {wait:g} s") from exc
        except (RedisError, OSError) as exc:
            raise _translated(exc, "the query") from exc
        rows = result.rows
        truncated = max_rows is not None and len(rows) > max_rows
        if truncated:
            rows = rows[:max_rows]
        columns = result.columns
        records: list[Record] = [dict(zip(columns, row, strict=True)) for row in rows]
        wrote = any(result.counted(name) for name in _CHANGES)
        return ReadResult(records=records, truncated=truncated, wrote=wrote)

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run each statement with ``GRAPH.QUERY``, in order."""
        texts = [cypher_prefix(params) + text for text, params in statements]
        try:
            async with asyncio.timeout(self._write_timeout):
                for text in texts:
                    await self._run("GRAPH.QUERY", text)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"the graph write did not finish within {self._write_timeout:g} s"
            ) from exc
        except ResponseError as exc:
            # A write stopped at the server's default time limit is undone: try it again later,
            # as when the wait here ends first.
            if str(exc).startswith("Query timed out"):
                raise ServiceUnavailable(f"the graph write did not finish: {exc}") from exc
            raise _translated(exc, "a write") from exc
        except (RedisError, OSError) as exc:
            raise _translated(exc, "a write") from exc

    async def ensure_schema(self, labels: Iterable[str]) -> None:
        """Create range indexes on ``uid`` and ``tenant`` per label (once each)."""
        names = sorted(set(labels))
        indexed = await self._indexed()
        for label in names:
            for prop in ("uid", "tenant"):
                if (label, prop) not in indexed:
                    await self.write([(f"CREATE INDEX FOR (n:`{label}`) ON (n.{prop})", {})])
        logger.info("graph schema ready for %d labels (falkordb)", len(names))

    async def ping(self, *, timeout: float) -> None:
        """Send ``PING`` (with the password of the URL)."""
        try:
            async with asyncio.timeout(timeout):
                await self._client.ping()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"the graph server did not answer within {timeout:g} s"
            ) from exc
        except (RedisError, OSError) as exc:
            raise _translated(exc, "PING") from exc

    async def close(self) -> None:
        """Close the pool."""
        await self._client.aclose()

    async def _run(
        self, command: str, text: str, *, timeout_ms: int | None = None
    ) -> CompactResult:
        args: list[Any] = [command, self._name, text, "--compact"]
        if timeout_ms is not None:
            args += ["timeout", timeout_ms]
        reply = await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        return await read_compact(reply, self._graph.schema)

    async def _indexed(self) -> set[tuple[str, str]]:
        result = await self.read("CALL db.indexes() YIELD label, properties", {})
        return {
            (str(record["label"]), str(prop))
            for record in result.records
            for prop in record["properties"] or []
        }


def _translated(exc: Exception, what: str) -> SpineError:
    """Map a client or server error to the store's errors."""
    message = str(exc)[:_MESSAGE_LIMIT]
    if isinstance(exc, AuthenticationError):
        return ServiceUnavailable(
            f"the graph server refused the credentials (check GENAI_FALKORDB_URL): {message}"
        )
    if isinstance(exc, ResponseError):
        for reply, limit in _LIMITS.items():
            if message.startswith(reply):
                return QueryLimitExceeded(
                    f"the graph query ran past its {limit} limit: {message}", limit=limit
                )
        if message.startswith(_BUSY) or message.startswith("NOAUTH"):
            return ServiceUnavailable(f"the graph server cannot run {what} now: {message}")
        return GraphError(f"the graph server refused {what}: {message}")
    return ServiceUnavailable(f"the graph server does not answer: {exc!r}"[:_MESSAGE_LIMIT])
