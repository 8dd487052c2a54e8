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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.schema import TaskStepRow
from spine.platform.tasks import TaskEvent, TaskStore

__all__ = ["JournalEntry", "StepJournal", "StepKind"]

StepKind = Literal["model", "tool", "approval"]


@dataclass(slots=True, kw_only=True, frozen=True)
class JournalEntry:
    """One recorded step."""

    key: str
    kind: str
    attempt: int
    data: dict[str, Any]


class StepJournal:
    """Reads and writes the steps of tasks' agent loops."""

    def __init__(self, db: Database, tasks: TaskStore) -> None:
        self._db = db
        self._tasks = tasks

    async def entries(self, task_id: str) -> dict[str, JournalEntry]:
        """Return every step recorded for ``task_id``, by key."""
        query = sa.select(_STEPS).where(_STEPS.c.task_id == task_id)
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
        """Commit one step with its progress events (see :meth:`TaskStore.record_step`).

        None when ``attempt`` no longer holds the task or the key is taken.
        """
        return await self._tasks.record_step(
            task_id, attempt=attempt, key=key, kind=kind, data=data, events=events
        )


_STEPS: sa.Table = TaskStepRow.__table__  # type: ignore[assignment]
