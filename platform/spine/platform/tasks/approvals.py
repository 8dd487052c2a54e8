"""Pauses for a person's approval: a paused task holds no worker until someone decides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from spine.platform.errors import Conflict, NotFound
from spine.platform.schema import utcnow
from spine.platform.tasks._rows import EVENTS, STEPS, TASKS, StorePart, change, read_locked, task_of
from spine.platform.tasks.models import Task, TaskEvent

__all__ = ["Approvals"]


class Approvals(StorePart):
    """The approval side of the task store."""

    async def pause(
        self, task_id: str, *, attempt: int, until: datetime, proposal: dict[str, Any]
    ) -> list[TaskEvent]:
        """End an attempt waiting for approval of ``proposal``; no worker holds the task then.

        Returns:
            The state event; empty when the attempt no longer owns the task.
        """
        owned = sa.and_(TASKS.c.attempts == attempt, TASKS.c.state == "running")
        async with self._db.transaction() as conn:
            changed = await change(
                conn,
                task_id,
                utcnow(),
                where=owned,
                event={
                    "state": "waiting_approval",
                    "attempt": attempt,
                    "proposal": proposal,
                    "expires_at": until.isoformat(),
                },
                values={
                    "state": "waiting_approval",
                    "lease_expires_at": None,
                    "approval": proposal,
                    "approval_expires_at": until,
                    "resumes": TASKS.c.resumes + 1,
                },
            )
            if changed is None:
                return []
            await conn.execute(sa.insert(EVENTS).values(changed[1].model_dump()))
        await self._announce([changed[1]])
        return [changed[1]]

    async def decide(
        self, task_id: str, *, tenant: str | None, approved: bool, reason: str | None = None
    ) -> tuple[Task, list[TaskEvent]]:
        """Approve or reject a paused task's proposed call, and queue the task to go on.

        The decision is journalled under the proposal's ``key`` in the same transaction, so
        the resumed loop finds it. ``tenant`` None is the system (an approval that timed out).

        Raises:
            NotFound: No such task (for this tenant).
            Conflict: The task is not waiting for an approval.
        """
        now = utcnow()
        async with self._db.transaction() as conn:
            row = await read_locked(conn, task_id)
            if row is None or (tenant is not None and row["tenant"] != tenant):
                raise NotFound(f"no task {task_id!r}", field="task_id")
            if row["state"] != "waiting_approval" or not row["approval"]:
                raise Conflict(
                    f"task {task_id} is {row['state']}, not waiting for an approval",
                    state=row["state"],
                )
            proposal = row["approval"]
            decision = {"approved": approved, "reason": reason, "by": tenant or "timeout"}
            await conn.execute(
                sa.insert(STEPS).values(
                    task_id=task_id,
                    key=proposal["key"],
                    kind="approval",
                    attempt=row["attempts"],
                    data=decision,
                    created_at=now,
                )
            )
            changed = await change(
                conn,
                task_id,
                now,
                event={"state": "queued", "decision": decision, "proposal": proposal},
                values={
                    "state": "queued",
                    "approval": None,
                    "approval_expires_at": None,
                    "published_at": None,
                },
            )
            assert changed is not None
            await conn.execute(sa.insert(EVENTS).values(changed[1].model_dump()))
        await self._announce([changed[1]])
        return changed[0], [changed[1]]

    async def expired_approvals(self, *, limit: int) -> list[Task]:
        """Find paused tasks whose approval was not given in time."""
        query = (
            sa.select(TASKS)
            .where(TASKS.c.state == "waiting_approval", TASKS.c.approval_expires_at < utcnow())
            .order_by(TASKS.c.approval_expires_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [task_of(r) for r in (await conn.execute(query)).mappings()]
