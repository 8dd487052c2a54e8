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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, IdempotencyConflict, NotFound
from spine.platform.schema import TaskEventRow, TaskRow, utcnow

__all__ = [
    "TERMINAL_STATES",
    "Claim",
    "Priority",
    "Task",
    "TaskEvent",
    "TaskPage",
    "TaskState",
    "TaskStore",
    "TaskSubmission",
]

TaskState = Literal["queued", "running", "succeeded", "failed", "cancelled", "dead_lettered"]
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

    @property
    def is_terminal(self) -> bool:
        """Tell whether the task has reached an end state."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_row(cls, row: TaskRow) -> Task:
        """Build the client view of a row."""
        return cls(
            id=row.id,
            tenant=row.tenant,
            agent=row.agent,
            state=row.state,
            input=row.input,
            metadata=row.meta,
            priority=row.priority,
            deadline=row.deadline,
            attempts=row.attempts,
            result=row.result,
            error=row.error,
            cancel_requested=row.cancel_requested,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


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
class Claim:
    """What a worker learned when it tried to claim a delivered task."""

    outcome: Literal["claimed", "finished", "busy", "missing"]
    task: Task | None = None
    attempt: int = 0
    retry_in: float = 0.0
    events: list[TaskEvent] = field(default_factory=list)


class TaskStore:
    """Reads and writes tasks and their events."""

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
        row = TaskRow(
            id=str(uuid.uuid4()),
            tenant=tenant,
            key_id=key_id,
            agent=submission.agent,
            input=submission.input,
            meta=submission.metadata,
            priority=submission.priority,
            deadline=submission.deadline,
            state="queued",
            attempts=0,
            event_seq=0,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.session() as session, session.begin():
                session.add(row)
                event = _next_event(row, "state", {"state": "queued"})
                session.add(event)
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self._by_idempotency_key(tenant, idempotency_key)
            if existing.request_hash != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request body",
                    field="Idempotency-Key",
                ) from None
            return Task.from_row(existing), [], False
        return Task.from_row(row), [_event_view(event)], True

    async def _by_idempotency_key(self, tenant: str, key: str) -> TaskRow:
        async with self._db.session() as session:
            query = sa.select(TaskRow).where(
                TaskRow.tenant == tenant, TaskRow.idempotency_key == key
            )
            return (await session.execute(query)).scalar_one()

    # -- reading ------------------------------------------------------------------------------

    async def get(self, task_id: str, *, tenant: str | None) -> Task:
        """Return one task; another tenant's task is reported as not found."""
        async with self._db.session() as session:
            row = await session.get(TaskRow, task_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no task {task_id!r}", field="task_id")
        return Task.from_row(row)

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
        query = sa.select(TaskRow).where(TaskRow.tenant == tenant)
        if state is not None:
            query = query.where(TaskRow.state == state)
        if agent is not None:
            query = query.where(TaskRow.agent == agent)
        if cursor is not None:
            created_at, last_id = _decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    TaskRow.created_at < created_at,
                    sa.and_(TaskRow.created_at == created_at, TaskRow.id < last_id),
                )
            )
        query = query.order_by(TaskRow.created_at.desc(), TaskRow.id.desc()).limit(limit + 1)
        async with self._db.session() as session:
            rows = list((await session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]) if more and rows else None
        return TaskPage(tasks=[Task.from_row(r) for r in rows], next_cursor=next_cursor)

    async def events(
        self, task_id: str, *, tenant: str | None, after_seq: int = 0, limit: int = 500
    ) -> list[TaskEvent]:
        """Return a task's events after ``after_seq``, in order."""
        query = (
            sa.select(TaskEventRow)
            .where(TaskEventRow.task_id == task_id, TaskEventRow.seq > after_seq)
            .order_by(TaskEventRow.seq)
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(TaskEventRow.tenant == tenant)
        async with self._db.session() as session:
            rows = (await session.execute(query)).scalars()
            return [_event_view(r) for r in rows]

    # -- the outbox ---------------------------------------------------------------------------

    async def mark_published(self, task_ids: list[str]) -> None:
        """Record that JetStream acknowledged these tasks."""
        if not task_ids:
            return
        async with self._db.session() as session, session.begin():
            await session.execute(
                sa.update(TaskRow)
                .where(TaskRow.id.in_(task_ids), TaskRow.published_at.is_(None))
                .values(published_at=utcnow())
            )

    async def unpublished(self, *, grace: float, limit: int) -> list[Task]:
        """Find queued tasks that JetStream never acknowledged (NATS was down at submit)."""
        cutoff = utcnow() - timedelta(seconds=grace)
        query = (
            sa.select(TaskRow)
            .where(
                TaskRow.state == "queued",
                TaskRow.published_at.is_(None),
                TaskRow.created_at < cutoff,
            )
            .order_by(TaskRow.created_at)
            .limit(limit)
        )
        async with self._db.session() as session:
            return [Task.from_row(r) for r in (await session.execute(query)).scalars()]

    async def stalled(self, *, after: float, limit: int) -> list[Task]:
        """Find tasks whose message JetStream seems to have lost.

        These are tasks published but still queued long after, or running with a lease that
        expired long ago (its worker died and no redelivery came).
        """
        cutoff = utcnow() - timedelta(seconds=after)
        query = (
            sa.select(TaskRow)
            .where(
                sa.or_(
                    sa.and_(TaskRow.state == "queued", TaskRow.published_at < cutoff),
                    sa.and_(TaskRow.state == "running", TaskRow.lease_expires_at < cutoff),
                )
            )
            .order_by(TaskRow.created_at)
            .limit(limit)
        )
        async with self._db.session() as session:
            rows = list((await session.execute(query)).scalars())
            if rows:
                # Restart the clock so the next sweep does not publish them again at once.
                await session.execute(
                    sa.update(TaskRow)
                    .where(TaskRow.id.in_([r.id for r in rows]), TaskRow.state == "queued")
                    .values(published_at=utcnow())
                )
                await session.commit()
            return [Task.from_row(r) for r in rows]

    # -- the worker's side --------------------------------------------------------------------

    async def claim(self, task_id: str, *, lease: float) -> Claim:
        """Start an attempt, unless the task is finished or another worker holds its lease."""
        now = utcnow()
        async with self._db.session() as session, session.begin():
            row = await _locked(session, task_id)
            if row is None:
                return Claim(outcome="missing")
            if row.state in TERMINAL_STATES:
                return Claim(outcome="finished", task=Task.from_row(row))
            if row.state == "running" and row.lease_expires_at and row.lease_expires_at > now:
                remaining = (row.lease_expires_at - now).total_seconds()
                return Claim(outcome="busy", task=Task.from_row(row), retry_in=remaining)
            if row.cancel_requested:
                event = _transition(row, "cancelled", now, error=_cancel_error())
                session.add(event)
                return Claim(
                    outcome="finished", task=Task.from_row(row), events=[_event_view(event)]
                )
            if row.deadline is not None and row.deadline <= now:
                error = {
                    "type": "deadline_exceeded",
                    "message": "the deadline passed before the task could run",
                    "retryable": False,
                }
                event = _transition(row, "failed", now, error=error)
                session.add(event)
                return Claim(
                    outcome="finished", task=Task.from_row(row), events=[_event_view(event)]
                )
            row.attempts += 1
            row.started_at = row.started_at or now
            row.lease_expires_at = now + timedelta(seconds=lease)
            event = _transition(row, "running", now, attempt=row.attempts)
            session.add(event)
            return Claim(
                outcome="claimed",
                task=Task.from_row(row),
                attempt=row.attempts,
                events=[_event_view(event)],
            )

    async def extend_lease(self, task_id: str, *, attempt: int, lease: float) -> bool:
        """Keep the claim of a running attempt alive; False if the attempt lost it."""
        async with self._db.session() as session, session.begin():
            updated = await session.execute(
                sa.update(TaskRow)
                .where(
                    TaskRow.id == task_id, TaskRow.attempts == attempt, TaskRow.state == "running"
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease))
            )
            return bool(updated.rowcount)  # type: ignore[attr-defined]

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
        now = utcnow()
        async with self._db.session() as session, session.begin():
            row = await _locked(session, task_id)
            if row is None or row.attempts != attempt or row.state != "running":
                return []
            row.result = result
            row.lease_expires_at = None
            extra: dict[str, Any] = {"attempt": attempt}
            if retry_in is not None:
                extra["retry_in"] = retry_in
            event = _transition(row, state, now, error=error, **extra)
            session.add(event)
            return [_event_view(event)]

    async def dead_letter(self, task_id: str, *, reason: dict[str, Any]) -> list[TaskEvent]:
        """Mark a task dead-lettered whatever attempt holds it; the DLQ holds its message."""
        now = utcnow()
        async with self._db.session() as session, session.begin():
            row = await _locked(session, task_id)
            if row is None or row.state in TERMINAL_STATES:
                return []
            row.lease_expires_at = None
            event = _transition(row, "dead_lettered", now, error=reason, attempt=row.attempts)
            session.add(event)
            return [_event_view(event)]

    async def cancel(self, task_id: str, *, tenant: str) -> tuple[Task, list[TaskEvent]]:
        """Cancel a queued task at once, or ask a running one to stop at its next step."""
        now = utcnow()
        async with self._db.session() as session, session.begin():
            row = await _locked(session, task_id)
            if row is None or row.tenant != tenant:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            if row.state in TERMINAL_STATES:
                raise Conflict(f"task {task_id} already ended as {row.state}", state=row.state)
            row.cancel_requested = True
            row.updated_at = now
            if row.state == "queued":
                event = _transition(row, "cancelled", now, error=_cancel_error())
            else:
                event = _next_event(row, "cancel_requested", {})
            session.add(event)
            return Task.from_row(row), [_event_view(event)]

    async def cancel_requested(self, task_id: str) -> bool:
        """Tell whether someone asked this task to stop."""
        async with self._db.session() as session:
            query = sa.select(TaskRow.cancel_requested).where(TaskRow.id == task_id)
            return bool((await session.execute(query)).scalar())

    async def append_event(self, task_id: str, type_: str, data: dict[str, Any]) -> TaskEvent:
        """Store a progress event that changes no state (a step, a token batch, usage)."""
        async with self._db.session() as session, session.begin():
            row = await _locked(session, task_id)
            if row is None:
                raise NotFound(f"no task {task_id!r}", field="task_id")
            event = _next_event(row, type_, data)
            session.add(event)
            return _event_view(event)


async def _locked(session: AsyncSession, task_id: str) -> TaskRow | None:
    # FOR UPDATE serialises writers of one task on PostgreSQL. SQLite ignores it, and its driver
    # begins the transaction only at the first write, so two writers would both read the same
    # event_seq: a no-op write first takes the database's write lock before the row is read.
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        await session.execute(
            sa.update(TaskRow)
            .where(TaskRow.id == task_id)
            .values(event_seq=TaskRow.event_seq)
            .execution_options(synchronize_session=False)
        )
    query = sa.select(TaskRow).where(TaskRow.id == task_id).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def _transition(
    row: TaskRow, state: str, now: datetime, *, error: dict[str, Any] | None = None, **data: Any
) -> TaskEventRow:
    row.state = state
    row.updated_at = now
    if error is not None:
        row.error = error
    if state in TERMINAL_STATES:
        row.finished_at = now
    payload: dict[str, Any] = {"state": state, **data}
    if error is not None:
        payload["error"] = error
    return _next_event(row, "state", payload)


def _next_event(row: TaskRow, type_: str, data: dict[str, Any]) -> TaskEventRow:
    row.event_seq += 1
    return TaskEventRow(
        task_id=row.id,
        tenant=row.tenant,
        seq=row.event_seq,
        type=type_,
        data=data,
        created_at=utcnow(),
    )


def _event_view(row: TaskEventRow) -> TaskEvent:
    return TaskEvent(
        task_id=row.task_id,
        tenant=row.tenant,
        seq=row.seq,
        type=row.type,
        data=row.data,
        created_at=row.created_at,
    )


def _cancel_error() -> dict[str, Any]:
    return {"type": "cancelled", "message": "the task was cancelled", "retryable": False}


def _encode_cursor(row: TaskRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
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
