"""Tasks in the database, the source of truth: submission, claims, results and progress events.

Every state change writes its progress event in the same transaction, and the task row's
``event_seq`` counter numbers those events, so each task's feed is gap-free and ordered even
when the API (cancel) and a worker (result) write at once. Transitions are guarded by the
attempt number a worker claimed, so a stale worker can never overwrite a newer attempt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, IdempotencyConflict, NotFound
from spine.platform.schema import TaskEventRow, TaskRow, TaskStepRow, UtcDateTime, utcnow

__all__ = [
    "TERMINAL_STATES",
    "Claim",
    "NewTask",
    "Priority",
    "Task",
    "TaskEvent",
    "TaskPage",
    "TaskState",
    "TaskStore",
    "TaskSubmission",
]

TaskState = Literal[
    "queued", "running", "waiting_approval", "succeeded", "failed", "cancelled", "dead_lettered"
]
Priority = Literal["high", "normal", "low"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "dead_lettered"})


class TaskSubmission(BaseModel):
    """The body of ``POST /v1/tasks``."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    input: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=64)
    priority: Priority = "normal"
    deadline: AwareDatetime | None = None

    def fingerprint(self) -> str:
        """Hash the request so a reused Idempotency-Key can be checked against it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class Task(BaseModel):
    """A task as clients see it."""

    id: str
    tenant: str
    key_id: str | None = None
    agent: str
    state: TaskState
    input: dict[str, Any]
    metadata: dict[str, Any]
    priority: Priority
    deadline: datetime | None
    attempts: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    approval: dict[str, Any] | None = None
    approval_expires_at: datetime | None = None
    resumes: int = 0

    @property
    def failed_attempts(self) -> int:
        """Attempts that did not end in a pause for approval (what ``max_attempts`` limits)."""
        return self.attempts - self.resumes

    @property
    def is_terminal(self) -> bool:
        """Tell whether the task has reached an end state."""
        return self.state in TERMINAL_STATES


class TaskEvent(BaseModel):
    """A progress event; ``seq`` is its position in the task's feed, starting at 1."""

    task_id: str
    tenant: str
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime

    @property
    def is_final(self) -> bool:
        """Tell whether this event ends the task's feed."""
        return self.type == "state" and self.data.get("state") in TERMINAL_STATES


@dataclass(slots=True, kw_only=True)
class TaskPage:
    """One page of a task listing and the cursor to the next page."""

    tasks: list[Task]
    next_cursor: str | None


@dataclass(slots=True, kw_only=True)
class NewTask:
    """A task to insert with :meth:`TaskStore.insert_many`: its id, request and key."""

    id: str
    submission: TaskSubmission
    idempotency_key: str


@dataclass(slots=True, kw_only=True)
class Claim:
    """What a worker learned when it tried to claim a delivered task."""

    outcome: Literal["claimed", "finished", "busy", "paused", "missing"]
    task: Task | None = None
    attempt: int = 0
    retry_in: float = 0.0
    events: list[TaskEvent] = field(default_factory=list)


class TaskStore:
    """Reads and writes tasks and their events, with Core statements (see ``Database``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- submission ---------------------------------------------------------------------------

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
        fingerprint = submission.fingerprint()
        now = utcnow()
        if submission.deadline is not None and submission.deadline <= now:
            raise BadRequest("deadline is in the past", field="deadline")
        values = _new_task_values(
            str(uuid.uuid4()),
            submission,
            tenant=tenant,
            key_id=key_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            now=now,
        )
        event = _event_values(values["id"], tenant, 1, "state", {"state": "queued"}, now)
        try:
            async with self._db.transaction() as conn:
                await conn.execute(sa.insert(_TASKS).values(values))
                await conn.execute(sa.insert(_EVENTS).values(event))
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self._by_idempotency_key(tenant, idempotency_key)
            if existing["request_hash"] != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request body",
                    field="Idempotency-Key",
                ) from None
            return _task(existing), [], False
        return _task(values), [TaskEvent(**event)], True

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
        work twice (a retry after a crash) creates nothing new. Returns the tasks created.
        """
        created: list[Task] = []
        now = utcnow()
        for start in range(0, len(new), _CHUNK):
            rows = [
                _new_task_values(
                    item.id,
                    item.submission,
                    tenant=tenant,
                    key_id=key_id,
                    idempotency_key=item.idempotency_key,
                    fingerprint=item.submission.fingerprint(),
                    now=now,
                )
                for item in new[start : start + _CHUNK]
            ]
            inserted = await conn.execute(_insert_new(conn, _TASKS).returning(_TASKS.c.id), rows)
            fresh = {row[0] for row in inserted}
            if not fresh:
                continue
            kept = [row for row in rows if row["id"] in fresh]
            await conn.execute(
                sa.insert(_EVENTS),
                [
                    _event_values(row["id"], tenant, 1, "state", {"state": "queued"}, now)
                    for row in kept
                ],
            )
            created.extend(_task(row) for row in kept)
        return created

    async def _by_idempotency_key(self, tenant: str, key: str) -> sa.RowMapping:
        query = sa.select(_TASKS).where(_TASKS.c.tenant == tenant, _TASKS.c.idempotency_key == key)
        async with self._db.transaction() as conn:
            return (await conn.execute(query)).mappings().one()

    # -- reading ------------------------------------------------------------------------------

    async def get(self, task_id: str, *, tenant: str | None) -> Task:
        """Return one task; another tenant's task is reported as not found."""
        async with self._db.transaction() as conn:
            row = (await conn.execute(_select_task(task_id))).mappings().one_or_none()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise NotFound(f"no task {task_id!r}", field="task_id")
        return _task(row)

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
        query = sa.select(_TASKS).where(_TASKS.c.tenant == tenant)
        if state is not None:
            query = query.where(_TASKS.c.state == state)
        if agent is not None:
            query = query.where(_TASKS.c.agent == agent)
        if cursor is not None:
            created_at, last_id = _decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    _TASKS.c.created_at < created_at,
                    sa.and_(_TASKS.c.created_at == created_at, _TASKS.c.id < last_id),
                )
            )
        query = query.order_by(_TASKS.c.created_at.desc(), _TASKS.c.id.desc()).limit(limit + 1)
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]) if more and rows else None
        return TaskPage(tasks=[_task(r) for r in rows], next_cursor=next_cursor)

    async def events(
        self, task_id: str, *, tenant: str | None, after_seq: int = 0, limit: int = 500
    ) -> list[TaskEvent]:
        """Return a task's events after ``after_seq``, in order."""
        query = (
            sa.select(
                _EVENTS.c.task_id,
                _EVENTS.c.tenant,
                _EVENTS.c.seq,
                _EVENTS.c.type,
                _EVENTS.c.data,
                _EVENTS.c.created_at,
            )
            .where(_EVENTS.c.task_id == task_id, _EVENTS.c.seq > after_seq)
            .order_by(_EVENTS.c.seq)
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(_EVENTS.c.tenant == tenant)
        async with self._db.transaction() as conn:
            return [TaskEvent(**r) for r in (await conn.execute(query)).mappings()]

    async def cancel_requested(self, task_id: str) -> bool:
        """Tell whether someone asked this task to stop."""
        query = sa.select(_TASKS.c.cancel_requested).where(_TASKS.c.id == task_id)
        async with self._db.transaction() as conn:
            return bool((await conn.execute(query)).scalar())

    # -- the outbox ---------------------------------------------------------------------------

    async def mark_published(self, task_ids: list[str]) -> None:
        """Record that JetStream acknowledged these tasks."""
        if not task_ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(_TASKS)
                .where(_TASKS.c.id.in_(task_ids), _TASKS.c.published_at.is_(None))
                .values(published_at=utcnow())
            )

    async def unpublished(self, *, grace: float, limit: int) -> list[Task]:
        """Find queued tasks that JetStream never acknowledged (NATS was down at submit)."""
        cutoff = utcnow() - timedelta(seconds=grace)
        query = (
            sa.select(_TASKS)
            .where(
                _TASKS.c.state == "queued",
                _TASKS.c.published_at.is_(None),
                _TASKS.c.created_at < cutoff,
            )
            .order_by(_TASKS.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [_task(r) for r in (await conn.execute(query)).mappings()]

    async def stalled(self, *, after: float, limit: int) -> list[Task]:
        """Find tasks whose message JetStream seems to have lost.

        These are tasks published but still queued long after, or running with a lease that
        expired long ago (its worker died and no redelivery came).
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=after)
        query = (
            sa.select(_TASKS)
            .where(
                sa.or_(
                    sa.and_(_TASKS.c.state == "queued", _TASKS.c.published_at < cutoff),
                    sa.and_(_TASKS.c.state == "running", _TASKS.c.lease_expires_at < cutoff),
                )
            )
            .order_by(_TASKS.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
            if rows:
                # Restart the clock so the next sweep does not publish them again at once.
                await conn.execute(
                    sa.update(_TASKS)
                    .where(_TASKS.c.id.in_([r["id"] for r in rows]), _TASKS.c.state == "queued")
                    .values(published_at=now)
                )
        return [_task(r) for r in rows]

    # -- the worker's side --------------------------------------------------------------------

    async def claim(self, task_id: str, *, lease: float) -> Claim:
        """Start an attempt, unless the task is finished or another worker holds its lease."""
        now = utcnow()
        claimable = sa.and_(
            _TASKS.c.cancel_requested == sa.false(),
            sa.or_(_TASKS.c.deadline.is_(None), _TASKS.c.deadline > now),
            sa.or_(
                _TASKS.c.state == "queued",
                sa.and_(_TASKS.c.state == "running", _TASKS.c.lease_expires_at <= now),
            ),
        )
        async with self._db.transaction() as conn:
            # The common case is one conditional UPDATE; the rest is decided below.
            claimed = await _change(
                conn,
                task_id,
                now,
                where=claimable,
                event={"state": "running"},
                values={
                    "state": "running",
                    "attempts": _TASKS.c.attempts + 1,
                    "started_at": sa.func.coalesce(
                        _TASKS.c.started_at, sa.literal(now, UtcDateTime())
                    ),
                    "lease_expires_at": now + timedelta(seconds=lease),
                },
            )
            if claimed is not None:
                task, event = claimed
                event.data["attempt"] = task.attempts
                await conn.execute(sa.insert(_EVENTS).values(event.model_dump()))
                return Claim(outcome="claimed", task=task, attempt=task.attempts, events=[event])
            row = await _read_locked(conn, task_id)
            if row is None:
                return Claim(outcome="missing")
            if row["state"] in TERMINAL_STATES:
                return Claim(outcome="finished", task=_task(row))
            if row["state"] == "waiting_approval" and not row["cancel_requested"]:
                return Claim(outcome="paused", task=_task(row))
            if row["state"] == "running" and not row["cancel_requested"]:
                remaining = (row["lease_expires_at"] - now).total_seconds()
                return Claim(outcome="busy", task=_task(row), retry_in=remaining)
            if row["cancel_requested"]:
                state, error = "cancelled", _cancel_error()
            else:
                state, error = (
                    "failed",
                    {
                        "type": "deadline_exceeded",
                        "retryable": False,
                        "message": "the deadline passed before the task could run",
                    },
                )
            ended = await _transition(conn, task_id, now, state=state, error=error)
            assert ended is not None
            return Claim(outcome="finished", task=ended[0], events=[ended[1]])

    async def extend_lease(self, task_id: str, *, attempt: int, lease: float) -> bool:
        """Keep the claim of a running attempt alive; False if the attempt lost it."""
        async with self._db.transaction() as conn:
            updated = await conn.execute(
                sa.update(_TASKS)
                .where(
                    _TASKS.c.id == task_id,
                    _TASKS.c.attempts == attempt,
                    _TASKS.c.state == "running",
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
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
    ) -> list[TaskEvent]:
        """End an attempt; ``queued`` hands the task back for a retry.

        Returns:
            The events written; empty when the attempt no longer owns the task.
        """
        extra: dict[str, Any] = {"attempt": attempt}
        if retry_in is not None:
            extra["retry_in"] = retry_in
        owned = sa.and_(_TASKS.c.attempts == attempt, _TASKS.c.state == "running")
        async with self._db.transaction() as conn:
            ended = await _transition(
                conn,
                task_id,
                utcnow(),
                state=state,
                error=error,
                where=owned,
                result=result,
                **extra,
            )
        return [ended[1]] if ended is not None else []

    async def dead_letter(self, task_id: str, *, reason: dict[str, Any]) -> list[TaskEvent]:
        """Mark a task dead-lettered whatever attempt holds it; the DLQ holds its message."""
        alive = _TASKS.c.state.notin_(TERMINAL_STATES)
        async with self._db.transaction() as conn:
            ended = await _transition(
                conn, task_id, utcnow(), state="dead_lettered", error=reason, where=alive
            )
        return [ended[1]] if ended is not None else []

    async def cancel(self, task_id: str, *, tenant: str) -> tuple[Task, list[TaskEvent]]:
        """Cancel a queued task at once, or ask a running one to stop at its next step."""
        now = utcnow()
        async with self._db.transaction() as conn:
            row = await _read_locked(conn, task_id)
            if row is None or row["tenant"] != tenant:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            if row["state"] in TERMINAL_STATES:
                raise Conflict(
                    f"task {task_id} already ended as {row['state']}", state=row["state"]
                )
            if row["state"] in ("queued", "waiting_approval"):  # no worker holds it
                ended = await _transition(
                    conn,
                    task_id,
                    now,
                    state="cancelled",
                    error=_cancel_error(),
                    cancel_requested=True,
                )
            else:
                ended = await _change(
                    conn,
                    task_id,
                    now,
                    event_type="cancel_requested",
                    event={},
                    values={"cancel_requested": True},
                )
                if ended is not None:
                    await conn.execute(sa.insert(_EVENTS).values(ended[1].model_dump()))
            assert ended is not None
            return ended[0], [ended[1]]

    # -- pauses for a human's approval -------------------------------------------------------

    async def pause(
        self, task_id: str, *, attempt: int, until: datetime, proposal: dict[str, Any]
    ) -> list[TaskEvent]:
        """End an attempt waiting for approval of ``proposal``; no worker holds the task then.

        Returns:
            The state event; empty when the attempt no longer owns the task.
        """
        owned = sa.and_(_TASKS.c.attempts == attempt, _TASKS.c.state == "running")
        async with self._db.transaction() as conn:
            changed = await _change(
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
                    "resumes": _TASKS.c.resumes + 1,
                },
            )
            if changed is None:
                return []
            await conn.execute(sa.insert(_EVENTS).values(changed[1].model_dump()))
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
            row = await _read_locked(conn, task_id)
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
                sa.insert(_STEPS).values(
                    task_id=task_id,
                    key=proposal["key"],
                    kind="approval",
                    attempt=row["attempts"],
                    data=decision,
                    created_at=now,
                )
            )
            changed = await _change(
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
            await conn.execute(sa.insert(_EVENTS).values(changed[1].model_dump()))
        return changed[0], [changed[1]]

    async def expired_approvals(self, *, limit: int) -> list[Task]:
        """Find paused tasks whose approval was not given in time."""
        query = (
            sa.select(_TASKS)
            .where(_TASKS.c.state == "waiting_approval", _TASKS.c.approval_expires_at < utcnow())
            .order_by(_TASKS.c.approval_expires_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            return [_task(r) for r in (await conn.execute(query)).mappings()]

    async def record_step(
        self,
        task_id: str,
        *,
        attempt: int,
        key: str,
        kind: str,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> list[TaskEvent] | None:
        """Journal one step of an agent's loop and store its progress events, in one commit.

        Fenced by ``attempt``: None when that attempt no longer holds the task (or the step
        was journalled already), and then nothing is written.
        """
        now = utcnow()
        owned = sa.and_(
            _TASKS.c.id == task_id, _TASKS.c.attempts == attempt, _TASKS.c.state == "running"
        )
        try:
            async with self._db.transaction() as conn:
                claimed = await conn.execute(
                    sa.update(_TASKS)
                    .where(owned)
                    .values(event_seq=_TASKS.c.event_seq + len(events), updated_at=now)
                    .returning(_TASKS.c.tenant, _TASKS.c.event_seq)
                )
                row = claimed.one_or_none()
                if row is None:
                    return None
                await conn.execute(
                    sa.insert(_STEPS).values(
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
                    TaskEvent(**_event_values(task_id, row.tenant, first + i, type_, body, now))
                    for i, (type_, body) in enumerate(events)
                ]
                if written:
                    await conn.execute(
                        sa.insert(_EVENTS), [event.model_dump() for event in written]
                    )
        except IntegrityError:
            return None
        return written

    async def append_event(self, task_id: str, type_: str, data: dict[str, Any]) -> TaskEvent:
        """Store a progress event that changes no state (a step, a token batch, usage)."""
        async with self._db.transaction() as conn:
            changed = await _change(
                conn, task_id, utcnow(), event_type=type_, event=data, values={}, touch=False
            )
            if changed is None:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            await conn.execute(sa.insert(_EVENTS).values(changed[1].model_dump()))
            return changed[1]


_CHUNK = 500
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]
_EVENTS: sa.Table = TaskEventRow.__table__  # type: ignore[assignment]
_STEPS: sa.Table = TaskStepRow.__table__  # type: ignore[assignment]


async def _change(
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
    condition = _TASKS.c.id == task_id if where is None else sa.and_(_TASKS.c.id == task_id, where)
    changes = {**values, "event_seq": _TASKS.c.event_seq + 1}
    if touch:
        changes["updated_at"] = now
    result = await conn.execute(
        sa.update(_TASKS).where(condition).values(changes).returning(*_TASKS.c)
    )
    row = result.mappings().one_or_none()
    if row is None:
        return None
    task = _task(row)
    return task, TaskEvent(
        **_event_values(task_id, task.tenant, row["event_seq"], event_type, dict(event), now)
    )


async def _transition(
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
    if state in TERMINAL_STATES:
        values["finished_at"] = now
    if cancel_requested is not None:
        values["cancel_requested"] = cancel_requested
    payload: dict[str, Any] = {"state": state, **data}
    if error is not None:
        payload["error"] = error
    changed = await _change(conn, task_id, now, values=values, event=payload, where=where)
    if changed is None:
        return None
    task, event = changed
    if task.attempts:
        event.data.setdefault("attempt", task.attempts)
    await conn.execute(sa.insert(_EVENTS).values(event.model_dump()))
    return task, event


async def _read_locked(conn: AsyncConnection, task_id: str) -> sa.RowMapping | None:
    # FOR UPDATE serialises writers of one task on PostgreSQL. SQLite ignores it, and its driver
    # begins the transaction only at the first write: a no-op write first takes the database's
    # write lock before the row is read.
    if conn.dialect.name == "sqlite":
        await conn.execute(
            sa.update(_TASKS).where(_TASKS.c.id == task_id).values(event_seq=_TASKS.c.event_seq)
        )
    query = _select_task(task_id).with_for_update()
    row: sa.RowMapping | None = (await conn.execute(query)).mappings().one_or_none()
    return row


def _new_task_values(
    task_id: str,
    submission: TaskSubmission,
    *,
    tenant: str,
    key_id: str | None,
    idempotency_key: str | None,
    fingerprint: str,
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


def _insert_new(conn: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that skips rows colliding with a unique key (PostgreSQL and SQLite alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _select_task(task_id: str) -> sa.Select[Any]:
    return sa.select(_TASKS).where(_TASKS.c.id == task_id)


def _task(row: Any) -> Task:
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


def _event_values(
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


def _cancel_error() -> dict[str, Any]:
    return {"type": "cancelled", "message": "the task was cancelled", "retryable": False}


def _encode_cursor(row: Any) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        when = datetime.fromisoformat(created_at)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor", field="cursor") from exc
    if when.tzinfo is None:  # our cursors carry +00:00; a naive time cannot be compared
        raise BadRequest("invalid cursor", field="cursor")
    return when, last_id
