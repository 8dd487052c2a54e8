"""How tools are configured: allowlists per tenant, approvals, and MCP servers.

Plain pydantic, so the kernel's settings carry it (``GENAI_TOOLS__*``; lists and maps as JSON)::

    GENAI_TOOLS__DEFAULT='["calculator", "current_time", "http_fetch"]'
    GENAI_TOOLS__TENANTS='{"acme": ["*"], "globex": ["calculator"]}'
    GENAI_TOOLS__APPROVAL='["publish_event"]'
    GENAI_TOOLS__MCP_SERVERS='[{"name": "files", "transport": "stdio", "command": "..."}]'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["McpServerConfig", "ToolSettings"]


class McpServerConfig(BaseModel):
    """One MCP server whose tools join the registry as ``<name>__<tool>``.

    ``tools`` keeps only the server's tools whose names match one of its globs (all when
    unset). MCP says nothing of what a tool changes, so its tools are ``external`` unless
    ``effect`` says otherwise. ``timeout`` bounds one call; ``connect_timeout`` the start,
    handshake and tool listing. A ``required`` server that cannot be reached stops start-up;
    any other is logged and tried again in the background, its tools joining when it answers.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,30}$")
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, SecretStr] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tools: list[str] | None = None
    effect: Literal["read", "write", "external"] = "external"
    needs_approval: bool = False
    timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=20.0, gt=0)
    required: bool = False

    @model_validator(mode="after")
    def _transport_needs(self) -> McpServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"MCP server {self.name!r}: a stdio server needs a command")
        if self.transport == "http" and not (
            self.url and self.url.startswith(("http://", "https://"))
        ):
            raise ValueError(f"MCP server {self.name!r}: an http server needs an http(s) url")
        return self


class ToolSettings(BaseModel):
    """Which tools each tenant may use, which need a person's approval, and MCP servers.

    ``default`` is the allowlist of tenants without one of their own (None: every tool);
    entries may be globs (``github__*``). ``approval`` names tools that wait for a person's
    approval before each call, beside those declared so.
    """

    model_config = ConfigDict(extra="forbid")

    default: list[str] | None = None
    tenants: dict[str, list[str]] = Field(default_factory=dict)
    approval: list[str] = Field(default_factory=list)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ToolSettings:
        names = [server.name for server in self.mcp_servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"MCP server names must be unique: {', '.join(duplicates)}")
        return self
