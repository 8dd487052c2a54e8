"""A worker's side of a task: claim an attempt, keep its lease, end it.

Transitions are guarded by the attempt number a worker claimed (a fencing token), so a stale
worker can never overwrite a newer attempt.

A claim may be bounded by a running limit per tenant (``running_limit``, see
:mod:`spine.platform.limits.running`): the task is claimed only while fewer of its tenant's
tasks are running with a live lease, decided in the claim's own UPDATE (on PostgreSQL after a
per-tenant advisory lock, so concurrent claims are counted one after the other); otherwise the
claim's outcome is ``throttled`` and the task stays queued.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.inputs import storable_json
from spine.platform.metering.usage import ModelCallRecord, calls_json, insert_calls
from spine.platform.schema import UtcDateTime, utcnow
from spine.platform.tasks import _pg
from spine.platform.tasks._rows import (
    EVENTS,
    TASKS,
    StorePart,
    cancel_error,
    change,
    event_values,
    read_locked,
    task_of,
    transition,
)
from spine.platform.tasks.models import TERMINAL_STATES, Claim, TaskError, TaskEvent

__all__ = ["Attempts", "RunningLimit"]

RunningLimit = Callable[[str], int | None]
"""How many tasks of a tenant may run at once (None: no limit)."""


class Attempts(StorePart):
    """The worker's side of the task store."""

    async def claim(
        self, task_id: str, *, lease: float, running_limit: RunningLimit | None = None
    ) -> Claim:
        """Start an attempt, unless the task is finished or another worker holds its lease.

        With ``running_limit``, a task whose tenant already runs that many tasks is not
        claimed: the outcome is ``throttled`` and the task stays as it was (queued).
        """
        now = utcnow()
        if running_limit is not None:
            tenant = await self._tenant_of(task_id)
            limit = running_limit(tenant) if tenant is not None else None
            if tenant is not None and limit is not None:
                return await self._claim_within(task_id, tenant, limit, now, lease)
        if self._pg:
            async with self._db.driver() as raw:
                row = await raw.fetchrow(_pg.CLAIM, task_id, now, now + timedelta(seconds=lease))
            if row is not None:
                task = task_of(row)
                event = TaskEvent(
                    **event_values(
                        task_id,
                        task.tenant,
                        row["event_seq"],
                        "state",
                        {"state": "running", "attempt": task.attempts},
                        now,
                    )
                )
                await self._announce([event])
                return Claim(outcome="claimed", task=task, attempt=task.attempts, events=[event])
            # Not claimable now: the portable path below decides why, under the row's lock.
        async with self._db.transaction() as conn:
            # The common case is one conditional UPDATE; the rest is decided below.
            found = await _claim_row(conn, task_id, now, lease, where=_claimable(now))
            if found is None:
                found = await _undecided(conn, task_id, now)
        await self._announce(found.events)
        return found

    async def _claim_within(
        self, task_id: str, tenant: str, limit: int, now: datetime, lease: float
    ) -> Claim:
        """Claim a task only while its tenant runs fewer than ``limit`` tasks."""
        others = TASKS.alias("others")
        running = (
            sa.select(sa.func.count())
            .select_from(others)
            .where(
                others.c.tenant == tenant,
                others.c.state == "running",
                others.c.lease_expires_at > now,
                others.c.id != task_id,
            )
            .scalar_subquery()
        )
        async with self._db.transaction() as conn:
            if self._pg:
                # Claims of one tenant queue here, so each UPDATE below counts the claims
                # committed before it (a statement reads what was committed when it began).
                await conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(tenant)))
                )
            where = sa.and_(_claimable(now), running < limit)
            found = await _claim_row(conn, task_id, now, lease, where=where)
            if found is None:
                row = await read_locked(conn, task_id)
                if row is not None and _could_run(row, now):
                    return Claim(outcome="throttled", task=task_of(row))
                found = await _undecided(conn, task_id, now)
        await self._announce(found.events)
        return found

    async def _tenant_of(self, task_id: str) -> str | None:
        async with self._db.transaction() as conn:
            query = sa.select(TASKS.c.tenant).where(TASKS.c.id == task_id)
            tenant: str | None = (await conn.execute(query)).scalar_one_or_none()
        return tenant

    async def extend_lease(self, task_id: str, *, attempt: int, lease: float) -> bool:
        """Keep the claim of a running attempt alive; False if the attempt lost it."""
        if self._pg:
            expires = utcnow() + timedelta(seconds=lease)
            async with self._db.driver() as raw:
                status = await raw.execute(_pg.EXTEND_LEASE, task_id, attempt, expires)
            return _pg.updated(status)
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
        events: Sequence[tuple[str, dict[str, Any]]] = (),
        usage: Sequence[ModelCallRecord] = (),
    ) -> list[TaskEvent]:
        """End an attempt; ``queued`` hands the task back for a retry.

        ``events`` are progress events the attempt left to be written with its end (its last
        model call, its final answer): they come before the state event, in one commit.
        ``usage`` are usage rows of its calls not written yet: they are written in the same
        commit (whether or not the attempt still owns the task), so whoever sees the task's
        end sees what it used.

        Returns:
            The events written; empty when the attempt no longer owns the task.
        """
        extra: dict[str, Any] = {"attempt": attempt}
        if retry_in is not None:
            extra["retry_in"] = retry_in
        stored_error = error.stored() if error is not None else None
        # An agent's answer may hold text it decoded from a model's (an escaped NUL): kept
        # mended, or the commit that ends the task fails on every attempt.
        result = storable_json(result)
        events = [(type_, storable_json(data)) for type_, data in events]
        now = utcnow()
        if self._pg:
            payload: dict[str, Any] = {"state": state, **extra}
            if stored_error is not None:
                payload["error"] = stored_error
            return await self._finish_pg(
                task_id,
                attempt,
                state,
                result,
                stored_error,
                [*events, ("state", payload)],
                now,
                usage,
            )
        owned = sa.and_(TASKS.c.attempts == attempt, TASKS.c.state == "running")
        written: list[TaskEvent] = []
        async with self._db.transaction() as conn:
            await insert_calls(conn, usage)
            if events and await _owned(conn, task_id, attempt):
                for type_, data in events:
                    noted = await change(
                        conn, task_id, now, event_type=type_, event=data, values={}, touch=False
                    )
                    assert noted is not None
                    await conn.execute(sa.insert(EVENTS).values(noted[1].model_dump()))
                    written.append(noted[1])
            ended = await transition(
                conn,
                task_id,
                now,
                state=state,
                error=stored_error,
                where=owned,
                result=result,
                **extra,
            )
        written = [*written, ended[1]] if ended is not None else []
        await self._announce(written)
        return written

    async def _finish_pg(
        self,
        task_id: str,
        attempt: int,
        state: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        events: list[tuple[str, dict[str, Any]]],
        now: datetime,
        usage: Sequence[ModelCallRecord],
    ) -> list[TaskEvent]:
        async with self._db.driver() as raw:
            row = await raw.fetchrow(
                _pg.FINISH,
                task_id,
                attempt,
                state,
                None if result is None else json.dumps(result),
                None if error is None else json.dumps(error),
                state in TERMINAL_STATES,
                now,
                _pg.events_param(events),
                calls_json(usage),
            )
        written = [] if row is None else _pg.numbered(task_id, row[0], row[1], events, now)
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


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    """Hold for a task that an attempt may start now."""
    return sa.and_(
        TASKS.c.cancel_requested == sa.false(),
        sa.or_(TASKS.c.deadline.is_(None), TASKS.c.deadline > now),
        sa.or_(
            TASKS.c.state == "queued",
            sa.and_(TASKS.c.state == "running", TASKS.c.lease_expires_at <= now),
        ),
    )


def _could_run(row: sa.RowMapping, now: datetime) -> bool:
    """Tell whether a task read under its lock is one :func:`_claimable` would accept."""
    if row["cancel_requested"] or (row["deadline"] is not None and row["deadline"] <= now):
        return False
    return bool(
        row["state"] == "queued"
        or (
            row["state"] == "running"
            and row["lease_expires_at"] is not None
            and row["lease_expires_at"] <= now
        )
    )


async def _claim_row(
    conn: AsyncConnection,
    task_id: str,
    now: datetime,
    lease: float,
    *,
    where: sa.ColumnElement[bool],
) -> Claim | None:
    """Start an attempt if ``where`` holds, writing its ``running`` event; None otherwise."""
    claimed = await change(
        conn,
        task_id,
        now,
        where=where,
        event={"state": "running"},
        values={
            "state": "running",
            "attempts": TASKS.c.attempts + 1,
            "started_at": sa.func.coalesce(TASKS.c.started_at, sa.literal(now, UtcDateTime())),
            "lease_expires_at": now + timedelta(seconds=lease),
        },
    )
    if claimed is None:
        return None
    task, event = claimed
    event.data["attempt"] = task.attempts
    await conn.execute(sa.insert(EVENTS).values(event.model_dump()))
    return Claim(outcome="claimed", task=task, attempt=task.attempts, events=[event])


async def _owned(conn: AsyncConnection, task_id: str, attempt: int) -> bool:
    """Tell whether ``attempt`` holds the task, locking its row until the commit."""
    row = await read_locked(conn, task_id)
    return row is not None and row["attempts"] == attempt and row["state"] == "running"


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
