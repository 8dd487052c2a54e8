"""What an agent is, and the context a worker hands it for one attempt of one task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from spine.platform.calls import CallContext
from spine.platform.errors import TaskCancelled
from spine.platform.llm import ModelClient
from spine.platform.tasks import Task

__all__ = ["Agent", "CallerModelSource", "RunContext"]

T = TypeVar("T")


class Agent(Protocol):
    """An agent: a name, the input it accepts, and how it runs one attempt."""

    name: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Carry out the task and return its result."""
        ...


class CallerModelSource(Protocol):
    """Where a worker gets the model client of each task (:class:`~spine.platform.calls.ModelCalls`).

    Every call of a task is metered as that task's: its tenant's and key's budgets, its usage
    rows and outcome events.
    """

    async def warm_up(self) -> None:
        """Do slow one-time set-up before the first task."""
        ...

    def for_caller(self, context: CallContext) -> ModelClient:
        """Return the model client for one caller."""
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
    # The live cancel signal is immediate; the database is asked at most this often, to catch
    # a signal that was missed (NATS down) without a query per step.
    durable_check_interval: float = 1.0
    _checked_at: float = field(default_factory=time.monotonic)

    async def checkpoint(self) -> None:
        """Stop here if a cancel was requested; agents call this between steps."""
        durable_check = not self.cancelled.is_set() and self._durable_check_due()
        if durable_check and await self.cancel_requested():
            self.cancelled.set()
        if self.cancelled.is_set():
            raise TaskCancelled("the task was cancelled")

    def _durable_check_due(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at < self.durable_check_interval:
            return False
        self._checked_at = now
        return True

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
