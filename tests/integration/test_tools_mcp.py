"""Tools from MCP servers started by the test: stdio and streamable HTTP, through the registry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
import psutil
import pydantic_core
import pytest

from spine.platform.errors import ServiceUnavailable
from spine.tools import (
    InMemoryToolRecorder,
    McpServerConfig,
    ToolContext,
    ToolRegistry,
    ToolSettings,
    mcp_servers,
)
from spine.tools.mcp_servers import McpServers, _Connection, mcp_tool_name

pytestmark = pytest.mark.integration

SERVER = Path(__file__).resolve().parents[1] / "support" / "mcp_echo_server.py"
CTX = ToolContext(tenant="acme", agent="researcher", task_id="task-7", step=2, call_index=1)


def stdio_config(**overrides: Any) -> McpServerConfig:
    fields: dict[str, Any] = {
        "name": "echo",
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVER)],
        "timeout": 5,
        "connect_timeout": 30,
    }
    return McpServerConfig.model_validate(fields | overrides)


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def gone_soon(before: set[int], within: float = 5.0) -> set[int]:
    """Return the child processes still alive beyond ``before`` after up to ``within`` s.

    A killed server is gone as soon as the OS reaps it; a loaded CI machine takes longer than
    a fixed sleep, and a leaked one is still there after the whole wait.
    """
    deadline = asyncio.get_running_loop().time() + within
    while (extra := _new_since(before)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return extra


def _new_since(before: set[int]) -> set[int]:
    """Descendants not there before, leaving out what older ones forked since: the test
    databases' servers are children of this process too, and a PostgreSQL backend or
    autovacuum worker starting meanwhile is not a server this test leaked."""
    new = set()
    for process in psutil.Process().children(recursive=True):
        try:
            ancestors = {parent.pid for parent in process.parents()}
        except psutil.NoSuchProcess:
            continue
        if process.pid not in before and not ancestors & before:
            new.add(process.pid)
    return new


async def test_a_stdio_servers_tools_are_registered_called_and_closed() -> None:
    registry = ToolRegistry(recorder=InMemoryToolRecorder())
    before = children()
    async with McpServers([stdio_config()], registry) as servers:
        assert servers.connected == ["echo"]
        assert servers.failed == {}
        names = registry.names()
        assert names == [
            "echo__add",
            "echo__echo",
            "echo__fail",
            "echo__grow",
            "echo__headers",
            "echo__idempotency_key",
            "echo__slow",
        ]
        tool = registry.get("echo__add")
        assert tool is not None
        assert tool.source == "mcp:echo"
        assert tool.effect == "external"
        assert tool.description == "Add two integers."
        params = tool.openai_schema()["function"]["parameters"]
        assert params["properties"]["a"]["type"] == "integer"
        assert sorted(params["required"]) == ["a", "b"]
        assert len(children() - before) >= 1  # the server process

        added = await registry.call("echo__add", '{"a": 2, "b": 40}', CTX)
        assert added.ok, added.content
        assert added.content == "42"

        echoed = await registry.call("echo__echo", {"text": "héllo"}, CTX)
        assert echoed.content == "héllo"

        invalid = await registry.call("echo__add", {"a": "two"}, CTX)
        assert invalid.error is not None
        assert invalid.error.type == "invalid_arguments"
        assert {p["field"] for p in invalid.error.problems} == {"a", "(arguments)"}

        failed = await registry.call("echo__fail", {"message": "no luck"}, CTX)
        assert failed.error is not None
        assert failed.error.type == "tool_error"
        assert "no luck" in failed.error.message

        key = await registry.call("echo__idempotency_key", {}, CTX)
        assert key.content == "task-7.2.1"

        together = await asyncio.gather(
            *(registry.call("echo__add", {"a": i, "b": i}, CTX) for i in range(10))
        )
        assert [r.content for r in together] == [str(2 * i) for i in range(10)]

    assert len(registry) == 0
    assert await gone_soon(before) == set()  # the server process is gone


async def test_a_hanging_mcp_tool_times_out_and_the_session_stays_usable() -> None:
    registry = ToolRegistry()
    async with McpServers([stdio_config(timeout=0.5)], registry):
        slow = await registry.call("echo__slow", {"seconds": 30}, CTX)
        assert slow.error is not None
        assert slow.error.retryable
        assert "echo: slow did not answer within 0.5 s" in slow.error.message
        again = await registry.call("echo__echo", {"text": "still here"}, CTX)
        assert again.content == "still here"


@contextlib.asynccontextmanager
async def watched_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[McpServers, ToolRegistry, set[int]]]:
    """The echo server over stdio, its idle session pinged every 0.2 s: the servers, the
    registry, and the child processes there were before it (its process is gone after)."""
    monkeypatch.setattr(mcp_servers, "_PING_SECONDS", 0.2)
    registry = ToolRegistry()
    before = children()
    async with McpServers([stdio_config()], registry) as servers:
        yield servers, registry, before
    assert await gone_soon(before) == set()


def kill_servers(before: set[int]) -> None:
    """SIGKILL the MCP server processes started since ``before``."""
    for pid in _new_since(before):
        psutil.Process(pid).kill()


async def test_a_server_that_dies_is_connected_again_and_its_tools_work_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It once stayed listed as connected and every call failed, not retryable, until a restart.
    async with watched_echo(monkeypatch) as (servers, registry, before):
        assert (await registry.call("echo__echo", {"text": "a"}, CTX)).content == "a"
        kill_servers(before)  # died mid-use: the next call finds it closed
        await gone_soon(before)
        lost = await registry.call("echo__echo", {"text": "b"}, CTX)
        assert lost.error is not None and lost.error.retryable, lost.error
        # Let go, then connected again (a new child: any new descendant of this process, a
        # PostgreSQL backend of another fixture, say, would not tell the new server).
        await until(lambda: servers.connected == [])
        await until(lambda: servers.connected == ["echo"])
        assert (await registry.call("echo__add", {"a": 1, "b": 2}, CTX)).content == "3"

        kill_servers(before)  # died while idle: a ping finds it
        await until(lambda: servers.connected == [])
        await until(lambda: servers.connected == ["echo"])
        assert (await registry.call("echo__echo", {"text": "c"}, CTX)).content == "c"


async def test_a_tool_the_server_adds_joins_and_a_restarted_servers_list_replaces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The list was read once, at the first session: tools added later never joined, and a
    # server restarted with other tools kept the old list until our restart.
    async with watched_echo(monkeypatch) as (servers, registry, before):
        grown = await registry.call("echo__grow", {"name": "late_tool"}, CTX)
        assert grown.content == "grown", grown.error
        await until(lambda: "echo__late_tool" in registry)
        assert (await registry.call("echo__late_tool", {}, CTX)).content == "late_tool"
        assert servers.tools_of("echo") == sorted([*registry.names()])

        kill_servers(before)  # a new process: the tools it starts with
        await until(lambda: "echo__late_tool" not in registry)
        await until(lambda: servers.connected == ["echo"])
        assert "echo__echo" in registry
        assert (await registry.call("echo__echo", {"text": "x"}, CTX)).content == "x"
    assert len(registry) == 0


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "never came true"
        await asyncio.sleep(0.05)


async def test_only_the_listed_tools_are_taken_and_effects_follow_the_config() -> None:
    registry = ToolRegistry()
    config = stdio_config(name="files", tools=["echo", "a*"], effect="read", needs_approval=True)
    async with McpServers([config], registry) as servers:
        assert registry.names() == ["files__add", "files__echo"]
        assert servers.tools_of("files") == ["files__add", "files__echo"]
        tool = registry.get("files__echo")
        assert tool is not None
        assert (tool.effect, tool.needs_approval) == ("read", True)
        waiting = await registry.call("files__echo", {"text": "x"}, CTX)
        assert waiting.error is not None
        assert waiting.error.type == "approval_required"


async def test_a_server_that_fails_to_start_is_reported_and_stops_start_up_if_required() -> None:
    registry = ToolRegistry()
    broken = stdio_config(name="broken", args=["-c", "import sys; sys.exit(3)"])
    async with McpServers([broken, stdio_config()], registry) as servers:
        assert servers.connected == ["echo"]
        assert "broken" in servers.failed
        assert all(name.startswith("echo__") for name in registry.names())

    with pytest.raises(ServiceUnavailable, match="MCP server broken is not available"):
        async with McpServers([broken.model_copy(update={"required": True})], registry):
            pass
    assert len(registry) == 0


async def test_a_server_that_never_answers_times_out() -> None:
    registry = ToolRegistry()
    silent = stdio_config(
        name="silent", args=["-c", "import time; time.sleep(60)"], connect_timeout=0.5
    )
    before = children()
    async with McpServers([silent], registry) as servers:
        assert "no answer within 0.5 s" in servers.failed["silent"]
    assert await gone_soon(before) == set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    port = free_port()
    async with serving_http(port):
        yield f"http://127.0.0.1:{port}/mcp"


@contextlib.asynccontextmanager
async def serving_http(port: int) -> AsyncIterator[None]:
    """The echo server over streamable HTTP on ``port``, once it accepts connections."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None, "the MCP server exited"
                await asyncio.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_server_that_comes_after_start_up_joins_with_its_tools() -> None:
    # It was left out until the platform restarted (in Kubernetes, pods start in any order).
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    config = McpServerConfig.model_validate(
        {"name": "late", "transport": "http", "url": url, "connect_timeout": 5}
    )
    registry = ToolRegistry()
    async with McpServers([config], registry) as servers:
        assert "late" in servers.failed and registry.names() == []
        async with serving_http(port):
            await until(lambda: servers.connected == ["late"])
            assert servers.failed == {}
            assert (await registry.call("late__add", {"a": 2, "b": 3}, CTX)).content == "5"
    assert registry.names() == []


async def test_a_streamable_http_servers_tools_work_with_configured_headers(
    http_server: str,
) -> None:
    settings = ToolSettings.model_validate(
        {
            "mcp_servers": [
                {
                    "name": "remote",
                    "transport": "http",
                    "url": http_server,
                    "headers": {"X-Test": "sent-by-spine"},
                    "timeout": 5,
                }
            ]
        }
    )
    registry = ToolRegistry()
    async with McpServers(settings.mcp_servers, registry) as servers:
        assert servers.connected == ["remote"]
        assert "remote__add" in registry
        result = await registry.call("remote__add", {"a": 20, "b": 22}, CTX)
        assert result.content == "42"
        sent = await registry.call("remote__headers", {}, CTX)
        assert sent.content == "sent-by-spine"
    assert len(registry) == 0


async def test_a_description_cut_inside_an_emoji_is_mended_not_an_unlistable_tool() -> None:
    # A JavaScript server cuts strings in UTF-16 units: half an emoji, escaped, is valid JSON.
    # (The Python SDK's server cannot send one, so the list is handed to the registration.)
    registry = ToolRegistry([])
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string", "description": "what to find \ud83d"}},
    }
    listed = [
        mcp_types.Tool(name="find", description="Finds things \ud83d", inputSchema=schema),
        mcp_types.Tool(name="plain", description="Plain \x00 text 😀", inputSchema={}),
    ]
    McpServers([], registry)._register(_Connection(config=stdio_config(name="js")), listed)
    tools = registry.openai_tools(tenant="acme")
    pydantic_core.to_json(tools)  # the listing and every model call encode it as UTF-8
    by_name = {tool["function"]["name"]: tool["function"] for tool in tools}
    found = by_name["js__find"]
    assert found["description"] == "Finds things \ufffd"
    assert found["parameters"]["properties"]["q"]["description"] == "what to find \ufffd"
    assert by_name["js__plain"]["description"] == "Plain \ufffd text 😀"


def test_names_are_prefixed_and_kept_within_openai_limits() -> None:
    assert mcp_tool_name("github", "search_code") == "github__search_code"
    assert mcp_tool_name("fs", "read.file/v2") == "fs__read_file_v2"
    long = mcp_tool_name("server", "x" * 100)
    assert len(long) == 64
    assert long != mcp_tool_name("server", "x" * 99)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs a command"):
        McpServerConfig(name="a", transport="stdio")
    with pytest.raises(ValueError, match="needs an http"):
        McpServerConfig(name="a", transport="http", url="ftp://x")
    with pytest.raises(ValueError, match="unique"):
        ToolSettings.model_validate(
            {"mcp_servers": [stdio_config().model_dump(), stdio_config().model_dump()]}
        )
    with pytest.raises(ValueError, match="should match pattern"):
        McpServerConfig(name="has.dot", transport="stdio", command="x")
    secret = McpServerConfig(name="a", transport="stdio", command="x", env={"TOKEN": "s3cret"})
    assert "s3cret" not in repr(secret)
    assert json.loads(secret.model_dump_json())["env"]["TOKEN"] == "**********"
