"""The platform's event contracts as an AsyncAPI document (built with FastStream).

What other systems may publish, and what the platform publishes for them and for itself:

- ``spine.events.{tenant}.{type}`` — CloudEvents into the knowledge layer (received);
- ``spine.tasks.{lane}`` — task messages for the workers (``high``, ``normal``, ``low``);
- ``spine.progress.{task_id}`` — live nudges of a task's stored progress events;
- ``spine.cancel.{task_id}`` — "stop this task" for the worker that runs it;
- ``spine.outcomes.{tenant}``, ``.task``, ``.feedback`` — the learning loop's events (received
  by the learning consumer).

The broker here is never connected: it only describes. ``GET /v1/asyncapi.json`` serves the
document and ``spine asyncapi`` prints it.
"""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from spine.events.cloudevent import CloudEvent
from spine.events.outcomes import FeedbackGiven, ModelOutcome, TaskSignal
from spine.platform.tasks import TaskEvent

__all__ = ["TaskMessage", "asyncapi_document"]

VERSION = "0.1.0"


class TaskMessage(BaseModel):
    """A task handed to the workers; the database row is the task, this is the nudge to run it."""

    task_id: str
    tenant: str
    agent: str


class CancelSignal(BaseModel):
    """An empty message: the worker running the task stops it at its next step."""


def _described() -> NatsBroker:
    broker = NatsBroker("nats://127.0.0.1:4222")

    @broker.subscriber(
        "spine.events.{tenant}.{type}",
        title="events in",
        description="CloudEvents 1.0 that other systems publish for a tenant, structured JSON "
        "(as shown) or binary mode (each attribute in a ce-<name> header, the data as the "
        "body); deduplicated by (tenant, source, id); mapped into the knowledge graph and matched "
        "against triggers. Publishers are limited to their tenant's subjects.",
    )
    async def events_in(event: CloudEvent) -> None:
        """Take a tenant's event."""

    @broker.subscriber(
        "spine.outcomes.{tenant}",
        title="model outcomes",
        description="One per routed model call: model, cost, latency, tokens, fallback path, "
        "and the routing decision (strategy, candidates and scores, exploration, weights "
        "version). Read by the learning consumer.",
    )
    async def outcomes(event: ModelOutcome) -> None:
        """Learn from a call."""

    @broker.subscriber(
        "spine.outcomes.{tenant}.task",
        title="task signals",
        description="A task ended (succeeded, failed, dead-lettered, cancelled), or its run "
        "rejected a model's answer (schema, tool arguments, approval). Read by the learner.",
    )
    async def task_signals(event: TaskSignal) -> None:
        """Learn from a task."""

    @broker.subscriber(
        "spine.outcomes.{tenant}.feedback",
        title="feedback",
        description="A client's rating (0..1) of calls, a task or a completion. Read by the "
        "learner.",
    )
    async def feedback(event: FeedbackGiven) -> None:
        """Learn from a rating."""

    broker.publisher(
        "spine.tasks.{lane}",
        schema=TaskMessage,
        title="tasks",
        description="Work-queue stream TASKS; Nats-Msg-Id is the task id; lanes high, normal, "
        "low. Delivery is at least once; the database decides who runs a task.",
    )
    broker.publisher(
        "spine.progress.{task_id}",
        schema=TaskEvent,
        title="task progress",
        description="Core NATS, best effort: each progress event once it is stored; "
        "GET /v1/tasks/{id}/events replays the stored feed and follows these.",
    )
    broker.publisher(
        "spine.cancel.{task_id}",
        schema=CancelSignal,
        title="cancel",
        description="Core NATS: the worker running the task stops at its next step.",
    )
    return broker


def asyncapi_document() -> dict[str, Any]:
    """Return the AsyncAPI 3 document of the platform's subjects."""
    document = AsyncAPI(
        _described(),
        title="GenAI Spine events",
        version=VERSION,
        description="The NATS subjects of GenAI Spine: what other systems publish, and what "
        "the platform publishes for workers, followers and its learning loop.",
    )
    described: dict[str, Any] = document.to_specification().to_jsonable()
    return described
