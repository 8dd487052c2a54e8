"""The ``submit_task`` tool: an agent delegates work to another agent and waits for its result.

The child task goes through the same backbone as any task (committed, published, run by a
worker). Its idempotency key comes from the parent's task, step and call, so a parent step
replayed after a crash finds the same child instead of starting a second one. Delegation is
bounded: a chain may be at most ``max_depth`` tasks deep, one step may start at most
``max_children`` tasks (the agent's max_steps bounds the steps); children are charged to the
same tenant and key budgets.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from spine.platform.errors import SpineError
from spine.platform.keys import Principal
from spine.platform.tasks import Task, TaskStore, TaskSubmission
from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = ["DelegationLimits", "SubmitTaskArguments", "submit_task_tool"]

DEPTH = "delegation_depth"
PARENT = "parent_task"


class Submitter(Protocol):
    """What delegation needs of :class:`~spine.agents.dispatch.TaskDispatcher`."""

    async def submit(
        self, submission: TaskSubmission, *, principal: Principal, idempotency_key: str | None
    ) -> tuple[Task, bool]:
        """Commit and publish a task."""
        ...


class SubmitTaskArguments(BaseModel):
    """Arguments of ``submit_task``."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="The agent to delegate to, e.g. 'researcher' or 'chat'.")
    prompt: str = Field(min_length=1, description="What the agent should do, self-contained.")


class DelegationLimits(BaseModel):
    """How far delegation may go."""

    max_depth: int = Field(2, ge=1)
    max_children: int = Field(5, ge=1)
    wait: float = Field(600.0, gt=0, description="Seconds to wait for the child's result.")
    poll: float = Field(0.5, gt=0)


def submit_task_tool(
    submitter: Submitter, store: TaskStore, limits: DelegationLimits | None = None
) -> Tool[SubmitTaskArguments]:
    """Build the ``submit_task`` tool on the task backbone."""
    bounds = limits or DelegationLimits()

    async def delegate(args: SubmitTaskArguments, ctx: ToolContext) -> dict[str, Any]:
        if ctx.task_id is None:
            raise ToolFailure("submit_task can only be used from within a task")
        parent = await store.get(ctx.task_id, tenant=ctx.tenant)
        depth = int(parent.metadata.get(DEPTH, 0)) + 1
        if depth > bounds.max_depth:
            raise ToolFailure(f"delegation is limited to {bounds.max_depth} levels")
        key = f"delegate:{ctx.task_id}:{ctx.step}:{ctx.call_index}"
        if ctx.call_index >= bounds.max_children:
            raise ToolFailure(f"one step may delegate at most {bounds.max_children} tasks")
        submission = TaskSubmission(
            agent=args.agent,
            input={"prompt": args.prompt},
            metadata={DEPTH: depth, PARENT: ctx.task_id},
        )
        # The child acts with the key the parent was submitted with (its budgets apply).
        principal = Principal(tenant=ctx.tenant, key_id=parent.key_id or "", role="member")
        try:
            child, _ = await submitter.submit(submission, principal=principal, idempotency_key=key)
        except SpineError as exc:
            raise ToolFailure(f"could not delegate: {exc.message}") from None
        return await _result_of(store, child, ctx.tenant, bounds)

    return Tool(
        name="submit_task",
        description=(
            "Delegate a self-contained piece of work to another agent and wait for its answer."
        ),
        arguments=ModelArguments(SubmitTaskArguments),
        handler=delegate,
        timeout=bounds.wait + 5,
        effect="write",
    )


async def _result_of(
    store: TaskStore, child: Task, tenant: str, bounds: DelegationLimits
) -> dict[str, Any]:
    waited = 0.0
    while not child.is_terminal:
        if waited >= bounds.wait:
            raise ToolFailure(f"task {child.id} ({child.agent}) gave no result in time")
        await asyncio.sleep(bounds.poll)
        waited += bounds.poll
        child = await store.get(child.id, tenant=tenant)
    if child.state != "succeeded":
        reason = child.error.message if child.error is not None else child.state
        raise ToolFailure(f"task {child.id} ({child.agent}) ended {child.state}: {reason}")
    result = child.result or {}
    return {"task_id": child.id, "agent": child.agent, "text": result.get("text"), **result}
