"""JetStream streams and consumers, declared once and created idempotently at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from spine.events.bus import NatsBus
from spine.events.subjects import (
    DLQ_EVENTS,
    DLQ_TASKS,
    EVENTS_ALL,
    LANES,
    OUTCOMES_ALL,
    TASKS_ALL,
    lane_subject,
)

__all__ = [
    "DLQ_STREAM",
    "EVENTS_DLQ_STREAM",
    "EVENTS_STREAM",
    "INGEST_CONSUMER",
    "OUTCOMES_STREAM",
    "TASKS_STREAM",
    "TRIGGER_CONSUMER",
    "StreamLayout",
    "StreamWatch",
    "consumer_name",
]

logger = logging.getLogger(__name__)

TASKS_STREAM = "TASKS"
DLQ_STREAM = "TASKS_DLQ"
OUTCOMES_STREAM = "OUTCOMES"
EVENTS_STREAM = "EVENTS"
EVENTS_DLQ_STREAM = "EVENTS_DLQ"
INGEST_CONSUMER = "graph-ingest"
TRIGGER_CONSUMER = "event-triggers"
_DAY = 24 * 3600.0


def consumer_name(lane: str) -> str:
    """Return the durable consumer that workers share for a lane."""
    return f"workers-{lane}"


@dataclass(slots=True, kw_only=True)
class StreamLayout:
    """The streams and worker consumers, sized from the settings."""

    replicas: int = 1
    ack_wait: float = 30.0
    max_deliver: int = 6
    duplicate_window: float = 120.0
    outcomes_max_age: float = 7 * _DAY
    outcomes_max_bytes: int = 1 << 30
    """0: no limit."""
    events_max_age: float = 30 * _DAY
    events_duplicate_window: float = 3600.0

    def task_stream(self) -> StreamConfig:
        """Describe TASKS: a work queue, so an acked task leaves the stream."""
        return StreamConfig(
            name=TASKS_STREAM,
            subjects=[TASKS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            discard=DiscardPolicy.OLD,
        )

    def dlq_stream(self) -> StreamConfig:
        """Describe TASKS_DLQ: dead letters kept for 30 days for inspection and replay."""
        return StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_TASKS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_age=30 * _DAY,
        )

    def outcomes_stream(self) -> StreamConfig:
        """Describe OUTCOMES: one event per routed model call, kept ``outcomes_max_age`` seconds
        and at most ``outcomes_max_bytes`` (the oldest dropped first).

        For the learning consumer; the usage rows in the database are the durable record. The
        byte bound keeps a busy gateway from filling the disk JetStream shares with TASKS; a
        learner that falls further behind than it loses the oldest events, not the newest.
        """
        return StreamConfig(
            name=OUTCOMES_STREAM,
            subjects=[OUTCOMES_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.outcomes_max_age,
            max_bytes=self.outcomes_max_bytes or -1,
            duplicate_window=min(self.duplicate_window, self.outcomes_max_age),
            discard=DiscardPolicy.OLD,
        )

    def worker_consumer(self, lane: str) -> ConsumerConfig:
        """Describe the pull consumer of one lane; explicit acks, bounded deliveries."""
        return ConsumerConfig(
            durable_name=consumer_name(lane),
            filter_subject=lane_subject(lane),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            # The worker dead-letters at max_attempts itself; this cap is the backstop for a
            # task that kills its worker every time before it can be judged.
            max_deliver=self.max_deliver,
            max_ack_pending=10_000,
        )

    def events_stream(self) -> StreamConfig:
        """Describe EVENTS: CloudEvents from other systems, kept ``events_max_age`` seconds.

        Limits retention, not a work queue: ingestion and triggers each read it with their own
        consumer, and a new consumer can replay it. ``Nats-Msg-Id`` (a hash of tenant, source
        and CloudEvents id) drops a repeat within ``events_duplicate_window``.
        """
        return StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.events_max_age,
            duplicate_window=min(self.events_duplicate_window, self.events_max_age),
            discard=DiscardPolicy.OLD,
        )

    def events_dlq_stream(self) -> StreamConfig:
        """Describe EVENTS_DLQ: events that could not be ingested, with the reason, for 30 days."""
        return StreamConfig(
            name=EVENTS_DLQ_STREAM,
            subjects=[DLQ_EVENTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_age=30 * _DAY,
        )

    def events_consumer(self, name: str) -> ConsumerConfig:
        """Describe a durable pull consumer of EVENTS (graph ingestion, triggers).

        Deliveries are not capped: the consumer dead-letters a failing event itself after its
        attempts, and an outage of the graph must not make JetStream drop events.
        """
        return ConsumerConfig(
            durable_name=name,
            filter_subject=EVENTS_ALL,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=max(self.ack_wait, 30.0),
            max_deliver=-1,
            max_ack_pending=20_000,
        )

    async def ensure(self, js: JetStreamContext) -> None:
        """Create or update the streams and consumers; safe from any number of processes."""
        for config in (
            self.task_stream(),
            self.dlq_stream(),
            self.outcomes_stream(),
            self.events_stream(),
            self.events_dlq_stream(),
        ):
            try:
                await js.add_stream(config)
            except BadRequestError:
                await js.update_stream(config)
        for lane in LANES:
            await js.add_consumer(TASKS_STREAM, self.worker_consumer(lane))
        for name in (INGEST_CONSUMER, TRIGGER_CONSUMER):
            await js.add_consumer(EVENTS_STREAM, self.events_consumer(name))
        logger.info(
            "JetStream streams ready: %s, %s, %s, %s, %s",
            TASKS_STREAM,
            DLQ_STREAM,
            OUTCOMES_STREAM,
            EVENTS_STREAM,
            EVENTS_DLQ_STREAM,
        )

    async def ensure_when_ready(self, bus: NatsBus, *, retry_every: float = 1.0) -> None:
        """Wait for NATS, then create the streams, retrying while JetStream is not answering."""
        while True:
            await bus.wait_connected()
            try:
                await self.ensure(bus.js)
                return
            except Exception as exc:  # NATS may drop or JetStream still be starting
                logger.warning("JetStream not ready (%r); retrying", exc)
                await asyncio.sleep(retry_every)


class StreamWatch:
    """Notices when the TASKS stream lost what it held: deleted, recreated, or emptied.

    After nats-server loses its store (a wiped volume, an R1 stream on a dead disk) queued
    tasks would wait the sweeper's ``republish_after`` before they run again. The sweeper asks
    this each pass instead; a missing stream (and its consumers) is recreated at once.
    """

    def __init__(self, layout: StreamLayout) -> None:
        self._layout = layout
        self._last_seq: int | None = None

    async def lost(self, js: JetStreamContext, *, queued: bool) -> bool:
        """Tell whether published, still-queued tasks can no longer be in the stream.

        ``queued`` says that tasks published a while ago are still queued in the database (read
        *before* this call). They are lost when the stream is gone (it is recreated here),
        was recreated since the last call (its sequence numbers start again), or holds no
        message at all: a queued task's message stays in the work queue until its task ends.
        """
        try:
            info = await js.stream_info(TASKS_STREAM)
        except NotFoundError:
            logger.warning("the %s stream is gone; recreating the streams", TASKS_STREAM)
            await self._layout.ensure(js)
            info = await js.stream_info(TASKS_STREAM)
            self._last_seq = info.state.last_seq
            return True
        recreated = self._last_seq is not None and info.state.last_seq < self._last_seq
        self._last_seq = info.state.last_seq
        if recreated:
            logger.warning("the %s stream was recreated", TASKS_STREAM)
        return recreated or (queued and not info.state.messages)
