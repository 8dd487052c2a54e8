"""The learning loop's events on the JetStream stream OUTCOMES, and their publisher.

Three kinds, told apart by ``type``: ``model.outcome`` (one per routed model call, on
``spine.outcomes.<tenant>``), ``task.signal`` (a task ended, or a quality signal from its run,
on ``spine.outcomes.<tenant>.task``) and ``feedback`` (a client rated a call, a task or a
completion, on ``spine.outcomes.<tenant>.feedback``). The learning consumer reads them all.

:class:`OutcomePublisher` is the :class:`~spine.platform.metering.OutcomeHook` the API wires into
its model calls, and publishes the other two kinds too. Publishing never fails nor slows a call: the hook only puts the call on a
bounded queue, and one background task publishes from it: the events waiting at that moment
all at once (up to ``in_flight``), in the order they were queued. When NATS is down or JetStream
does not acknowledge, a publish is tried again (after 0.1 s, doubling to 2 s) for ``retry_for``
seconds, so a NATS restart loses nothing: the events wait in the queue meanwhile, and one tried
again after a missed acknowledgement is deduplicated by its ``Nats-Msg-Id`` (and skipped by the
learner, which applies an event id once). Past ``retry_for``, or when the queue is full, the
event is dropped, counted in :attr:`OutcomePublisher.dropped` and logged at WARNING (at most once
a minute while drops go on). The usage row in the database is the durable record of every call;
these events feed the learning consumer, which can live with a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from spine.events.bus import NatsBus
from spine.events.subjects import outcome_subject
from spine.platform.errors import ServiceUnavailable
from spine.platform.metering.usage import ModelCallRecord

__all__ = [
    "FeedbackGiven",
    "LearningEvent",
    "ModelOutcome",
    "OutcomePublisher",
    "TaskSignal",
    "TaskSignalKind",
    "feedback_subject",
    "task_signal_subject",
]

logger = logging.getLogger(__name__)

_WARN_EVERY = 60.0
# Publishes awaited one after the other cost nats-server 0.47 ms of CPU each with
# `sync_interval: always` (one fsync per message), 16 in flight 0.18 ms, and the client 0.35 ->
# 0.08 ms (measured on this 2-core host); under load the queue has that many waiting.
_IN_FLIGHT = 64
_FIRST_RETRY = 0.1
_LONGEST_WAIT = 2.0


class ModelOutcome(BaseModel):
    """How one routed model call went, as published on ``spine.outcomes.<tenant>``.

    ``id`` is the id of the call's usage row and the message's ``Nats-Msg-Id``; ``outcome`` is
    ``"ok"`` or the error class (``"rate_limited"``, ``"budget_exceeded"``, ...); a stream
    abandoned by its reader is ``"abandoned"``. ``fallback_path`` lists the models tried before
    the one that answered (or, for a failure, before the last one tried). ``strategy`` is the
    routing strategy, or ``"explicit"`` when the caller named the model.
    """

    type: Literal["model.outcome"] = "model.outcome"
    id: str
    time: datetime
    tenant: str
    key_id: str | None = None
    task_id: str | None = None
    task_category: str | None = None
    model: str
    provider: str
    strategy: str
    latency_ms: float
    cost: Decimal
    input_tokens: int = 0
    output_tokens: int = 0
    cache_hit: bool = False
    fallback_path: list[str] = Field(default_factory=list)
    outcome: str
    completion_id: str | None = None
    decision: dict[str, Any] | None = None
    experiment_id: str | None = None
    arm: str | None = None

    @classmethod
    def of(cls, record: ModelCallRecord) -> ModelOutcome:
        """Describe the call a usage row records."""
        return cls(
            id=record.id,
            time=record.created_at,
            tenant=record.tenant,
            key_id=record.key_id,
            task_id=record.task_id,
            task_category=record.task_category,
            model=record.model,
            provider=record.provider,
            strategy=record.strategy or "",
            latency_ms=round(record.latency_ms, 3),
            cost=record.cost,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cache_hit=record.cache_hit,
            fallback_path=list(record.fallback_path),
            outcome=record.outcome,
            completion_id=record.completion_id,
            decision=record.decision,
            experiment_id=record.experiment_id,
            arm=record.arm,
        )


TaskSignalKind = Literal[
    "succeeded",
    "failed",
    "dead_lettered",
    "cancelled",
    "schema_failed",
    "tool_args_rejected",
    "approval_rejected",
]


class TaskSignal(BaseModel):
    """A quality signal from a task's run, joined by the learner to the task's model calls.

    ``kind`` is how the task ended (``succeeded``, ``failed``, ``dead_lettered``,
    ``cancelled``), or something that went wrong on the way: a final answer that failed its
    agent's ``output_schema`` (``schema_failed``), tool arguments the registry rejected
    (``tool_args_rejected``), an approval a person rejected (``approval_rejected``); ``call_id``
    names the model call it is about, when it is about one.
    """

    type: Literal["task.signal"] = "task.signal"
    id: str
    time: datetime
    tenant: str
    task_id: str
    agent: str
    kind: TaskSignalKind
    call_id: str | None = None


class FeedbackGiven(BaseModel):
    """A client's rating (0..1) of model calls: of one call, a task's calls or a completion."""

    type: Literal["feedback"] = "feedback"
    id: str
    time: datetime
    tenant: str
    key_id: str
    target_kind: Literal["call", "task", "completion"]
    target_id: str
    call_ids: list[str]
    score: float
    label: str | None = None


LearningEvent = Annotated[ModelOutcome | TaskSignal | FeedbackGiven, Field(discriminator="type")]
"""Any event on OUTCOMES."""


def feedback_subject(tenant: str) -> str:
    """Return the subject of a tenant's feedback events."""
    return f"{outcome_subject(tenant)}.feedback"


def task_signal_subject(tenant: str) -> str:
    """Return the subject of a tenant's task signals."""
    return f"{outcome_subject(tenant)}.task"


def _subject(event: ModelOutcome | TaskSignal | FeedbackGiven) -> str:
    if isinstance(event, TaskSignal):
        return task_signal_subject(event.tenant)
    if isinstance(event, FeedbackGiven):
        return feedback_subject(event.tenant)
    return outcome_subject(event.tenant)


class OutcomePublisher:
    """Publishes learning events in the background, dropping them rather than waiting.

    Call it (the :class:`~spine.platform.metering.OutcomeHook` shape) with a model call's record,
    or :meth:`signal` with a task signal or a feedback event, from a running event loop; the
    publisher task starts with the first event. :meth:`close` publishes what is queued, for at
    most ``drain_timeout`` seconds, then stops.
    """

    def __init__(
        self,
        bus: NatsBus,
        *,
        max_queued: int = 10_000,
        in_flight: int = _IN_FLIGHT,
        retry_for: float = 30.0,
    ) -> None:
        self._bus = bus
        self._in_flight = in_flight
        self._retry_for = retry_for
        self._queue: asyncio.Queue[ModelOutcome | TaskSignal | FeedbackGiven] = asyncio.Queue(
            maxsize=max_queued
        )
        self._task: asyncio.Task[None] | None = None
        self._sending = 0  # taken from the queue, not yet acknowledged nor dropped
        self._closed = False
        self._last_warning = -_WARN_EVERY
        self.published = 0
        """Events JetStream acknowledged."""
        self.dropped = 0
        """Events lost: the queue was full, NATS was down or JetStream did not acknowledge."""

    def __call__(self, record: ModelCallRecord) -> None:
        """Queue the outcome of one model call; never blocks and never raises."""
        try:
            event = ModelOutcome.of(record)
        except Exception as exc:  # a record this cannot describe must not fail the call
            self._drop(f"a {record.model} call", repr(exc))
            return
        self.signal(event)

    def signal(self, event: ModelOutcome | TaskSignal | FeedbackGiven) -> None:
        """Queue any learning event; never blocks and never raises."""
        if self._closed:
            self._drop(event.type, "the publisher is closed")
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(event.type, f"{self._queue.maxsize} events are waiting already")
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish_all(), name="outcome-publisher"
            )

    async def _publish_all(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._in_flight and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._sending = len(batch)
            try:
                # One connection: sent in this order, stored in this order.
                await asyncio.gather(*(self._publish(event) for event in batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _publish(self, event: ModelOutcome | TaskSignal | FeedbackGiven) -> None:
        subject, payload = _subject(event), event.model_dump_json().encode()
        give_up = time.monotonic() + self._retry_for
        wait = _FIRST_RETRY
        while True:
            try:
                await self._bus.publish_durable(subject, payload, msg_id=event.id)
            except ServiceUnavailable as exc:
                if time.monotonic() + wait > give_up:
                    self._drop(event.type, exc.message)
                    break
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
            except Exception as exc:  # a bug here must not stop the publisher
                self._drop(event.type, repr(exc))
                break
            else:
                self.published += 1
                break
        self._sending -= 1  # not when cancelled: close() counts those as dropped

    def _drop(self, what: str, reason: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(
                "%s event not published (%s); %d dropped so far, the database still has "
                "every call and every feedback",
                what,
                reason,
                self.dropped,
            )

    async def close(self, *, drain_timeout: float = 5.0) -> None:
        """Publish what is queued (for at most ``drain_timeout`` seconds), then stop."""
        self._closed = True
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        left = self._queue.qsize() + self._sending
        self.dropped += left
        self._sending = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        if left:
            logger.warning("%d outcome events not published at shutdown", left)
