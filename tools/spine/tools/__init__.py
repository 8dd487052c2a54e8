"""The tool registry and the built-in tools agents may call.

``McpServers`` (tools from MCP servers) is imported on first use: the ``mcp`` SDK takes
seconds to import, and most processes that list tools never open an MCP session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spine.tools.builtin import BUILTIN_TOOL_NAMES, HttpFetcher, builtin_tools
from spine.tools.egress import EgressDenied, EgressPolicy, Resolver, SystemResolver
from spine.tools.mcp_config import McpServerConfig, ToolSettings
from spine.tools.policy import ToolPolicy
from spine.tools.registry import ArgumentRetryBudget, ToolRegistry
from spine.tools.result import (
    InMemoryToolRecorder,
    ToolCallRecord,
    ToolCallRecorder,
    ToolError,
    ToolResult,
)
from spine.tools.tool import (
    ArgumentSchema,
    Effect,
    JsonSchemaArguments,
    ModelArguments,
    Tool,
    ToolContext,
    ToolFailure,
)

if TYPE_CHECKING:
    from spine.tools.mcp_servers import McpServers

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "ArgumentRetryBudget",
    "ArgumentSchema",
    "Effect",
    "EgressDenied",
    "EgressPolicy",
    "HttpFetcher",
    "InMemoryToolRecorder",
    "JsonSchemaArguments",
    "McpServerConfig",
    "McpServers",
    "ModelArguments",
    "Resolver",
    "SystemResolver",
    "Tool",
    "ToolCallRecord",
    "ToolCallRecorder",
    "ToolContext",
    "ToolError",
    "ToolFailure",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "ToolSettings",
    "builtin_tools",
]


def __getattr__(name: str) -> Any:
    if name == "McpServers":
        from spine.tools.mcp_servers import McpServers

        return McpServers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
