"""``/v1/tools``: the tools the caller's key may use, each with its argument schema."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.errors import NotFound
from spine.tools import Tool, ToolRegistry

__all__ = ["router", "tool_registry_of"]

router = APIRouter(prefix="/v1", tags=["tools"])


class ToolInfo(BaseModel):
    """A tool as clients see it; ``parameters`` is the JSON schema the model is given."""

    name: str
    description: str
    parameters: dict[str, Any]
    effect: Literal["read", "write", "external"]
    needs_approval: bool
    timeout_seconds: float
    source: str

    @classmethod
    def of(cls, tool: Tool[Any]) -> ToolInfo:
        """Describe a registered tool."""
        return cls(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters,
            effect=tool.effect,
            needs_approval=tool.needs_approval,
            timeout_seconds=tool.timeout,
            source=tool.source,
        )


class ToolList(BaseModel):
    """The tools a key may use."""

    data: list[ToolInfo]


def tool_registry_of(request: Request) -> ToolRegistry:
    """Return the process's tool registry: the one the workers' agents use too."""
    return platform_of(request).tools


@router.get("/tools", response_model=ToolList)
async def list_tools(request: Request, caller: Caller) -> ToolList:
    """List the tools the caller's tenant may use, sorted by name."""
    registry = tool_registry_of(request)
    return ToolList(data=[ToolInfo.of(t) for t in registry.available(tenant=caller.tenant)])


@router.get("/tools/{name}", response_model=ToolInfo)
async def get_tool(name: str, request: Request, caller: Caller) -> ToolInfo:
    """Describe one tool the caller's tenant may use; any other is not found."""
    registry = tool_registry_of(request)
    tool = registry.get(name)
    if tool is None or not registry.policy.allows(name, tenant=caller.tenant):
        raise NotFound(f"no tool named {name!r}", field="name")
    return ToolInfo.of(tool)
