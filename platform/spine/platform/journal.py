"""The step journal: what an agent's loop already did for a task, committed step by step.

A loop records each model answer and each tool result under a key that names the step
(``s3.model``, ``s3.tool.<call id>``) before it moves on. When the task is redelivered after a
crash, the loop reads the journal and replays those steps instead of calling the model or the
tool again, then goes on from the first step that has no entry.

A write is fenced by the attempt number: only the attempt that holds the task's claim can
record, so a stale worker that lost its claim cannot add steps behind the new attempt's back.
The first write of a key wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from spine.platform.db import Database
from spine.platform.schema import JsonType, TaskRow, TaskStepRow, UtcDateTime, utcnow

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

    def __init__(self, db: Database) -> None:
        self._db = db

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
        self, task_id: str, *, attempt: int, key: str, kind: StepKind, data: dict[str, Any]
    ) -> bool:
        """Commit one step; False when ``attempt`` no longer holds the task or the key is taken."""
        owns = sa.exists().where(
            _TASKS.c.id == task_id, _TASKS.c.attempts == attempt, _TASKS.c.state == "running"
        )
        row = sa.select(
            sa.literal(task_id, sa.String()),
            sa.literal(key, sa.String()),
            sa.literal(kind, sa.String()),
            sa.literal(attempt, sa.Integer()),
            sa.literal(data, JsonType),
            sa.literal(utcnow(), UtcDateTime()),
        ).where(owns)
        insert = sa.insert(_STEPS).from_select(
            ["task_id", "key", "kind", "attempt", "data", "created_at"], row
        )
        try:
            async with self._db.transaction() as conn:
                written = await conn.execute(insert)
        except IntegrityError:
            return False
        return bool(written.rowcount)


_STEPS: sa.Table = TaskStepRow.__table__  # type: ignore[assignment]
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]
