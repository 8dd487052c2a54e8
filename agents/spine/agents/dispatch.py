"""Submitting tasks: commit first, then publish; the sweeper publishes what JetStream missed.

A task is committed to the database before anything else, so an accepted task exists even if
NATS is down. Publishing uses the task id as ``Nats-Msg-Id``, so a re-publish within the
stream's duplicate window is dropped by JetStream, and a later duplicate is dropped by the
worker's claim (a finished task is acked without running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from spine.agents.catalog import AgentCatalog
from spine.events.bus import NatsBus
from spine.events.streams import StreamWatch
from spine.events.subjects import cancel_subject, lane_subject
from spine.platform.errors import Conflict, ServiceUnavailable
from spine.platform.keys import Principal
from spine.platform.periodic import run_every
from spine.platform.schema import utcnow
from spine.platform.settings import ApiSettings
from spine.platform.tasks import Task, TaskStore, TaskSubmission
from spine.platform.telemetry import task_published

__all__ = ["TaskDispatcher"]

logger = logging.getLogger(__name__)

_LOST_BATCH = 500


class TaskDispatcher:
    """Accepts tasks, publishes them to JetStream and keeps the outbox drained."""

    def __init__(
        self,
        *,
        store: TaskStore,
        bus: NatsBus,
        catalog: AgentCatalog,
        settings: ApiSettings,
        watch: StreamWatch | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._catalog = catalog
        self._settings = settings
        self._watch = watch

    async def submit(
        self, submission: TaskSubmission, *, principal: Principal, idempotency_key: str | None
    ) -> tuple[Task, bool]:
        """Validate, commit and publish a task; return it and whether it is new."""
        self._catalog.parse_input(submission.agent, submission.input)
        task, _, created = await self._store.submit(
            submission,
            tenant=principal.tenant,
            key_id=principal.key_id or None,  # a delegated task may have no key
            idempotency_key=idempotency_key,
        )
        if created:
            await self.publish([task])
        return task, created

    async def cancel(self, task_id: str, *, principal: Principal) -> Task:
        """Cancel a task, and tell the worker running it to stop now."""
        task, _ = await self._store.cancel(task_id, tenant=principal.tenant)
        await self._bus.signal(cancel_subject(task_id), b"")
        return task

    async def decide(
        self, task_id: str, *, principal: Principal | None, approved: bool, reason: str | None
    ) -> Task:
        """Approve or reject the call a paused task proposed; the task then goes on.

        ``principal`` None is the sweeper, rejecting an approval nobody gave in time.
        """
        task, _ = await self._store.decide(
            task_id,
            tenant=principal.tenant if principal is not None else None,
            approved=approved,
            reason=reason,
        )
        await self.publish([task])
        return task

    async def publish(self, tasks: list[Task], *, stalled: bool = False) -> int:
        """Publish tasks to their lanes; those JetStream does not ack stay for the sweeper."""
        published: list[str] = []
        for task in tasks:
            payload = json.dumps({"task_id": task.id, "tenant": task.tenant, "agent": task.agent})
            # A re-publish of a lost message comes after the duplicate window and must get past
            # JetStream's dedupe; the worker's claim still runs each task once.
            # A task resumed after a pause is a new message, not a duplicate of its first one.
            first = task.id if not task.resumes else f"{task.id}:resume-{task.resumes}"
            msg_id = f"{task.id}:{utcnow().isoformat()}" if stalled else first
            subject = lane_subject(task.priority)
            # The trace's context rides in the headers (traceparent) when tracing is on.
            headers = {"Spine-Tenant": task.tenant}
            try:
                with task_published(subject, headers, task.id):
                    await self._bus.publish_durable(
                        subject, payload.encode(), msg_id=msg_id, headers=headers
                    )
            except ServiceUnavailable as exc:
                logger.warning("task %s committed, not yet published: %s", task.id, exc.message)
                break
            published.append(task.id)
        await self._store.mark_published(published)
        return len(published)

    async def sweep_once(self) -> int:
        """Publish committed tasks that JetStream never acknowledged or lost; return how many."""
        if not self._bus.connected:
            return 0
        waiting = await self._store.unpublished(grace=self._settings.sweep_interval, limit=500)
        count = await self.publish(waiting)
        count += await self._republish_lost()
        stalled = await self._store.stalled(after=self._settings.republish_after, limit=500)
        count += await self.publish(stalled, stalled=True)
        for task in await self._store.expired_approvals(limit=100):
            with contextlib.suppress(Conflict):  # decided meanwhile
                await self.decide(
                    task.id,
                    principal=None,
                    approved=False,
                    reason="no decision came before the approval expired",
                )
                count += 1
        if count:
            logger.info("sweeper published %d tasks (%d stalled)", count, len(stalled))
        return count

    async def _republish_lost(self) -> int:
        """Publish again, at once, the queued tasks a lost or recreated stream no longer holds."""
        if self._watch is None:
            return 0
        grace = self._settings.sweep_interval
        queued = await self._store.queued_published(before=grace, limit=_LOST_BATCH)
        try:
            lost = await self._watch.lost(self._bus.js, queued=bool(queued))
        except Exception as exc:  # JetStream not answering yet: the next sweep asks again
            logger.debug("could not check the task stream: %r", exc)
            return 0
        count = 0
        while lost and queued:
            count += await self.publish(queued, stalled=True)
            await self._store.republished([task.id for task in queued])
            if len(queued) < _LOST_BATCH:
                break
            queued = await self._store.queued_published(before=grace, limit=_LOST_BATCH)
        if count:
            logger.warning("published %d queued tasks again: the task stream lost them", count)
        return count

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_interval`` seconds until ``stop`` is set."""
        await run_every(
            self.sweep_once, interval=self._settings.sweep_interval, stop=stop, name="task sweep"
        )
