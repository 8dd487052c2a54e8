"""Tasks in the database, the source of truth: submission, reading, cancelling, progress.

:class:`TaskStore` is one object over four seams, each in a module of its own: submission and
reading (here), the outbox (:mod:`.outbox`), a worker's attempts (:mod:`.attempts`) and pauses
for approval (:mod:`.approvals`); the step journal is :mod:`.journal`. Every write that stores
progress events announces them once committed, through the sink the store was given, so no
caller has to remember to (all but a new task's first event, which no one can be following yet).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.errors import BadRequest, Conflict, IdempotencyConflict, NotFound
from spine.platform.schema import utcnow
from spine.platform.tasks import _pg
from spine.platform.tasks._rows import (
    CHUNK,
    EVENTS,
    TASKS,
    StorePart,
    cancel_error,
    change,
    event_values,
    insert_new,
    new_task_values,
    read_locked,
    select_task,
    task_of,
    transition,
)
from spine.platform.tasks.approvals import Approvals
from spine.platform.tasks.attempts import Attempts
from spine.platform.tasks.models import (
    TERMINAL_STATES,
    NewTask,
    Task,
    TaskEvent,
    TaskPage,
    TaskState,
    TaskSubmission,
)
from spine.platform.tasks.outbox import Outbox
from spine.platform.telemetry import record_task_submitted

__all__ = ["TaskStore"]


class TaskStore(Attempts, Approvals, Outbox, StorePart):
    """Reads and writes tasks and their events, with Core statements (see ``Database``)."""

    async def submit(
        self,
        submission: TaskSubmission,
        *,
        tenant: str,
        key_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Task, list[TaskEvent], bool]:
        """Commit a new task; with an Idempotency-Key, return the earlier task instead.

        Returns:
            The task, the events written, and whether the task was created by this call.
        """
        # Only a reused Idempotency-Key is checked against it: no key, no hash (~3 % of a
        # submit's CPU in the API).
        fingerprint = submission.fingerprint() if idempotency_key is not None else None
        now = utcnow()
        if submission.deadline is not None and submission.deadline <= now:
            raise BadRequest("deadline is in the past", field="deadline")
        values = new_task_values(
            str(uuid.uuid4()),
            submission,
            tenant=tenant,
            key_id=key_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            now=now,
        )
        event = event_values(values["id"], tenant, 1, "state", {"state": "queued"}, now)
        try:
            if self._pg:
                await self._insert_pg(values, event)
            else:
                async with self._db.transaction() as conn:
                    await conn.execute(sa.insert(TASKS).values(values))
                    await conn.execute(sa.insert(EVENTS).values(event))
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self._by_idempotency_key(tenant, idempotency_key)
            if existing["request_hash"] != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request body",
                    field="Idempotency-Key",
                ) from None
            return task_of(existing), [], False
        written = [TaskEvent(**event)]
        # Not announced: no one can follow a task before this returns its id, and whoever
        # follows it later reads its stored events first (one NATS message less per task).
        record_task_submitted(submission.agent, tenant=tenant)
        return task_of(values), written, True

    async def _insert_pg(self, values: dict[str, Any], event: dict[str, Any]) -> None:
        """Insert a new task and its first event in one statement (see :mod:`._pg`).

        Raises:
            IntegrityError: The tenant used the task's idempotency key already.
        """
        async with self._db.driver() as conn:
            inserted = await conn.fetchval(
                _pg.SUBMIT,
                values["id"],
                values["tenant"],
                values["key_id"],
                values["agent"],
                json.dumps(values["input"]),
                json.dumps(values["metadata"]),
                values["priority"],
                values["deadline"],
                values["idempotency_key"],
                values["request_hash"],
                values["created_at"],
                _pg.events_param([(event["type"], event["data"])]),
            )
        if inserted is None:
            raise IntegrityError("INSERT INTO tasks", None, Exception("idempotency key used"))

    async def insert_many(
        self,
        conn: AsyncConnection,
        new: Sequence[NewTask],
        *,
        tenant: str,
        key_id: str | None = None,
    ) -> list[Task]:
        """Insert queued tasks in the caller's transaction, a statement per chunk.

        A task whose idempotency key the tenant already used is skipped, so inserting the same
        work twice (a retry after a crash) creates nothing new. Returns the tasks created
        (counted as submitted here: a caller's transaction that then fails over-counts).
        """
        created: list[Task] = []
        now = utcnow()
        for start in range(0, len(new), CHUNK):
            rows = [
                new_task_values(
                    item.id,
                    item.submission,
                    tenant=tenant,
                    key_id=key_id,
                    idempotency_key=item.idempotency_key,
                    fingerprint=item.submission.fingerprint(),
                    now=now,
                )
                for item in new[start : start + CHUNK]
            ]
            inserted = await conn.execute(insert_new(conn, TASKS).returning(TASKS.c.id), rows)
            fresh = {row[0] for row in inserted}
            if not fresh:
                continue
            kept = [row for row in rows if row["id"] in fresh]
            await conn.execute(
                sa.insert(EVENTS),
                [
                    event_values(row["id"], tenant, 1, "state", {"state": "queued"}, now)
                    for row in kept
                ],
            )
            created.extend(task_of(row) for row in kept)
        for task in created:
            record_task_submitted(task.agent, tenant=tenant)
        return created

    async def _by_idempotency_key(self, tenant: str, key: str) -> sa.RowMapping:
        query = sa.select(TASKS).where(TASKS.c.tenant == tenant, TASKS.c.idempotency_key == key)
        async with self._db.transaction() as conn:
            return (await conn.execute(query)).mappings().one()

    async def get(self, task_id: str, *, tenant: str | None) -> Task:
        """Return one task; another tenant's task is reported as not found."""
        row: Any
        if self._pg:
            async with self._db.driver() as raw:
                row = await raw.fetchrow(_pg.GET, task_id)
        else:
            async with self._db.transaction() as conn:
                row = (await conn.execute(select_task(task_id))).mappings().one_or_none()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise NotFound(f"no task {task_id!r}", field="task_id")
        return task_of(row)

    async def list_page(
        self,
        *,
        tenant: str,
        state: TaskState | None = None,
        agent: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """List a tenant's tasks, newest first, ``limit`` at a time."""
        query = sa.select(TASKS).where(TASKS.c.tenant == tenant)
        if state is not None:
            query = query.where(TASKS.c.state == state)
        if agent is not None:
            query = query.where(TASKS.c.agent == agent)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    TASKS.c.created_at < created_at,
                    sa.and_(TASKS.c.created_at == created_at, TASKS.c.id < last_id),
                )
            )
        query = query.order_by(TASKS.c.created_at.desc(), TASKS.c.id.desc()).limit(limit + 1)
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (
            encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
        )
        return TaskPage(tasks=[task_of(r) for r in rows], next_cursor=next_cursor)

    async def events(
        self, task_id: str, *, tenant: str | None, after_seq: int = 0, limit: int = 500
    ) -> list[TaskEvent]:
        """Return a task's events after ``after_seq``, in order."""
        if self._pg:
            async with self._db.driver() as raw:
                rows = await raw.fetch(_pg.EVENTS, task_id, after_seq, tenant, limit)
            return [TaskEvent(**dict(r)) for r in rows]
        query = (
            sa.select(
                EVENTS.c.task_id,
                EVENTS.c.tenant,
                EVENTS.c.seq,
                EVENTS.c.type,
                EVENTS.c.data,
                EVENTS.c.created_at,
            )
            .where(EVENTS.c.task_id == task_id, EVENTS.c.seq > after_seq)
            .order_by(EVENTS.c.seq)
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(EVENTS.c.tenant == tenant)
        async with self._db.transaction() as conn:
            return [TaskEvent(**r) for r in (await conn.execute(query)).mappings()]

    async def cancel_requested(self, task_id: str) -> bool:
        """Tell whether someone asked this task to stop."""
        if self._pg:
            async with self._db.driver() as raw:
                return bool(await raw.fetchval(_pg.CANCEL_REQUESTED, task_id))
        query = sa.select(TASKS.c.cancel_requested).where(TASKS.c.id == task_id)
        async with self._db.transaction() as conn:
            return bool((await conn.execute(query)).scalar())

    async def cancel(self, task_id: str, *, tenant: str) -> tuple[Task, list[TaskEvent]]:
        """Cancel a queued task at once, or ask a running one to stop at its next step."""
        now = utcnow()
        async with self._db.transaction() as conn:
            row = await read_locked(conn, task_id)
            if row is None or row["tenant"] != tenant:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            if row["state"] in TERMINAL_STATES:
                raise Conflict(
                    f"task {task_id} already ended as {row['state']}", state=row["state"]
                )
            if row["state"] in ("queued", "waiting_approval"):  # no worker holds it
                ended = await transition(
                    conn,
                    task_id,
                    now,
                    state="cancelled",
                    error=cancel_error(),
                    cancel_requested=True,
                )
            else:
                ended = await change(
                    conn,
                    task_id,
                    now,
                    event_type="cancel_requested",
                    event={},
                    values={"cancel_requested": True},
                )
                if ended is not None:
                    await conn.execute(sa.insert(EVENTS).values(ended[1].model_dump()))
            assert ended is not None
        await self._announce([ended[1]])
        return ended[0], [ended[1]]

    async def append_event(self, task_id: str, type_: str, data: dict[str, Any]) -> TaskEvent:
        """Store a progress event that changes no state (a step, a token batch, usage)."""
        if self._pg:
            now = utcnow()
            pending = [(type_, data)]
            async with self._db.driver() as raw:
                row = await raw.fetchrow(_pg.APPEND, task_id, _pg.events_param(pending), now)
            if row is None:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            written = _pg.numbered(task_id, row["tenant"], row["event_seq"], pending, now)
            await self._announce(written)
            return written[0]
        async with self._db.transaction() as conn:
            changed = await change(
                conn, task_id, utcnow(), event_type=type_, event=data, values={}, touch=False
            )
            if changed is None:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            await conn.execute(sa.insert(EVENTS).values(changed[1].model_dump()))
        await self._announce([changed[1]])
        return changed[1]
