"""A small MCP server for tests, on the official SDK (``MCPServer``, called FastMCP before mcp 2).

Run ``python mcp_echo_server.py`` for stdio, or ``python mcp_echo_server.py http PORT`` for
streamable HTTP on 127.0.0.1:PORT at ``/mcp``.
"""

import asyncio
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("echo", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Fail with the given message."""
    raise ToolError(message)


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after a while."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def idempotency_key(ctx: Context) -> str:
    """Return the idempotency key the client sent in the request's _meta."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("io.spine/idempotency-key"))


@server.tool()
def headers(ctx: Context) -> str:
    """Return the X-Test header of the HTTP request (streamable HTTP only)."""
    return str((ctx.headers or {}).get("x-test"))


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool ``name`` (it answers its name) and tell the client the tool list changed."""

    def grown() -> str:
        return name

    server.add_tool(grown, name=name, description=f"Grown at run time: {name}.")
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
