"""``spine learner``: the learning consumer as a process of its own.

It needs the database (snapshots, applied events, call facts) and NATS (the OUTCOMES stream, the
weights announcements); it runs until SIGINT/SIGTERM and stores a last snapshot before it
exits. Several learners may run (for availability): the durable consumer spreads batches
across them, but each keeps its own weights, so run one unless you accept that. ``--replay``
forgets every stored version and reads the stream again from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import NotFoundError

from spine.events.bus import NatsBus
from spine.events.learner import LEARNER_CONSUMER, Learner, learner_broker
from spine.events.streams import OUTCOMES_STREAM
from spine.events.weights import WeightsChannel
from spine.platform.app.observed import observe_learning_event
from spine.platform.app.streams import stream_layout
from spine.platform.db import Database
from spine.platform.errors import ConfigurationError
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.settings import Settings
from spine.platform.telemetry import process_server

__all__ = ["ObservedLearner", "run_learner"]

logger = logging.getLogger(__name__)


async def run_learner(settings: Settings, stop: asyncio.Event, *, replay: bool = False) -> None:
    """Consume learning events until ``stop`` is set."""
    if settings.database_url is None or settings.nats_url is None:
        raise ConfigurationError(
            "the learner needs GENAI_DATABASE_URL and GENAI_NATS_URL (`spine up` sets them)",
            field="GENAI_DATABASE_URL" if settings.database_url is None else "GENAI_NATS_URL",
        )
    db = Database(settings.database_url, timeout=settings.database_timeout)
    bus = NatsBus(settings.nats_url, name="spine-learner")
    store = SnapshotStore(db)
    metrics = process_server(settings.metrics, role="learner")
    try:
        await metrics.start()
        await db.migrate()
        await stream_layout(settings).ensure_when_ready(bus)
        if replay:
            await store.reset()
            with contextlib.suppress(NotFoundError):
                await bus.js.delete_consumer(OUTCOMES_STREAM, LEARNER_CONSUMER)
            logger.info("replaying %s from its start", OUTCOMES_STREAM)
        channel = WeightsChannel(bus, replicas=settings.streams.replicas)
        learner: Learner = ObservedLearner(  # counts model calls for /metrics
            store,
            announce=channel.announce,
            checkpoint_seconds=settings.learning.checkpoint_seconds,
        )
        await learner.start()
        broker = learner_broker(settings.nats_url, learner)
        await broker.start()
        logger.info("learner consuming %s (weights version %d)", OUTCOMES_STREAM, learner.version)
        try:
            await learner.run_checkpoints(stop)
        finally:
            await broker.stop()
            await learner.checkpoint()
    finally:
        await metrics.close()
        await bus.close()
        await db.dispose()


_REMEMBERED = 100_000


@dataclass(slots=True)
class ObservedLearner(Learner):
    """The learner, counting each learning event it is handed once (redeliveries are not):
    it reads every routed model call, task end and rating, so ``/metrics`` counts them here."""

    _counted: OrderedDict[str, None] = field(default_factory=OrderedDict)

    async def take(
        self, events: Sequence[Any], *, ack: Callable[[], Awaitable[None]] | None = None
    ) -> int:
        """Count the events, then apply them as :meth:`Learner.take` does."""
        try:
            self._count(events)
        except Exception:  # metrics never stop learning
            logger.exception("counting learning events failed")
        return await Learner.take(self, events, ack=ack)

    def _count(self, events: Sequence[Any]) -> None:
        counted = self._counted
        for event in events:
            if not isinstance(event, dict) or not event.get("id"):
                continue
            key = f"{event.get('type')}:{event['id']}"
            if key in counted:
                continue
            counted[key] = None
            if len(counted) > _REMEMBERED:
                counted.popitem(last=False)
            observe_learning_event(event)
