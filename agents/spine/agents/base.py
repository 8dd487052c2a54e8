"""What an agent is, and the context a worker hands it for one attempt of one task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from spine.events.outcomes import TaskSignalKind
from spine.platform.errors import TaskCancelled, TransientFailure
from spine.platform.metering import CallContext, MeteredStream, ModelCallRecord
from spine.platform.models import Completion
from spine.platform.tasks import JournalEntry, StepJournal, StepKind, Task
from spine.tools.registry import ToolRegistry

__all__ = [
    "Agent",
    "AgentModels",
    "AwaitingApproval",
    "ModelSource",
    "RunContext",
    "TaskJournal",
]

T = TypeVar("T")
_UNWIND_SECONDS = 5.0


class Agent(Protocol):
    """An agent: a name, the input it accepts, and how it runs one attempt."""

    @property
    def name(self) -> str:
        """The name tasks give."""
        ...

    @property
    def description(self) -> str:
        """What the agent does, for people choosing one."""
        ...

    @property
    def input_model(self) -> type[BaseModel]:
        """The input a task of this agent must give."""
        ...

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Carry out the task and return its result."""
        ...


class AgentModels(Protocol):
    """The model calls of one task: routed, cached, budgeted and recorded as the task's."""

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """Answer a conversation."""
        ...

    async def stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> MeteredStream:
        """Open a streamed answer; its cost is known once it was read to the end."""
        ...


class AwaitingApproval(Exception):
    """Raised by an agent to pause its task until a person decides on ``proposal``."""

    def __init__(self, proposal: dict[str, Any], *, until: datetime) -> None:
        super().__init__(f"waiting for approval of {proposal.get('tool')}")
        self.proposal = proposal
        self.until = until


@dataclass(slots=True, kw_only=True)
class TaskJournal:
    """The step journal as one attempt of one task sees it (see :mod:`spine.platform.tasks.journal`)."""

    journal: StepJournal
    task_id: str
    attempt: int
    _entries: dict[str, JournalEntry] | None = None
    _behind: list[asyncio.Task[None]] = field(default_factory=list)

    async def load(self) -> dict[str, JournalEntry]:
        """Return the steps recorded so far (read once per attempt)."""
        if self._entries is None:
            self._entries = await self.journal.entries(self.task_id)
        return self._entries

    async def record(
        self,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        """Commit a step, with the progress events it produced, before the loop moves on.

        Raises:
            TransientFailure: This attempt lost its claim on the task (a newer attempt
                holds it); the worker then leaves the task to that attempt.
        """
        await self.settle()
        await self._commit(key, kind, data, events)
        (await self.load())[key] = JournalEntry(key=key, kind=kind, attempt=self.attempt, data=data)

    async def record_behind(
        self,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        """Commit a step as the loop goes on: one whose repetition harms nothing (a read-only
        tool's result, or a model answer that asks only for read-only tools).

        The commit is sent at once and overlaps what comes next (the tools, the next model
        call); commits behind are made in order, and the next :meth:`record`, and
        :meth:`settle`, wait for them first, so the journal and the feed keep their order. A
        crash in the millisecond before it committed runs that step again on replay, as a crash
        just before a :meth:`record` commit does.
        """
        self._raise_failed()  # a commit behind that lost the claim stops the loop here
        (await self.load())[key] = JournalEntry(key=key, kind=kind, attempt=self.attempt, data=data)
        previous = self._behind[-1] if self._behind else None
        commit = asyncio.create_task(self._commit_after(previous, key, kind, data, list(events)))
        # Retrieved here too, so one that nobody settles (the attempt died) is not reported.
        commit.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._behind.append(commit)

    def _raise_failed(self) -> None:
        """Raise the failure of a commit behind that ended; forget those that succeeded."""
        for commit in [c for c in self._behind if c.done()]:
            if not commit.cancelled() and (failure := commit.exception()) is not None:
                self._behind.remove(commit)
                raise failure
        self._behind = [c for c in self._behind if not c.done()]

    async def settle(self) -> None:
        """Wait for the steps committed behind; raise as :meth:`record` would."""
        behind, self._behind = self._behind, []
        for outcome in await asyncio.gather(*behind, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _commit_after(
        self,
        previous: asyncio.Task[None] | None,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]],
    ) -> None:
        if previous is not None:  # in order: the feed numbers events as they commit
            await asyncio.wait({previous})  # its failure is raised by settle
        await self._commit(key, kind, data, events)

    async def _commit(
        self,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]],
    ) -> None:
        written = await self.journal.record(
            self.task_id, attempt=self.attempt, key=key, kind=kind, data=data, events=events
        )
        if written is None:
            raise TransientFailure(
                f"attempt {self.attempt} of task {self.task_id} lost its claim at step {key}"
            )


class ModelSource(Protocol):
    """Where a worker gets the model client of each task (:class:`~spine.platform.metering.MeteredModels`).

    Every call of a task is metered as that task's: its tenant's and key's budgets, its usage
    rows and outcome events.
    """

    async def warm_up(self) -> None:
        """Do slow one-time set-up before the first task."""
        ...

    def for_caller(self, context: CallContext) -> AgentModels:
        """Return the model client for one caller."""
        ...

    async def flush(self) -> None:
        """Write what the calls made so far recorded (usage rows are written behind)."""
        ...

    async def take_usage(self, task_id: str) -> list[ModelCallRecord]:
        """Settle the calls made so far and take the task's usage rows not written yet, to
        be written with its end."""
        ...

    def put_back_usage(self, calls: list[ModelCallRecord]) -> None:
        """Queue again usage rows that :meth:`take_usage` gave out and were not written."""
        ...


@dataclass(slots=True, kw_only=True)
class RunContext:
    """Everything an agent may touch while it runs one attempt."""

    task: Task
    attempt: int
    models: AgentModels
    journal: TaskJournal
    tools: ToolRegistry
    emit: Callable[[str, dict[str, Any]], Awaitable[object]]
    cancelled: asyncio.Event
    cancel_requested: Callable[[], Awaitable[bool]]
    signal: Callable[[TaskSignalKind], None] = field(default=lambda _kind: None)
    """Report a quality signal of this run (a rejected answer) to the learning loop."""
    # The live cancel signal is immediate; the database is asked at most this often, to catch
    # a signal that was missed (NATS down) without a query per step.
    durable_check_interval: float = 1.0
    _checked_at: float = field(default_factory=time.monotonic)
    ending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Progress events left to be committed with the attempt's end (see :meth:`emit_at_end`)."""

    def emit_at_end(self, type_: str, data: dict[str, Any]) -> None:
        """Report a progress event in the same commit as the attempt's end, before its state.

        For what an agent reports just before it returns (its model call, its final answer):
        one commit where :attr:`emit` makes two. Followers see it a moment later, with the
        result; if the worker dies first it is lost with the attempt, whose work a replay
        then does (and reports) again.
        """
        self.ending.append((type_, data))

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
            # Let it unwind (a model call records itself as abandoned) before the worker goes
            # on to record the task's end; bounded, in case the work ignores the cancel.
            await asyncio.wait({step}, timeout=_UNWIND_SECONDS)
            raise TaskCancelled("the task was cancelled")
        return step.result()
