"""What an agent is, and the context a worker hands it for one attempt of one task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from spine.platform.errors import TaskCancelled
from spine.platform.llm import ModelClient
from spine.platform.tasks import Task

__all__ = ["Agent", "RunContext"]

T = TypeVar("T")


class Agent(Protocol):
    """An agent: a name, the input it accepts, and how it runs one attempt."""

    name: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Carry out the task and return its result."""
        ...


@dataclass(slots=True, kw_only=True)
class RunContext:
    """Everything an agent may touch while it runs one attempt."""

    task: Task
    attempt: int
    models: ModelClient
    emit: Callable[[str, dict[str, Any]], Awaitable[object]]
    cancelled: asyncio.Event
    cancel_requested: Callable[[], Awaitable[bool]]

    async def checkpoint(self) -> None:
        """Stop here if a cancel was requested; agents call this between steps."""
        if self.cancelled.is_set() or await self.cancel_requested():
            self.cancelled.set()
            raise TaskCancelled("the task was cancelled")

    async def step(self, work: Awaitable[T]) -> T:
        """Run one step, abandoning it as soon as a cancel arrives."""
        await self.checkpoint()
        step = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not step.done():
            step.cancel()
            raise TaskCancelled("the task was cancelled")
        return step.result()
