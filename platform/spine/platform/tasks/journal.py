"""The step journal: what an agent's loop already did for a task, committed step by step.

A loop records each model answer and each tool result under a key that names the step
(``s3.model``, ``s3.tool.<call id>``) before it moves on. When the task is redelivered after a
crash, the loop reads the journal and replays those steps instead of calling the model or the
tool again, then goes on from the first step that has no entry.

A write is fenced by the attempt number: only the attempt that holds the task's claim can
record, so a stale worker that lost its claim cannot add steps behind the new attempt's back.
The first write of a key wins. A step and the progress events it produced are committed
together: one transaction per step, not one per event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from asyncpg import UniqueViolationError
from sqlalchemy.exc import IntegrityError

from spine.platform.schema import utcnow
from spine.platform.tasks import _pg
from spine.platform.tasks._rows import EVENTS, STEPS, TASKS, StorePart, event_values
from spine.platform.tasks.models import TaskEvent

__all__ = ["JournalEntry", "StepJournal", "StepKind"]

StepKind = Literal["model", "tool", "approval"]


@dataclass(slots=True, kw_only=True, frozen=True)
class JournalEntry:
    """One recorded step."""

    key: str
    kind: str
    attempt: int
    data: dict[str, Any]


class StepJournal(StorePart):
    """Reads and writes the steps of tasks' agent loops."""

    async def entries(self, task_id: str) -> dict[str, JournalEntry]:
        """Return every step recorded for ``task_id``, by key."""
        query = sa.select(STEPS).where(STEPS.c.task_id == task_id)
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).mappings()
            return {
                row["key"]: JournalEntry(
                    key=row["key"], kind=row["kind"], attempt=row["attempt"], data=row["data"]
                )
                for row in rows
            }

    async def record(
        self,
        task_id: str,
        *,
        attempt: int,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> list[TaskEvent] | None:
        """Journal one step of an agent's loop and store its progress events, in one commit.

        Fenced by ``attempt``: None when that attempt no longer holds the task (or the step
        was journalled already), and then nothing is written.
        """
        now = utcnow()
        if self._pg:
            return await self._record_pg(task_id, attempt, key, kind, data, list(events), now)
        owned = sa.and_(
            TASKS.c.id == task_id, TASKS.c.attempts == attempt, TASKS.c.state == "running"
        )
        try:
            async with self._db.transaction() as conn:
                claimed = await conn.execute(
                    sa.update(TASKS)
                    .where(owned)
                    .values(event_seq=TASKS.c.event_seq + len(events), updated_at=now)
                    .returning(TASKS.c.tenant, TASKS.c.event_seq)
                )
                row = claimed.one_or_none()
                if row is None:
                    return None
                await conn.execute(
                    sa.insert(STEPS).values(
                        task_id=task_id,
                        key=key,
                        kind=kind,
                        attempt=attempt,
                        data=data,
                        created_at=now,
                    )
                )
                first = row.event_seq - len(events) + 1
                written = [
                    TaskEvent(**event_values(task_id, row.tenant, first + i, type_, body, now))
                    for i, (type_, body) in enumerate(events)
                ]
                if written:
                    await conn.execute(sa.insert(EVENTS), [event.model_dump() for event in written])
        except IntegrityError:
            return None
        await self._announce(written)
        return written

    async def _record_pg(
        self,
        task_id: str,
        attempt: int,
        key: str,
        kind: StepKind,
        data: dict[str, Any],
        events: list[tuple[str, dict[str, Any]]],
        now: datetime,
    ) -> list[TaskEvent] | None:
        try:
            async with self._db.driver() as raw:
                row = await raw.fetchrow(
                    _pg.RECORD_STEP,
                    task_id,
                    attempt,
                    key,
                    kind,
                    json.dumps(data),
                    _pg.events_param(events),
                    now,
                )
        except UniqueViolationError:  # the step was journalled already
            return None
        if row is None:
            return None
        written = _pg.numbered(task_id, row["tenant"], row["event_seq"], events, now)
        await self._announce(written)
        return written
