"""``spine learner``: the learning consumer as a process of its own.

It needs the database (snapshots, applied events, call facts) and NATS (the OUTCOMES stream, the
weights announcements); it runs until SIGINT/SIGTERM and stores a last snapshot before it
exits. One learner leads at a time (a lock on the database, :meth:`Database.exclusive`):
another one started beside it stands by, consuming nothing, and takes over within
:data:`STANDBY_SECONDS` of the leader's end, or once a frozen leader has been silent for
:data:`SILENT_LEADER_SECONDS` (PostgreSQL). Two consuming at once would each keep half the
evidence and store the same version numbers. ``--replay`` forgets every stored version and
reads the stream again from its start.
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
from spine.platform.db import Database, HeldLock
from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.settings import Settings
from spine.platform.telemetry import process_server

__all__ = ["ObservedLearner", "run_learner"]

logger = logging.getLogger(__name__)


STANDBY_SECONDS = 1.0
"""How often a standing-by learner tries to take the lead."""
SILENT_LEADER_SECONDS = 20.0
"""A leader whose lock has not been pinged this long (it pings every 2 s) is frozen: a standby
ends its database session and leads (:meth:`Database.exclusive`)."""
LEAD_LOCK = "learner"


async def run_learner(settings: Settings, stop: asyncio.Event, *, replay: bool = False) -> None:
    """Consume learning events until ``stop`` is set, while this learner leads."""
    if settings.database_url is None or settings.nats_url is None:
        raise ConfigurationError(
            "the learner needs GENAI_DATABASE_URL and GENAI_NATS_URL (`spine up` sets them)",
            field="GENAI_DATABASE_URL" if settings.database_url is None else "GENAI_NATS_URL",
        )
    db = Database(settings.database_url, timeout=settings.database_timeout)
    bus = NatsBus(settings.nats_url, name="spine-learner")
    metrics = process_server(settings.metrics, role="learner")
    try:
        await metrics.start()
        await db.migrate()
        await stream_layout(settings).ensure_when_ready(bus)
        standing_by = False
        while not stop.is_set():
            try:
                async with db.exclusive(LEAD_LOCK, take_over_after=SILENT_LEADER_SECONDS) as lost:
                    if lost is not None:
                        logger.info("this learner leads")
                        standing_by = False
                        await _lead(settings, db, bus, stop, lost, replay=replay)
                        replay = False  # done once, by the first lead
                        continue
                    if not standing_by:  # the lock is another learner's
                        logger.info(
                            "another learner leads; this one stands by%s",
                            " (the replay starts when it leads: stop the other learner)"
                            if replay
                            else "",
                        )
                        standing_by = True
            except ServiceUnavailable as exc:  # the database, while taking the lead or leading
                logger.warning("the learner cannot lead now: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STANDBY_SECONDS)
    finally:
        await metrics.close()
        await bus.close()
        await db.dispose()


async def _lead(
    settings: Settings,
    db: Database,
    bus: NatsBus,
    stop: asyncio.Event,
    lost: HeldLock,
    *,
    replay: bool,
) -> None:
    """Consume until ``stop``, or until the lead is ``lost`` (then another learner may lead:
    the events held here are left unacknowledged, for it)."""
    store = SnapshotStore(  # no write once the lead is lost
        db,
        fence=lost,
        # An event's id outlives the event in OUTCOMES (an hour more, for clocks that differ).
        keep_applied=settings.streams.outcomes_max_age + 3600,
    )
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
    await learner.start()  # from the newest stored version, whoever stored it
    broker = learner_broker(settings.nats_url or "", learner)
    await broker.start()
    logger.info("learner consuming %s (weights version %d)", OUTCOMES_STREAM, learner.version)
    ended = asyncio.Event()
    watchers = [
        asyncio.create_task(_set_when(stop, ended)),
        asyncio.create_task(_set_when(lost, ended)),
    ]
    try:
        await learner.run_checkpoints(ended, lost=lost)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await broker.stop()
        if lost.is_set():
            logger.warning("the learner's lead was lost; it stops consuming and stands by")
        else:
            await learner.checkpoint()


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


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
