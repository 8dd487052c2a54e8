"""The agents this deployment knows, by name, and validation of their inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from spine.agents.base import Agent
from spine.agents.chat import ChatAgent
from spine.agents.completion import CompletionAgent
from spine.agents.definitions import SHIPPED_DEFINITIONS, AgentDefinition, load_definitions
from spine.agents.loop import ToolAgent
from spine.platform.errors import BadRequest, UnknownAgent

__all__ = ["AgentCatalog", "default_catalog"]


class AgentCatalog:
    """Agents by name."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        self._agents = {agent.name: agent for agent in agents}

    def add(self, agent: Agent) -> None:
        """Add an agent built from the process's services (``embed_document``, ...)."""
        if agent.name in self._agents:
            raise ValueError(f"an agent named {agent.name!r} is already in the catalog")
        self._agents[agent.name] = agent

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

    def definitions(self) -> list[AgentDefinition]:
        """Return the declarative agents' definitions (their tools and limits)."""
        return [a.definition for a in self._agents.values() if isinstance(a, ToolAgent)]

    def parse_input(self, name: str, data: dict[str, object]) -> BaseModel:
        """Validate a task's input against its agent's input model."""
        agent = self.get(name)
        try:
            return agent.input_model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("input", *first["loc"]))
            raise BadRequest(f"{where}: {first['msg']}", field=where) from None


def default_catalog(agents_dir: Path | None = None) -> AgentCatalog:
    """Return the shipped agents, and the declarative ones of ``agents_dir``.

    Raises:
        ConfigurationError: A definition file is invalid.
    """
    coded: list[Agent] = [ChatAgent(), CompletionAgent()]
    declared = load_definitions(SHIPPED_DEFINITIONS, agents_dir)
    return AgentCatalog([*coded, *(ToolAgent(d) for d in declared)])
