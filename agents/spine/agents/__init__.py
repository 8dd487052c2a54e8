"""Agents: definitions, the catalog, task dispatch and the workers that run them."""

from spine.agents.base import Agent, RunContext
from spine.agents.catalog import AgentCatalog, default_catalog
from spine.agents.chat import ChatAgent, ChatInput
from spine.agents.completion import CompletionAgent, CompletionInput
from spine.agents.dispatch import TaskDispatcher
from spine.agents.worker import TaskWorker, WorkerStats

__all__ = [
    "Agent",
    "AgentCatalog",
    "ChatAgent",
    "ChatInput",
    "CompletionAgent",
    "CompletionInput",
    "RunContext",
    "TaskDispatcher",
    "TaskWorker",
    "WorkerStats",
    "default_catalog",
]
