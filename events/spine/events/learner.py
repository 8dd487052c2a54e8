"""The learning consumer: reads OUTCOMES and turns outcomes, task signals and feedback into
versions of the routing weights (a process role of its own: ``spine learner``).

Written with FastStream's NATS JetStream support: a durable pull consumer (``learner``) takes
batches of events; the pipeline per batch is

1. parse each event (a malformed one is logged and skipped, never retried forever);
2. skip events already applied (the ids a stored snapshot includes, and those applied since);
3. find the facts of calls it no longer remembers (in the usage ledger) for feedback and task
   signals, then fold each event's observations into the weights
   (:func:`~spine.platform.learning.joins.observations_of`);
4. every ``checkpoint_seconds`` (or ``checkpoint_events``): store a new version of the weights
   with the ids of the events it includes (one transaction), announce the version
   (:class:`~spine.events.weights.WeightsChannel`), and only then acknowledge the events.

So a learner that dies loses nothing: the events after its last snapshot are redelivered and
applied again onto it. Events are applied in stream order and the weights are deterministic, so
replaying the stream from its start (``spine learner --replay``) rebuilds the same weights. A
learner that is down or behind never blocks a call: routers keep the weights they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from faststream import Context
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.params import NoCast

from spine.events.bus import server_list
from spine.events.streams import OUTCOMES_STREAM
from spine.events.subjects import OUTCOMES_ALL
from spine.platform.errors import ServiceUnavailable
from spine.platform.learning.joins import CallFacts, CallMemory, observations_of
from spine.platform.learning.snapshots import Snapshot
from spine.platform.learning.weights import RoutingWeights

__all__ = ["LEARNER_CONSUMER", "Learner", "SnapshotKeeper", "learner_broker"]

logger = logging.getLogger(__name__)


class _SupervisorChatter(logging.Filter):
    """Drop FastStream's INFO line for each subscriber task that ends (every clean stop)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO and record.getMessage().endswith("is being executed...")
        )


_broker_logger = logging.getLogger(f"{__name__}.broker")
_broker_logger.addFilter(_SupervisorChatter())

LEARNER_CONSUMER = "learner"
# A fetch returns 50 ms after its first event; after a small batch the consumer waits 0.2 s
# before fetching again. Fetches that waited 0.5 s took events one by one as they were
# published (a wake-up each); these take what piled up at once. Learner CPU per event, events
# published steadily (outcomes and ratings over 4 models): at 100/s 0.571 -> 0.418 ms, at 300/s
# 0.473 -> 0.296, at 1,000/s 0.350 -> 0.224; nearly idle (2/s) it polls more, +8 ms a second.
# An event is applied as soon as its batch comes: only the next one waits.
_FETCH_WAIT = 0.05
_LINGER = 0.2
_KINDS = frozenset({"model.outcome", "task.signal", "feedback"})


class SnapshotKeeper(Protocol):
    """Where the learner keeps snapshots and applied ids (:class:`SnapshotStore` in production)."""

    async def latest(self) -> Snapshot | None:
        """The newest snapshot."""
        ...

    async def save(
        self, *, version: int, state: dict[str, Any], events: int, applied: Sequence[str]
    ) -> None:
        """Store a snapshot with the ids of the events it includes."""
        ...

    async def applied(self, event_ids: Iterable[str]) -> set[str]:
        """Which ids a stored snapshot includes."""
        ...

    async def call_facts(
        self, *, call_ids: Iterable[str] = (), task_ids: Iterable[str] = ()
    ) -> list[CallFacts]:
        """Facts of calls the learner's memory lost."""
        ...


@dataclass(slots=True)
class Learner:
    """Applies learning events to the routing weights, and checkpoints them."""

    store: SnapshotKeeper
    announce: Callable[[int], Awaitable[None]] | None = None
    checkpoint_seconds: float = 1.0
    checkpoint_events: int = 5000
    weights: RoutingWeights = field(default_factory=RoutingWeights)
    memory: CallMemory = field(default_factory=CallMemory)
    version: int = 0
    """The version of the last stored snapshot."""
    applied: int = 0
    """Events folded in, over the learner's whole history (snapshots carry it on)."""
    _pending: list[str] = field(default_factory=list)
    _pending_set: set[str] = field(default_factory=set)
    _held: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _last_checkpoint: float = field(default_factory=time.monotonic)
    _background: asyncio.Future[bool] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _saving: asyncio.Lock = field(default_factory=asyncio.Lock)
    _taken: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0
    """Events handed to :meth:`take` (duplicates and malformed ones included)."""

    async def start(self) -> None:
        """Resume from the newest stored snapshot, if there is one."""
        latest = await self.store.latest()
        if latest is not None:
            self.weights = await asyncio.to_thread(RoutingWeights.from_dict, latest.state)
            self.version, self.applied = latest.version, latest.events
            logger.info("learner resumes from weights version %d", self.version)

    async def take(
        self, events: Sequence[Any], *, ack: Callable[[], Awaitable[None]] | None = None
    ) -> int:
        """Apply a batch of events (parsed JSON); ``ack`` is called once they are stored.

        Returns:
            How many events changed something (the rest were duplicates or malformed).
        """
        async with self._lock:
            fresh = [e for e in events if _well_formed(e)]
            ids = [_event_id(e) for e in fresh]
            stored = await self.store.applied(i for i in ids if i not in self._pending_set)
            taken = 0
            todo = []
            for event, event_id in zip(fresh, ids, strict=True):
                if event_id in stored or event_id in self._pending_set:
                    continue
                self._pending_set.add(event_id)
                self._pending.append(event_id)
                todo.append(event)
            await self._recall(todo)
            for event in todo:
                for observation in observations_of(event, self.memory):
                    try:
                        self.weights.observe(observation)
                    except Exception as exc:  # another feature space, a bad value: skip it
                        logger.warning("observation of %s skipped: %s", observation.model, exc)
                taken += 1
            self.applied += taken
            self.seen += len(events)
            self._taken.set()
            if ack is not None:
                self._held.append(ack)
        if self._due() and not self._saving.locked():
            self._background = asyncio.ensure_future(self.checkpoint())
        return taken

    async def until_applied(self, seen: int) -> None:
        """Wait until :meth:`take` was handed ``seen`` events in all (the replay's step)."""
        while self.seen < seen:
            self._taken.clear()
            await self._taken.wait()

    async def checkpoint(self) -> bool:
        """Store a new version if anything changed, announce it, then acknowledge the events.

        The state is copied under the lock, then stored while new batches go on being applied.

        Returns:
            Whether the events held were acknowledged (False: the store was down; they stay
            held and are tried again).
        """
        async with self._saving:
            async with self._lock:
                if not self._pending and not self._held:
                    self._last_checkpoint = time.monotonic()
                    return True
                pending, held = list(self._pending), list(self._held)
                state = await asyncio.to_thread(self.weights.to_dict) if pending else None
                applied = self.applied
                self._last_checkpoint = time.monotonic()
            try:
                if state is not None:
                    await self.store.save(
                        version=self.version + 1, state=state, events=applied, applied=pending
                    )
                    self.version += 1
            except ServiceUnavailable as exc:
                logger.warning("weights not stored (%s); the events stay unacknowledged", exc)
                return False
            async with self._lock:
                done = set(pending)
                self._pending = [i for i in self._pending if i not in done]
                self._pending_set -= done
                self._held = self._held[len(held) :]
        if state is not None and self.announce is not None:
            try:
                await self.announce(self.version)
            except Exception as exc:  # the routers catch up at the next announcement
                logger.warning("weights version %d not announced: %r", self.version, exc)
        for ack in held:
            try:
                await ack()
            except Exception as exc:  # redelivered later, then skipped as applied
                logger.debug("ack failed: %r", exc)
        return True

    def _due(self) -> bool:
        return bool(self._pending) and (
            len(self._pending) >= self.checkpoint_events
            or time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds
        )

    async def run_checkpoints(
        self, stop: asyncio.Event, *, lost: asyncio.Event | None = None
    ) -> None:
        """Checkpoint on time even when no new batch comes; a last one at ``stop``, none once
        the lead is ``lost`` (another learner may store versions by then)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.checkpoint_seconds)
            if lost is not None and lost.is_set():
                return
            await self.checkpoint()

    async def _recall(self, events: list[dict[str, Any]]) -> None:
        """Read back the facts of calls a feedback or task signal needs and memory lost.

        A feedback's call whose outcome comes earlier in the same batch is not looked for: the
        outcome is remembered before the feedback is applied.
        """
        outcomes: set[str] = set()
        calls: list[str] = []
        for e in events:
            if e["type"] == "model.outcome":
                outcomes.add(e["id"])
            elif e["type"] == "feedback":
                calls.extend(
                    i
                    for i in e.get("call_ids") or []
                    if i not in outcomes and self.memory.call(i) is None
                )
        tasks = [
            str(e["task_id"])
            for e in events
            if e["type"] == "task.signal" and not self.memory.knows_task(str(e["task_id"]))
        ]
        if calls or tasks:
            for facts in await self.store.call_facts(call_ids=calls, task_ids=tasks):
                self.memory.remember(facts)


def learner_broker(
    url: str,
    learner: Learner,
    *,
    stream: str = OUTCOMES_STREAM,
    subject: str = OUTCOMES_ALL,
    durable: str = LEARNER_CONSUMER,
    batch: int = 1024,
) -> NatsBroker:
    """Build the FastStream broker whose one subscriber feeds ``learner``."""
    broker = NatsBroker(
        server_list(url), max_reconnect_attempts=-1, logger=_broker_logger, log_level=logging.DEBUG
    )

    @broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=batch, timeout=_FETCH_WAIT, batch=True),
        # Acknowledged only once a stored snapshot holds them (see Learner.checkpoint): an
        # error must neither drop (+TERM) nor redeliver them at once.
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(ack_wait=120, max_ack_pending=100_000),
        # Decoded once, here, without validating each event's nested features against a type:
        # the learner checks what it uses, and a malformed event is skipped, not retried.
        decoder=_decoded_batch,
        title="learner",
    )
    async def learn(
        events: NoCast[list[Any]], message: NatsBatchMessage = Context("message")
    ) -> None:
        await learner.take(events, ack=message.ack)
        if len(events) < batch // 4:
            await asyncio.sleep(_LINGER)  # let the next events pile up (see _LINGER)

    return broker


def _decoded_batch(message: NatsBatchMessage) -> list[Any]:
    return [_decoded(raw.data) for raw in message.raw_message]


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _well_formed(event: Any) -> bool:
    if not isinstance(event, dict) or event.get("type") not in _KINDS or not event.get("id"):
        logger.warning("skipped a malformed learning event: %r", str(event)[:200])
        return False
    return True


def _event_id(event: dict[str, Any]) -> str:
    return f"{event['type']}:{event['id']}"[:100]
