"""Tools from MCP servers, registered into the same registry (the official ``mcp`` SDK).

:class:`McpServers` is an async context manager: entering it connects to every configured
server (concurrently), lists its tools and registers each as ``<server>__<tool>`` with the
server's JSON schema; leaving it unregisters them and closes every session and process. The
list is read again when the server says it changed (``notifications/tools/list_changed``) and
at each new session (a restarted server may have other tools).

Each connection runs in a task of its own, which enters the SDK's transport and session and
stays inside them until told to stop. The SDK is built on anyio task groups, which must be left
by the task that entered them; owning them in one task lets the context manager be entered and
left anywhere (an app's lifespan, a worker), and a connect timeout cancel that task cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from spine.platform.errors import ServiceUnavailable
from spine.platform.inputs import storable_json, storable_text
from spine.tools.mcp_config import McpServerConfig
from spine.tools.registry import ToolRegistry
from spine.tools.tool import JsonSchemaArguments, Tool, ToolContext, ToolFailure, ToolHandler

__all__ = ["IDEMPOTENCY_META_KEY", "McpServers", "mcp_tool_name"]

logger = logging.getLogger(__name__)

IDEMPOTENCY_META_KEY = "io.spine/idempotency-key"
"""The ``_meta`` key that carries a call's idempotency key to the MCP server."""

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_PAGES = 100
_STOP_TIMEOUT = 10.0
# A server that went away is connected again after 0.5 s, doubling to 30 s while it stays away.
_RECONNECT_INITIAL = 0.5
_RECONNECT_MAX = 30.0
# How often an idle session is pinged, and how long the answer may take.
_PING_SECONDS = 5.0
_PING_TIMEOUT = 10.0
_CLOSED = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)


def mcp_tool_name(server: str, tool: str) -> str:
    """Return the registry name of a server's tool: ``<server>__<tool>``, at most 64 chars."""
    name = _NOT_IN_NAME.sub("_", f"{server}__{tool}")
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:8]
    return f"{name[:55]}_{digest}"


@dataclass(slots=True)
class _Connection:
    config: McpServerConfig
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Future[list[mcp_types.Tool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a call found the session closed, and by :meth:`close` to wake the task."""
    tools_changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server says its tool list changed: the session's task reads it again."""
    on_tools: Callable[[_Connection, list[mcp_types.Tool]], None] | None = None
    """Registers the tools of each session (replacing the last session's), and again when the
    server's list changes."""
    session: ClientSession | None = None
    task: asyncio.Task[None] | None = None
    tool_names: list[str] = field(default_factory=list)

    async def run(self) -> None:
        """Connect, and connect again (with backoff) whenever the server goes away, until told
        to stop. A first connection that fails ends it for a ``required`` server (start-up
        fails); any other is tried again, and its tools join the registry when it answers."""
        delay = _RECONNECT_INITIAL
        while not self.stop.is_set():
            began = asyncio.get_running_loop().time()
            try:
                await self._serve()
            except Exception as exc:
                if not self.ready.done():
                    self.ready.set_exception(exc)
                    if self.config.required:
                        return
                else:
                    logger.warning(
                        "MCP server %s: %s; connecting again in %g s",
                        self.config.name, _describe(exc), delay,
                    )  # fmt: skip
            except BaseException:  # cancelled
                if not self.ready.done():
                    self.ready.set_exception(ServiceUnavailable("cancelled"))
                raise
            finally:
                self.session = None
            if asyncio.get_running_loop().time() - began > _RECONNECT_MAX:
                delay = _RECONNECT_INITIAL  # it stayed up a while: not a crash loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            delay = min(2 * delay, _RECONNECT_MAX)

    async def _serve(self) -> None:
        """One session: open it, then keep it while it answers; raises when it went away."""
        handshake = asyncio.timeout(self.config.connect_timeout)
        try:
            async with (
                handshake,
                _transport(self.config) as (read, write),
                ClientSession(read, write, message_handler=self._on_message) as session,
            ):
                await session.initialize()
                self.tools_changed.clear()
                tools = await _list_tools(session)
                handshake.reschedule(None)
                self.broken.clear()
                self.session = session
                if self.tool_names:
                    logger.info("MCP server %s connected again", self.config.name)
                if self.on_tools is not None:
                    self.on_tools(self, tools)
                if not self.ready.done():
                    self.ready.set_result(tools)
                # A server that died while idle is found by a ping (a stdio server's end is not
                # reported to the session otherwise); a call that found it closed sets `broken`.
                while not self.stop.is_set():
                    await _first_set(self.broken, self.tools_changed, timeout=_PING_SECONDS)
                    if self.stop.is_set():
                        return
                    if self.broken.is_set():
                        raise ServiceUnavailable("the connection closed")
                    if self.tools_changed.is_set():
                        self.tools_changed.clear()
                        tools = await _list_tools(session)
                        if self.on_tools is not None:
                            self.on_tools(self, tools)
                        continue
                    try:
                        await asyncio.wait_for(session.send_ping(), _PING_TIMEOUT)
                    except (MCPError, TimeoutError, *_CLOSED) as exc:
                        raise ServiceUnavailable(f"no answer to a ping ({_describe(exc)})") from exc
        except TimeoutError as exc:
            if handshake.expired():
                raise ServiceUnavailable(
                    f"no answer within {self.config.connect_timeout:g} s"
                ) from exc
            raise

    async def _on_message(self, message: mcp_types.ServerNotification | Exception) -> None:
        # The SDK calls this inline in its reader: the list is read by the session's task.
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.tools_changed.set()

    async def close(self) -> None:
        self.stop.set()
        self.broken.set()  # wakes the session's wait
        if self.task is None:
            return
        if self.session is None:
            self.task.cancel()  # starting or waiting to: nothing to finish, so don't wait for it
        # The SDK's own shutdown is bounded (stdin closed, then SIGTERM, then SIGKILL).
        _, pending = await asyncio.wait({self.task}, timeout=_STOP_TIMEOUT)
        if pending:
            self.task.cancel()
        for outcome in await asyncio.gather(self.task, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.debug("MCP server %s ended with %r", self.config.name, outcome)
        if self.ready.done() and not self.ready.cancelled():
            self.ready.exception()  # retrieved: a failure was reported by __aenter__ already


class McpServers:
    """Connections to MCP servers whose tools are in ``registry`` while the block runs."""

    def __init__(self, configs: Sequence[McpServerConfig], registry: ToolRegistry) -> None:
        self._configs = list(configs)
        self._registry = registry
        self._connections: dict[str, _Connection] = {}
        self.failed: dict[str, str] = {}
        """Servers that could not be reached, with the reason."""

    @property
    def connected(self) -> list[str]:
        """Return the names of the servers connected now."""
        return [name for name, c in self._connections.items() if c.session is not None]

    def tools_of(self, server: str) -> list[str]:
        """Return the registry names of a connected server's tools."""
        connection = self._connections.get(server)
        return sorted(connection.tool_names) if connection else []

    async def __aenter__(self) -> Self:
        connections = [_Connection(config, on_tools=self._register) for config in self._configs]
        for connection in connections:
            connection.task = asyncio.create_task(
                connection.run(), name=f"mcp-{connection.config.name}"
            )
        outcomes = await asyncio.gather(
            *(self._await_ready(c) for c in connections), return_exceptions=True
        )
        required_failure: str | None = None
        for connection, outcome in zip(connections, outcomes, strict=True):
            name = connection.config.name
            if isinstance(outcome, BaseException):
                reason = _describe(outcome)
                self.failed[name] = reason
                if connection.config.required:
                    logger.warning("MCP server %s is not available: %s", name, reason)
                    await connection.close()
                    if required_failure is None:
                        required_failure = f"MCP server {name} is not available: {reason}"
                    continue
                logger.warning(
                    "MCP server %s is not available: %s; its tools join when it answers",
                    name, reason,
                )  # fmt: skip
            self._connections[name] = connection
        if required_failure is not None:
            await self.aclose()
            raise ServiceUnavailable(required_failure)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unregister every tool and close every connection."""
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            for name in connection.tool_names:
                self._registry.unregister(name)
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)

    async def _await_ready(self, connection: _Connection) -> list[mcp_types.Tool]:
        try:
            # Each attempt is bounded by connect_timeout itself; this is the backstop.
            return await asyncio.wait_for(
                asyncio.shield(connection.ready), connection.config.connect_timeout + 5
            )
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"no answer within {connection.config.connect_timeout:g} s"
            ) from exc

    def _register(self, connection: _Connection, tools: list[mcp_types.Tool]) -> None:
        """Make ``tools`` the connection's tools in the registry (at once: no await between)."""
        config = connection.config
        self.failed.pop(config.name, None)
        before = set(connection.tool_names)
        for name in connection.tool_names:
            self._registry.unregister(name)
        connection.tool_names = []
        for remote in tools:
            if config.tools is not None and not any(
                fnmatchcase(remote.name, pattern) for pattern in config.tools
            ):
                continue
            name = mcp_tool_name(config.name, remote.name)
            if name in self._registry:
                logger.warning("MCP tool %s of %s: name %s taken", remote.name, config.name, name)
                continue
            # A server written in JavaScript cuts strings in UTF-16 units: a description may
            # end in half an emoji, which every answer listing the tool would fail to encode.
            try:
                arguments = JsonSchemaArguments(storable_json(remote.input_schema))
            except ValueError as exc:
                logger.warning("MCP tool %s of %s skipped: %s", remote.name, config.name, exc)
                continue
            self._registry.register(
                Tool(
                    name=name,
                    description=storable_text(
                        remote.description or f"{remote.name} from {config.name}"
                    )[:1024],
                    arguments=arguments,
                    handler=_caller(connection, remote.name),
                    timeout=config.timeout + 1.0,
                    effect=config.effect,
                    needs_approval=config.needs_approval,
                    source=f"mcp:{config.name}",
                )
            )
            connection.tool_names.append(name)
        now = set(connection.tool_names)
        if not before:
            logger.info("MCP server %s: %d tools registered", config.name, len(now))
        elif now != before:
            logger.info(
                "MCP server %s: its tools changed (%d now; added %s, removed %s)",
                config.name, len(now), sorted(now - before) or "none", sorted(before - now) or "none",
            )  # fmt: skip


def _caller(connection: _Connection, remote_name: str) -> ToolHandler[dict[str, Any]]:
    async def call(args: dict[str, Any], ctx: ToolContext) -> str:
        session = connection.session
        server = connection.config.name
        if session is None:
            raise ToolFailure(f"the MCP server {server} is not connected", retryable=True)
        meta: Any = {IDEMPOTENCY_META_KEY: ctx.idempotency_key} if ctx.idempotency_key else None
        try:
            result = await session.call_tool(
                remote_name, args, read_timeout_seconds=connection.config.timeout, meta=meta
            )
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                connection.broken.set()  # the connection's task connects again
                raise ToolFailure(
                    f"the MCP server {server} closed the connection", retryable=True
                ) from exc
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolFailure(
                    f"{server}: {remote_name} did not answer within "
                    f"{connection.config.timeout:g} s",
                    retryable=True,
                ) from exc
            raise ToolFailure(f"{server}: {exc.message}") from exc
        except _CLOSED as exc:
            connection.broken.set()
            raise ToolFailure(
                f"the MCP server {server} closed the connection", retryable=True
            ) from exc
        text = _render(result)
        if result.is_error:
            raise ToolFailure(text or f"{remote_name} reported an error")
        return text

    return call


def _render(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data)} base64 characters]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri}: {resource.mime_type or 'binary'}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


async def _first_set(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


@contextlib.asynccontextmanager
async def _transport(config: McpServerConfig) -> AsyncIterator[tuple[Any, Any]]:
    if config.transport == "stdio":
        assert config.command is not None
        parameters = StdioServerParameters(
            command=config.command,
            args=config.args,
            env={k: v.get_secret_value() for k, v in config.env.items()} or None,
            cwd=config.cwd,
        )
        async with stdio_client(parameters) as streams:
            yield streams
        return
    assert config.url is not None
    headers = {k: v.get_secret_value() for k, v in config.headers.items()}
    async with (
        httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(config.connect_timeout, read=max(config.timeout, 300.0)),
        ) as client,
        streamable_http_client(config.url, http_client=client) as streams,
    ):
        yield streams


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
