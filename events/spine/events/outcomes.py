"""Model-call outcomes: one event per routed call on the JetStream stream OUTCOMES.

:class:`OutcomePublisher` is the :class:`~spine.platform.metering.OutcomeHook` the API wires into
its model calls. Publishing never fails nor slows a call: the hook only puts the call on a
bounded queue, and one background task publishes from it. When NATS is down, JetStream does not
acknowledge, or the queue is full, the event is dropped, counted in :attr:`OutcomePublisher.dropped`
and logged at WARNING (at most once a minute while drops go on). The usage row in the database
is the durable record of every call; these events feed the learning consumer, which can live
with a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from spine.events.bus import NatsBus
from spine.events.subjects import outcome_subject
from spine.platform.errors import ServiceUnavailable
from spine.platform.metering.usage import ModelCallRecord

__all__ = ["ModelOutcome", "OutcomePublisher"]

logger = logging.getLogger(__name__)

_WARN_EVERY = 60.0


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

    @classmethod
    def of(
        cls, record: ModelCallRecord, *, strategy: str, task_category: str | None
    ) -> ModelOutcome:
        """Describe the call a usage row records."""
        return cls(
            id=record.id,
            time=record.created_at,
            tenant=record.tenant,
            key_id=record.key_id,
            task_id=record.task_id,
            task_category=task_category,
            model=record.model,
            provider=record.provider,
            strategy=strategy,
            latency_ms=round(record.latency_ms, 3),
            cost=record.cost,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cache_hit=record.cache_hit,
            fallback_path=list(record.fallback_path),
            outcome=record.outcome,
        )


_Queued = tuple[ModelCallRecord, str, str | None]


class OutcomePublisher:
    """Publishes model-call outcomes in the background, dropping them rather than waiting.

    Call it (the :class:`~spine.platform.metering.OutcomeHook` shape) from a running event loop;
    the publisher task starts with the first call. :meth:`close` publishes what is queued,
    for at most ``drain_timeout`` seconds, then stops.
    """

    def __init__(self, bus: NatsBus, *, max_queued: int = 10_000) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_warning = -_WARN_EVERY
        self.published = 0
        """Events JetStream acknowledged."""
        self.dropped = 0
        """Events lost: the queue was full, NATS was down or JetStream did not acknowledge."""

    def __call__(
        self, record: ModelCallRecord, *, strategy: str, task_category: str | None
    ) -> None:
        """Queue the outcome of one call; never blocks and never raises."""
        if self._closed:
            self._drop(record, "the publisher is closed")
            return
        try:
            self._queue.put_nowait((record, strategy, task_category))
        except asyncio.QueueFull:
            self._drop(record, f"{self._queue.maxsize} outcomes are waiting already")
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish_all(), name="outcome-publisher"
            )

    async def _publish_all(self) -> None:
        while True:
            record, strategy, task_category = await self._queue.get()
            try:
                await self._publish(record, strategy, task_category)
            finally:
                self._queue.task_done()

    async def _publish(self, record: ModelCallRecord, strategy: str, category: str | None) -> None:
        try:
            event = ModelOutcome.of(record, strategy=strategy, task_category=category)
            await self._bus.publish_durable(
                outcome_subject(record.tenant),
                event.model_dump_json().encode(),
                msg_id=event.id,
            )
        except ServiceUnavailable as exc:
            self._drop(record, exc.message)
        except Exception as exc:  # a bug here must not stop the publisher
            self._drop(record, repr(exc))
        else:
            self.published += 1

    def _drop(self, record: ModelCallRecord, reason: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(
                "outcome of a %s call not published (%s); %d dropped so far, the usage "
                "ledger still has every call",
                record.model,
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
        left = self._queue.qsize()
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        if left:
            logger.warning("%d outcome events not published at shutdown", left)
