"""``GET /v1/agents`` and ``GET /v1/agents/{name}``: the agents tasks may name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from spine.agents.base import Agent
from spine.agents.loop import ToolAgent
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.errors import NotFound, UnknownAgent

router = APIRouter(prefix="/v1", tags=["agents"])


@router.get("/agents")
async def list_agents(request: Request, _: Caller) -> dict[str, Any]:
    """List the agents tasks may name, with their input schemas, tools and limits."""
    catalog = platform_of(request).catalog
    return {"data": [_described(catalog.get(name)) for name in catalog.names()]}


@router.get("/agents/{name}")
async def get_agent(name: str, request: Request, _: Caller) -> dict[str, Any]:
    """Describe one agent; an unknown name is a 404 naming the known ones."""
    try:
        return _described(platform_of(request).catalog.get(name))
    except UnknownAgent as exc:  # a 400 when a task names it; here it is the missing resource
        raise NotFound(exc.message, field="agent") from None


def _described(agent: Agent) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": agent.name,
        "description": agent.description,
        "input_schema": agent.input_model.model_json_schema(),
        "kind": "declarative" if isinstance(agent, ToolAgent) else "built-in",
    }
    if isinstance(agent, ToolAgent):
        spec = agent.definition
        described |= spec.model_dump(
            mode="json", include={"tools", "model", "max_steps", "max_cost", "timeout"}
        )
        described["output_schema"] = spec.output_schema
    return described
