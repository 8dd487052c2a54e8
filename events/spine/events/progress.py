"""Task progress: stored in the database, announced live on NATS, replayed to followers.

The database copy is the record; the NATS message is only a nudge so followers need not poll.
A follower subscribes first, then reads what is stored, then takes live events, filling any gap
(a lost or reordered live message) from the database, so nothing is skipped or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from spine.events.bus import NatsBus
from spine.events.subjects import progress_subject
from spine.platform.errors import ServiceUnavailable
from spine.platform.tasks import TaskEvent, TaskStore

__all__ = ["ProgressFeed", "ProgressNudges"]

logger = logging.getLogger(__name__)


class ProgressNudges:
    """Tells live followers of events already stored (the task store's announcement sink)."""

    def __init__(self, bus: NatsBus) -> None:
        self._bus = bus

    async def __call__(self, events: list[TaskEvent]) -> None:
        """Publish each event on its task's progress subject; best effort."""
        for event in events:
            await self._bus.signal(
                progress_subject(event.task_id), event.model_dump_json().encode()
            )


class ProgressFeed:
    """Follows the progress events of tasks: stored ones first, then live ones.

    A follower reads the stored events once, then takes each new one from its NATS nudge (which
    carries it); it reads the database again only when a nudge comes out of order (one was
    lost), once ``settle`` seconds after it subscribed, and every ``safety_poll`` seconds, as a
    safety net. While NATS is away it reads the database every ``poll_interval`` seconds
    instead, and subscribes again once NATS is back.

    The read after ``settle``: a subscription is not at once seen by the publishes of other
    connections (nats-server 2.15 here dropped 33 of 300 messages another connection published
    right after the subscribe returned, and still 12-17 of 300 after a PING/PONG confirmed it;
    none 10 ms later). A task that ends in that moment would otherwise leave its stream
    waiting for the safety poll: 30 s, for about 1 task in 100 in ``bench/dispatch.py``.
    """

    def __init__(
        self,
        store: TaskStore,
        bus: NatsBus,
        *,
        poll_interval: float = 1.0,
        safety_poll: float = 30.0,
        settle: float = 0.1,
    ) -> None:
        self._store = store
        self._bus = bus
        self._poll_interval = poll_interval
        self._safety_poll = safety_poll
        self._settle = settle

    async def event_at(self, task_id: str, *, tenant: str | None, seq: int) -> TaskEvent | None:
        """Return the task's event number ``seq``, or None when its feed has none."""
        if seq < 1:
            return None
        found = await self._store.events(task_id, tenant=tenant, after_seq=seq - 1, limit=1)
        return found[0] if found and found[0].seq == seq else None

    async def _read_through_outage(
        self, task_id: str, *, tenant: str | None, after: int
    ) -> list[TaskEvent]:
        """Read the stored events after ``after``; while the database is away, wait and read
        again (1 s doubling to 15 s): the feed stays open (its pings with it) and goes on where
        it was once the database answers, instead of breaking off mid-stream."""
        wait = self._poll_interval
        while True:
            try:
                return await self._store.events(task_id, tenant=tenant, after_seq=after)
            except ServiceUnavailable as exc:
                logger.info("task %s's feed waits for the database: %s", task_id, exc.message)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 15.0)

    async def follow(
        self, task_id: str, *, tenant: str | None, after_seq: int = 0
    ) -> AsyncIterator[TaskEvent]:
        """Yield the task's events after ``after_seq``, live, until its final state.

        A follower that already saw the final event (``after_seq`` is its number) is given it
        once more and the feed ends: a client that reconnects after the end learns it at once.
        Callers check first that the feed has an event ``after_seq`` (:meth:`event_at`).
        """
        seen = await self.event_at(task_id, tenant=tenant, seq=after_seq)
        if seen is not None and seen.is_final:
            yield seen
            return
        live: asyncio.Queue[TaskEvent] = asyncio.Queue()
        clock = asyncio.get_running_loop().time
        subscription = await self._subscribe(task_id, live)
        # When a read covers the moment the subscription was not yet seen (see the class).
        settled_at = None if subscription is None else clock() + self._settle
        last = after_seq
        read = True  # the stored events first
        try:
            while True:
                if read:
                    stored = await self._read_through_outage(task_id, tenant=tenant, after=last)
                    for event in stored:
                        yield event
                        last = event.seq
                        if event.is_final:
                            return
                    read = False
                if subscription is None:
                    subscription = await self._subscribe(task_id, live)
                    settled_at = None if subscription is None else clock() + self._settle
                wait = self._safety_poll
                if settled_at is not None:
                    wait = max(settled_at - clock(), 0.0)
                if subscription is None or not self._bus.connected:
                    wait = self._poll_interval  # nudges may be lost: read the database
                try:
                    event = await asyncio.wait_for(live.get(), wait)
                except TimeoutError:
                    read = True
                    if settled_at is not None and clock() >= settled_at:
                        settled_at = None  # this read covers it
                    continue
                while True:  # what the nudges brought, in order; a gap is read from the database
                    if event.seq == last + 1:
                        yield event
                        last = event.seq
                        if event.is_final:
                            return
                    elif event.seq > last + 1:
                        read = True
                    if live.empty():
                        break
                    event = live.get_nowait()
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _subscribe(self, task_id: str, live: asyncio.Queue[TaskEvent]) -> Subscription | None:
        async def on_message(msg: Msg) -> None:
            try:
                live.put_nowait(TaskEvent.model_validate_json(msg.data))
            except ValidationError:
                logger.warning("ignored a malformed progress message on %s", msg.subject)

        if not self._bus.connected:
            return None
        try:
            return await self._bus.subscribe(progress_subject(task_id), on_message)
        except ServiceUnavailable:
            # Without NATS the follower still works, by polling the database.
            return None
