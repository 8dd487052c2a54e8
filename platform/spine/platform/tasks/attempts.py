"""A worker's side of a task: claim an attempt, keep its lease, end it.

Transitions are guarded by the attempt number a worker claimed (a fencing token), so a stale
worker can never overwrite a newer attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.schema import UtcDateTime, utcnow
from spine.platform.tasks._rows import (
    EVENTS,
    TASKS,
    StorePart,
    cancel_error,
    change,
    read_locked,
    task_of,
    transition,
)
from spine.platform.tasks.models import TERMINAL_STATES, Claim, TaskError, TaskEvent

__all__ = ["Attempts"]


class Attempts(StorePart):
    """The worker's side of the task store."""

    async def claim(self, task_id: str, *, lease: float) -> Claim:
        """Start an attempt, unless the task is finished or another worker holds its lease."""
        now = utcnow()
        claimable = sa.and_(
            TASKS.c.cancel_requested == sa.false(),
            sa.or_(TASKS.c.deadline.is_(None), TASKS.c.deadline > now),
            sa.or_(
                TASKS.c.state == "queued",
                sa.and_(TASKS.c.state == "running", TASKS.c.lease_expires_at <= now),
            ),
        )
        async with self._db.transaction() as conn:
            # The common case is one conditional UPDATE; the rest is decided below.
            claimed = await change(
                conn,
                task_id,
                now,
                where=claimable,
                event={"state": "running"},
                values={
                    "state": "running",
                    "attempts": TASKS.c.attempts + 1,
                    "started_at": sa.func.coalesce(
                        TASKS.c.started_at, sa.literal(now, UtcDateTime())
                    ),
                    "lease_expires_at": now + timedelta(seconds=lease),
                },
            )
            if claimed is not None:
                task, event = claimed
                event.data["attempt"] = task.attempts
                await conn.execute(sa.insert(EVENTS).values(event.model_dump()))
                found = Claim(outcome="claimed", task=task, attempt=task.attempts, events=[event])
            else:
                found = await _undecided(conn, task_id, now)
        await self._announce(found.events)
        return found

    async def extend_lease(self, task_id: str, *, attempt: int, lease: float) -> bool:
        """Keep the claim of a running attempt alive; False if the attempt lost it."""
        async with self._db.transaction() as conn:
            updated = await conn.execute(
                sa.update(TASKS)
                .where(
                    TASKS.c.id == task_id,
                    TASKS.c.attempts == attempt,
                    TASKS.c.state == "running",
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease))
            )
            return bool(updated.rowcount)

    async def finish(
        self,
        task_id: str,
        *,
        attempt: int,
        state: Literal["succeeded", "failed", "cancelled", "dead_lettered", "queued"],
        result: dict[str, Any] | None = None,
        error: TaskError | None = None,
        retry_in: float | None = None,
    ) -> list[TaskEvent]:
        """End an attempt; ``queued`` hands the task back for a retry.

        Returns:
            The events written; empty when the attempt no longer owns the task.
        """
        extra: dict[str, Any] = {"attempt": attempt}
        if retry_in is not None:
            extra["retry_in"] = retry_in
        owned = sa.and_(TASKS.c.attempts == attempt, TASKS.c.state == "running")
        async with self._db.transaction() as conn:
            ended = await transition(
                conn,
                task_id,
                utcnow(),
                state=state,
                error=error.stored() if error is not None else None,
                where=owned,
                result=result,
                **extra,
            )
        written = [ended[1]] if ended is not None else []
        await self._announce(written)
        return written

    async def dead_letter(self, task_id: str, *, reason: TaskError) -> list[TaskEvent]:
        """Mark a task dead-lettered whatever attempt holds it; the DLQ holds its message."""
        alive = TASKS.c.state.notin_(TERMINAL_STATES)
        async with self._db.transaction() as conn:
            ended = await transition(
                conn, task_id, utcnow(), state="dead_lettered", error=reason.stored(), where=alive
            )
        written = [ended[1]] if ended is not None else []
        await self._announce(written)
        return written


async def _undecided(conn: AsyncConnection, task_id: str, now: datetime) -> Claim:
    """Say why a task could not be claimed; end it if it must end (cancelled, past deadline)."""
    row = await read_locked(conn, task_id)
    if row is None:
        return Claim(outcome="missing")
    if row["state"] in TERMINAL_STATES:
        return Claim(outcome="finished", task=task_of(row))
    if row["state"] == "waiting_approval" and not row["cancel_requested"]:
        return Claim(outcome="paused", task=task_of(row))
    if row["state"] == "running" and not row["cancel_requested"]:
        remaining = (row["lease_expires_at"] - now).total_seconds()
        return Claim(outcome="busy", task=task_of(row), retry_in=remaining)
    if row["cancel_requested"]:
        state, error = "cancelled", cancel_error()
    else:
        state, error = (
            "failed",
            TaskError(
                type="deadline_exceeded",
                message="the deadline passed before the task could run",
            ).stored(),
        )
    ended = await transition(conn, task_id, now, state=state, error=error)
    assert ended is not None
    return Claim(outcome="finished", task=ended[0], events=[ended[1]])
