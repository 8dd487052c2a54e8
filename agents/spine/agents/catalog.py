"""The agents this deployment knows, by name, and validation of their inputs."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ValidationError

from spine.agents.base import Agent
from spine.agents.chat import ChatAgent
from spine.platform.errors import BadRequest, UnknownAgent

__all__ = ["AgentCatalog", "default_catalog"]


class AgentCatalog:
    """Agents by name."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        self._agents = {agent.name: agent for agent in agents}

    def names(self) -> list[str]:
        """List the known agent names."""
        return sorted(self._agents)

    def get(self, name: str) -> Agent:
        """Return an agent, or raise :class:`UnknownAgent` naming the known ones."""
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgent(
                f"unknown agent {name!r}; known agents: {', '.join(self.names())}", field="agent"
            ) from None

    def parse_input(self, name: str, data: dict[str, object]) -> BaseModel:
        """Validate a task's input against its agent's input model."""
        agent = self.get(name)
        try:
            return agent.input_model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("input", *first["loc"]))
            raise BadRequest(f"{where}: {first['msg']}", field=where) from None


def default_catalog() -> AgentCatalog:
    """Return the agents shipped with the platform."""
    return AgentCatalog([ChatAgent()])
