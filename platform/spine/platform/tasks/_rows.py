"""The statements every part of the task store shares: a task's row, its events, a transition.

Every state change writes its progress event in the same transaction, and the task row's
``event_seq`` counter numbers those events, so each task's feed is gap-free and ordered even
when the API (cancel) and a worker (result) write at once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.schema import TaskEventRow, TaskRow, TaskStepRow
from spine.platform.tasks.models import TERMINAL_STATES, Task, TaskError, TaskEvent, TaskSubmission

logger = logging.getLogger(__name__)


class TaskEventSink(Protocol):
    """Told of progress events once they are committed (live followers are nudged)."""

    async def __call__(self, events: list[TaskEvent]) -> None:
        """Announce ``events``; stored already, so a failure loses nothing."""


class StorePart:
    """What each part of :class:`~spine.platform.tasks.TaskStore` shares."""

    def __init__(self, db: Database, *, announce: TaskEventSink | None = None) -> None:
        self._db = db
        self._sink = announce
        # PostgreSQL runs the hot statements of :mod:`._pg` through asyncpg; SQLite these.
        self._pg = not db.is_sqlite

    async def _announce(self, events: list[TaskEvent]) -> None:
        """Announce committed events: a guarantee of every write, not a duty of callers."""
        if not events or self._sink is None:
            return
        try:
            await self._sink(events)
        except Exception as exc:  # the database copy is the record; followers re-read it
            logger.debug("progress of %s not announced: %r", events[0].task_id, exc)


CHUNK = 500
TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]
EVENTS: sa.Table = TaskEventRow.__table__  # type: ignore[assignment]
STEPS: sa.Table = TaskStepRow.__table__  # type: ignore[assignment]


async def change(
    conn: AsyncConnection,
    task_id: str,
    now: datetime,
    *,
    values: dict[str, Any],
    event: dict[str, Any],
    event_type: str = "state",
    where: sa.ColumnElement[bool] | None = None,
    touch: bool = True,
) -> tuple[Task, TaskEvent] | None:
    """Update a task and number its next event in one statement; the caller inserts the event.

    The UPDATE takes the row lock (on SQLite, the database lock), so concurrent writers of
    one task get consecutive event numbers.
    """
    condition = TASKS.c.id == task_id if where is None else sa.and_(TASKS.c.id == task_id, where)
    changes = {**values, "event_seq": TASKS.c.event_seq + 1}
    if touch:
        changes["updated_at"] = now
    result = await conn.execute(
        sa.update(TASKS).where(condition).values(changes).returning(*TASKS.c)
    )
    row = result.mappings().one_or_none()
    if row is None:
        return None
    task = task_of(row)
    return task, TaskEvent(
        **event_values(task_id, task.tenant, row["event_seq"], event_type, dict(event), now)
    )


async def transition(
    conn: AsyncConnection,
    task_id: str,
    now: datetime,
    *,
    state: str,
    error: dict[str, Any] | None = None,
    where: sa.ColumnElement[bool] | None = None,
    result: dict[str, Any] | None = None,
    cancel_requested: bool | None = None,
    **data: Any,
) -> tuple[Task, TaskEvent] | None:
    """Move a task to ``state`` and write its state event; None if ``where`` does not hold."""
    values: dict[str, Any] = {"state": state, "result": result, "lease_expires_at": None}
    if error is not None:
        values["error"] = error
    elif state == "succeeded":  # an earlier attempt's error is history (its events keep it)
        values["error"] = None
    if state in TERMINAL_STATES:
        values["finished_at"] = now
    if cancel_requested is not None:
        values["cancel_requested"] = cancel_requested
    payload: dict[str, Any] = {"state": state, **data}
    if error is not None:
        payload["error"] = error
    changed = await change(conn, task_id, now, values=values, event=payload, where=where)
    if changed is None:
        return None
    task, event = changed
    if task.attempts:
        event.data.setdefault("attempt", task.attempts)
    await conn.execute(sa.insert(EVENTS).values(event.model_dump()))
    return task, event


async def read_locked(conn: AsyncConnection, task_id: str) -> sa.RowMapping | None:
    # FOR UPDATE serialises writers of one task on PostgreSQL. SQLite ignores it, and its driver
    # begins the transaction only at the first write: a no-op write first takes the database's
    # write lock before the row is read.
    if conn.dialect.name == "sqlite":
        await conn.execute(
            sa.update(TASKS).where(TASKS.c.id == task_id).values(event_seq=TASKS.c.event_seq)
        )
    query = select_task(task_id).with_for_update()
    row: sa.RowMapping | None = (await conn.execute(query)).mappings().one_or_none()
    return row


def new_task_values(
    task_id: str,
    submission: TaskSubmission,
    *,
    tenant: str,
    key_id: str | None,
    idempotency_key: str | None,
    fingerprint: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "tenant": tenant,
        "key_id": key_id,
        "agent": submission.agent,
        "input": submission.input,
        "metadata": submission.metadata,
        "priority": submission.priority,
        "deadline": submission.deadline,
        "state": "queued",
        "attempts": 0,
        "event_seq": 1,
        "error": None,
        "result": None,
        "idempotency_key": idempotency_key,
        "request_hash": fingerprint,
        "cancel_requested": False,
        "published_at": None,
        "lease_expires_at": None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
    }


def insert_new(conn: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that skips rows colliding with a unique key (PostgreSQL and SQLite alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def select_task(task_id: str) -> sa.Select[Any]:
    return sa.select(TASKS).where(TASKS.c.id == task_id)


def task_of(row: Any) -> Task:
    return Task(
        id=row["id"],
        tenant=row["tenant"],
        key_id=row["key_id"],
        agent=row["agent"],
        state=row["state"],
        input=row["input"],
        metadata=row["metadata"],
        priority=row["priority"],
        deadline=row["deadline"],
        attempts=row["attempts"],
        result=row["result"],
        error=row["error"],
        cancel_requested=row["cancel_requested"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        approval=row.get("approval"),
        approval_expires_at=row.get("approval_expires_at"),
        resumes=row.get("resumes") or 0,
    )


def event_values(
    task_id: str, tenant: str, seq: int, type_: str, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "tenant": tenant,
        "seq": seq,
        "type": type_,
        "data": data,
        "created_at": now,
    }


def cancel_error() -> dict[str, Any]:
    """The error of a task cancelled before it ran (or while it waited for approval)."""
    return TaskError(type="cancelled", message="the task was cancelled").stored()
