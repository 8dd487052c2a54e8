"""The outbox: tasks committed but never acknowledged by JetStream, or seemingly lost by it.

Submitting commits the task first and publishes it after; the sweeper re-publishes what
JetStream never acknowledged (NATS was down at submit) and what it seems to have lost.

Publication is recorded behind (:meth:`Outbox.mark_published` queues, one ``UPDATE`` per
~20 ms writes every mark gathered, its commit not waiting for the disk): a submit's reply waits
for no third statement. A mark lost with its process (or with PostgreSQL, before its WAL was
flushed) leaves the task looking unpublished; the sweeper publishes it again with the same
message id, which JetStream drops as a duplicate (or the worker's claim skips: the task runs
once). The sweeper's reads first write this process's pending marks.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.schema import utcnow
from spine.platform.tasks import _pg
from spine.platform.tasks._rows import TASKS, StorePart, TaskEventSink, task_of
from spine.platform.tasks.models import Task
from spine.platform.write_behind import WriteBehind

__all__ = ["Outbox"]


class Outbox(StorePart):
    """The outbox side of the task store."""

    def __init__(self, db: Database, *, announce: TaskEventSink | None = None) -> None:
        super().__init__(db, announce=announce)
        self._marks: WriteBehind[str] = WriteBehind(
            self._write_marks, what="publish marks", batch=500
        )

    async def mark_published(self, task_ids: list[str]) -> None:
        """Record, behind, that JetStream acknowledged these tasks (see the module's notes)."""
        for task_id in task_ids:
            await self._marks.submit(task_id)

    async def flush_marks(self) -> None:
        """Write the publish marks queued so far (never raises; see :meth:`WriteBehind.flush`)."""
        await self._marks.flush()

    async def close(self) -> None:
        """Write what is queued and stop the background writer."""
        await self._marks.close()

    async def _write_marks(self, task_ids: list[str]) -> None:
        if self._pg:
            async with self._db.driver() as raw:
                await raw.execute(_pg.MARK_PUBLISHED, task_ids, utcnow())
            return
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(TASKS)
                .where(TASKS.c.id.in_(task_ids), TASKS.c.published_at.is_(None))
                .values(published_at=utcnow())
            )

    async def unpublished(self, *, grace: float, limit: int) -> list[Task]:
        """Find queued tasks that JetStream never acknowledged (NATS was down at submit)."""
        await self.flush_marks()
        cutoff = utcnow() - timedelta(seconds=grace)
        query = (
            sa.select(TASKS)
            .where(
                TASKS.c.state == "queued",
                TASKS.c.published_at.is_(None),
                TASKS.c.created_at < cutoff,
            )
            .order_by(TASKS.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [task_of(r) for r in (await conn.execute(query)).mappings()]

    async def queued_published(self, *, before: float, limit: int) -> list[Task]:
        """Find queued tasks JetStream acknowledged more than ``before`` seconds ago."""
        await self.flush_marks()
        cutoff = utcnow() - timedelta(seconds=before)
        query = (
            sa.select(TASKS)
            .where(
                TASKS.c.state == "queued",
                TASKS.c.published_at.is_not(None),
                TASKS.c.published_at < cutoff,
            )
            .order_by(TASKS.c.published_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [task_of(r) for r in (await conn.execute(query)).mappings()]

    async def republished(self, task_ids: list[str]) -> None:
        """Restart the outbox clock of tasks published again (they are not lost any more)."""
        if not task_ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(TASKS)
                .where(TASKS.c.id.in_(task_ids), TASKS.c.state == "queued")
                .values(published_at=utcnow())
            )

    async def stalled(self, *, after: float, limit: int) -> list[Task]:
        """Find tasks whose message JetStream seems to have lost.

        These are tasks published but still queued long after, or running with a lease that
        expired long ago (its worker died and no redelivery came).
        """
        await self.flush_marks()
        now = utcnow()
        cutoff = now - timedelta(seconds=after)
        query = (
            sa.select(TASKS)
            .where(
                sa.or_(
                    sa.and_(TASKS.c.state == "queued", TASKS.c.published_at < cutoff),
                    sa.and_(TASKS.c.state == "running", TASKS.c.lease_expires_at < cutoff),
                )
            )
            .order_by(TASKS.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
            if rows:
                # Restart the clock so the next sweep does not publish them again at once.
                await conn.execute(
                    sa.update(TASKS)
                    .where(TASKS.c.id.in_([r["id"] for r in rows]), TASKS.c.state == "queued")
                    .values(published_at=now)
                )
        return [task_of(r) for r in rows]
