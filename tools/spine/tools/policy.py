"""Which tools a tenant, and an agent within it, may use."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

__all__ = ["ToolPolicy"]


def _patterns(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip() for v in values if v.strip())


def _matches(name: str, patterns: frozenset[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolPolicy:
    """Allowlists of tool names per tenant and per agent; entries may be globs (``github__*``).

    A tool is allowed when the tenant's list allows it (a tenant without a list gets
    ``default``; ``None`` there means every registered tool) and, when an agent calls, the
    agent's list allows it too (an agent without a list is not narrowed further).
    """

    default: frozenset[str] | None = None
    tenants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    agents: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        default: Iterable[str] | None = None,
        tenants: Mapping[str, Iterable[str]] | None = None,
        agents: Mapping[str, Iterable[str]] | None = None,
    ) -> ToolPolicy:
        """Build a policy from plain lists."""
        return cls(
            default=None if default is None else _patterns(default),
            tenants={t: _patterns(p) for t, p in (tenants or {}).items()},
            agents={a: _patterns(p) for a, p in (agents or {}).items()},
        )

    def with_tenant(self, tenant: str, allowed: Iterable[str]) -> ToolPolicy:
        """Return this policy with the tenant's list set."""
        return replace(self, tenants={**self.tenants, tenant: _patterns(allowed)})

    def with_agent(self, agent: str, allowed: Iterable[str]) -> ToolPolicy:
        """Return this policy with the agent's list set."""
        return replace(self, agents={**self.agents, agent: _patterns(allowed)})

    def refusal(self, tool: str, *, tenant: str, agent: str | None = None) -> str | None:
        """Return why the tool is not allowed here, or ``None`` when it is."""
        tenant_list = self.tenants.get(tenant, self.default)
        if tenant_list is not None and not _matches(tool, tenant_list):
            return f"tool {tool!r} is not allowed for tenant {tenant!r}"
        if agent is not None:
            agent_list = self.agents.get(agent)
            if agent_list is not None and not _matches(tool, agent_list):
                return f"tool {tool!r} is not allowed for agent {agent!r}"
        return None

    def allows(self, tool: str, *, tenant: str, agent: str | None = None) -> bool:
        """Tell whether the tenant (and the agent, when one calls) may use the tool."""
        return self.refusal(tool, tenant=tenant, agent=agent) is None
