"""How MCP servers are configured; the models live with the kernel's settings."""

from __future__ import annotations

from spine.platform.tool_settings import McpServerConfig, ToolSettings

__all__ = ["McpServerConfig", "ToolSettings"]
