"""Batches: OpenAI batch JSONL run as low-priority tasks, with progress and output files.

Each line of a batch that can run becomes a task of the ``completion`` agent with priority
``low`` (a worker gives low-priority work at most half its slots, so batches never starve
interactive tasks) and the idempotency key ``batch:<batch_id>:<custom_id>``, so a line can never
become two tasks. A line that cannot run is kept with its reason. The batch, its lines and
their tasks are committed in one transaction, in chunked statements, before anything is
published: a batch exists whole or not at all, and the dispatcher's sweeper publishes whatever
JetStream did not acknowledge.

Progress is counted from the line tasks' states whenever a batch is read. The first read that
finds every line ended finalizes the batch, once (a conditional update in the transaction that
stores the files): the output file holds the answers in line order, the error file every other
line (rejected, failed, dead-lettered or cancelled) with why. So ``completed + failed ==
total`` and each line is in exactly one of the two files. They are stored, not rendered on each
download: files are objects of their own in OpenAI's API, and a stored output does not depend on
how long the tasks are kept.

Cancelling marks the batch ``cancelling`` and cancels its unfinished line tasks (queued ones at
once, running ones at their next step); the read that finds them all ended makes it
``cancelled``, with what did finish in the output file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from pydantic_core import PydanticCustomError

from spine.platform.batches.files import FileStore, new_file_id
from spine.platform.batches.input import (
    CHAT_COMPLETIONS,
    COMPLETION_WINDOW,
    BatchCreate,
    BatchInput,
    BatchLimits,
    check_endpoint,
    check_window,
    parse_batch_input,
)
from spine.platform.batches.lines import line_rows
from spine.platform.batches.output import Batch, batch_of, render_line
from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, NotFound
from spine.platform.keys import Principal
from spine.platform.models.responses_wire import token_usage
from spine.platform.schema import BatchLineRow, BatchRow, TaskRow, utcnow
from spine.platform.tasks import TERMINAL_STATES, Task, TaskStore

__all__ = ["Batches", "LineDispatcher"]

logger = logging.getLogger(__name__)

ERRORS_SHOWN = 100
"""Rejected lines listed on the batch itself; the error file lists them all."""

_WINDOW = timedelta(hours=24)
_CHUNK = 1000
_PUBLISH_CHUNK = 500
_UNFINISHED: frozenset[str] = frozenset({"in_progress", "cancelling"})
T = TypeVar("T")
_Row = Mapping[Any, Any]
"""A batch or line row as the database returns it (or as it was inserted)."""


class LineDispatcher(Protocol):
    """How line tasks reach workers and are stopped (:class:`~spine.agents.TaskDispatcher`)."""

    async def publish(self, tasks: list[Task], *, stalled: bool = False) -> int:
        """Publish committed tasks; those JetStream does not acknowledge stay for the sweeper."""
        ...

    async def cancel(self, task_id: str, *, principal: Principal) -> Task:
        """Cancel a task, and tell the worker running it to stop."""
        ...


class Batches:
    """Creates batches, reports their progress, finalizes and cancels them."""

    def __init__(
        self,
        db: Database,
        *,
        tasks: TaskStore,
        files: FileStore,
        dispatcher: LineDispatcher,
        limits: BatchLimits | None = None,
    ) -> None:
        self._db = db
        self._tasks = tasks
        self._files = files
        self._dispatcher = dispatcher
        self.limits = limits or files.limits

    # -- creating ------------------------------------------------------------------------------

    async def create(self, request: BatchCreate, *, principal: Principal) -> Batch:
        """Start a batch over an uploaded file of purpose ``batch``."""
        try:
            stored = await self._files.get(request.input_file_id, tenant=principal.tenant)
        except NotFound:
            raise NotFound(f"no file {request.input_file_id!r}", field="input_file_id") from None
        if stored.purpose != "batch":
            raise BadRequest(
                f"file {stored.id} has purpose {stored.purpose!r}; a batch reads a file "
                "uploaded with purpose 'batch'",
                field="input_file_id",
            )
        content = await self._files.content(stored.id, tenant=principal.tenant)
        # Reading a large file takes a while: off the event loop, so other requests go on.
        parsed = await asyncio.to_thread(
            parse_batch_input,
            content,
            endpoint=request.endpoint,
            max_lines=self.limits.max_lines,
        )
        return await self._start(
            parsed,
            principal=principal,
            endpoint=request.endpoint,
            metadata=request.metadata,
            input_file_id=stored.id,
        )

    async def create_from_jsonl(
        self,
        content: bytes,
        *,
        principal: Principal,
        endpoint: str = CHAT_COMPLETIONS,
        completion_window: str = COMPLETION_WINDOW,
        filename: str = "batch.jsonl",
    ) -> Batch:
        """Store JSONL posted directly as the batch's input file, and start the batch."""
        for field, check, value in (
            ("endpoint", check_endpoint, endpoint),
            ("completion_window", check_window, completion_window),
        ):
            try:
                check(value)
            except PydanticCustomError as exc:
                raise BadRequest(f"invalid '{field}': {exc}", field=field) from None
        self._files.check_size(len(content), field="body")
        parsed = await asyncio.to_thread(
            parse_batch_input,
            content,
            endpoint=endpoint,
            max_lines=self.limits.max_lines,
            field="body",
        )
        return await self._start(
            parsed,
            principal=principal,
            endpoint=endpoint,
            metadata=None,
            input_file_id=new_file_id(),
            upload=(filename, content),
        )

    async def _start(
        self,
        parsed: BatchInput,
        *,
        principal: Principal,
        endpoint: str,
        metadata: dict[str, str] | None,
        input_file_id: str,
        upload: tuple[str, bytes] | None = None,
    ) -> Batch:
        batch_id = f"batch_{uuid.uuid4().hex}"
        now = utcnow()
        runnable = bool(parsed.requests)
        row: dict[str, Any] = {
            "id": batch_id,
            "tenant": principal.tenant,
            "key_id": principal.key_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "status": "in_progress",
            "input_file_id": input_file_id,
            "output_file_id": None,
            "error_file_id": None,
            "model": parsed.model,
            "total": parsed.total,
            "invalid": len(parsed.errors),
            "completed": 0,
            "failed": len(parsed.errors),
            "errors": [e.openai() for e in parsed.errors[:ERRORS_SHOWN]] or None,
            "usage": None,
            "metadata": metadata,
            "created_at": now,
            "in_progress_at": now if runnable else None,
            "expires_at": now + _WINDOW,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
        }
        new, lines = await asyncio.to_thread(line_rows, batch_id, parsed)
        async with self._db.transaction() as conn:
            if upload is not None:
                await self._files.create(
                    tenant=principal.tenant,
                    purpose="batch",
                    filename=upload[0],
                    content=upload[1],
                    file_id=input_file_id,
                    conn=conn,
                )
            await conn.execute(sa.insert(_BATCHES).values(_columns(row)))
            for chunk in _chunks(lines, _CHUNK):
                await conn.execute(sa.insert(_LINES), chunk)
            created = await self._tasks.insert_many(
                conn, new, tenant=principal.tenant, key_id=principal.key_id
            )
        logger.info(
            "batch %s: %d requests queued, %d lines rejected",
            batch_id,
            len(created),
            len(parsed.errors),
        )
        for tasks in _chunks(created, _PUBLISH_CHUNK):
            if await self._dispatcher.publish(list(tasks)) < len(tasks):
                break  # NATS is away: the sweeper publishes the rest when it is back
        return await self._refresh(row, principal)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, batch_id: str, *, principal: Principal) -> Batch:
        """Return a batch with its progress, finalizing it if every line has ended."""
        return await self._refresh(await self._row(batch_id, principal.tenant), principal)

    async def list_page(
        self, *, principal: Principal, limit: int = 20, after: str | None = None
    ) -> tuple[list[Batch], bool]:
        """List the tenant's batches, newest first; ``after`` is the last batch id seen."""
        query = sa.select(_BATCHES).where(_BATCHES.c.tenant == principal.tenant)
        if after is not None:
            try:
                mark = await self._row(after, principal.tenant)
            except NotFound:
                raise BadRequest(f"no batch {after!r} to list after", field="after") from None
            query = query.where(
                sa.or_(
                    _BATCHES.c.created_at < mark["created_at"],
                    sa.and_(_BATCHES.c.created_at == mark["created_at"], _BATCHES.c.id < after),
                )
            )
        query = query.order_by(_BATCHES.c.created_at.desc(), _BATCHES.c.id.desc())
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query.limit(limit + 1))).mappings())
        batches = [await self._refresh(row, principal) for row in rows[:limit]]
        return batches, len(rows) > limit

    async def result_file(
        self, batch_id: str, *, principal: Principal, kind: Literal["output", "error"]
    ) -> bytes:
        """Return a finished batch's output or error JSONL (empty when it has none)."""
        batch = await self.get(batch_id, principal=principal)
        if not batch.is_final:
            raise Conflict(
                f"batch {batch_id} is {batch.status}; its files are written when it ends",
                field="batch_id",
                status=batch.status,
            )
        file_id = batch.output_file_id if kind == "output" else batch.error_file_id
        if file_id is None:
            return b""
        return await self._files.content(file_id, tenant=principal.tenant)

    # -- cancelling ----------------------------------------------------------------------------

    async def cancel(self, batch_id: str, *, principal: Principal) -> Batch:
        """Stop a batch: its unfinished lines are cancelled, what finished is kept."""
        row = await self._row(batch_id, principal.tenant)
        if row["status"] == "in_progress":
            async with self._db.transaction() as conn:
                await conn.execute(
                    sa.update(_BATCHES)
                    .where(_BATCHES.c.id == batch_id, _BATCHES.c.status == "in_progress")
                    .values(status="cancelling", cancelling_at=utcnow())
                )
            row = await self._row(batch_id, principal.tenant)
        if row["status"] not in ("cancelling", "cancelled"):
            raise Conflict(
                f"batch {batch_id} already ended as {row['status']}",
                field="batch_id",
                status=row["status"],
            )
        return await self._refresh(row, principal)

    async def _cancel_lines(self, batch_id: str, principal: Principal) -> None:
        # Also on later reads of a cancelling batch: a cancel cut short (the API stopped) is
        # finished by whoever looks next. Tasks already asked to stop are not asked again.
        query = (
            sa.select(_TASKS.c.id)
            .select_from(_LINES.join(_TASKS, _TASKS.c.id == _LINES.c.task_id))
            .where(
                _LINES.c.batch_id == batch_id,
                _TASKS.c.state.notin_(TERMINAL_STATES),
                _TASKS.c.cancel_requested == sa.false(),
            )
            # Queued lines first: a running line stopped frees a worker slot, which must not
            # go to a queued line of this batch before that line is cancelled.
            .order_by(sa.case((_TASKS.c.state == "queued", 0), else_=1), _LINES.c.line)
        )
        async with self._db.transaction() as conn:
            task_ids = list((await conn.execute(query)).scalars())
        for task_id in task_ids:
            with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile
                await self._dispatcher.cancel(task_id, principal=principal)

    # -- progress and finalizing ---------------------------------------------------------------

    async def sweep_once(self, *, limit: int = 100) -> int:
        """Finalize (or go on cancelling) unfinished batches nobody reads; return how many."""
        query = (
            sa.select(_BATCHES)
            .where(_BATCHES.c.status.in_(_UNFINISHED))
            .order_by(_BATCHES.c.created_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        for row in rows:
            system = Principal(key_id="", tenant=row["tenant"], role="admin")
            await self._refresh(row, system)
        return len(rows)

    async def _refresh(self, row: _Row, principal: Principal) -> Batch:
        for _ in range(3):
            if row["status"] not in _UNFINISHED:
                return batch_of(row)
            states = await self._states(row["id"])
            if any(count for state, count in states.items() if state not in TERMINAL_STATES):
                if row["status"] == "cancelling":
                    await self._cancel_lines(row["id"], principal)
                return batch_of(row, states)
            finalized = await self._finalize(row)
            if finalized is not None:
                return batch_of(finalized)
            row = await self._row(row["id"], row["tenant"])  # changed meanwhile: read again
        return batch_of(row)

    async def _states(self, batch_id: str) -> dict[str, int]:
        query = (
            sa.select(_TASKS.c.state, sa.func.count())
            .select_from(_LINES.join(_TASKS, _TASKS.c.id == _LINES.c.task_id))
            .where(_LINES.c.batch_id == batch_id)
            .group_by(_TASKS.c.state)
        )
        async with self._db.transaction() as conn:
            return {state: int(count) for state, count in await conn.execute(query)}

    async def _finalize(self, row: _Row) -> dict[str, Any] | None:
        """Write the files and the final status once; None if another reader got there first."""
        batch_id = row["id"]
        cancelling = row["status"] == "cancelling"
        output, errors = bytearray(), bytearray()
        completed = failed = input_tokens = output_tokens = 0
        async for line in self._lines(batch_id):
            rendered, answer = render_line(batch_id, line, cancelling=cancelling)
            if answer is not None:
                completed += 1
                output += rendered
                usage = answer.get("usage") or {}
                input_tokens += int(usage.get("prompt_tokens") or 0)
                output_tokens += int(usage.get("completion_tokens") or 0)
            else:
                failed += 1
                errors += rendered
        now = utcnow()
        status = (
            "cancelled"
            if cancelling
            else ("completed" if row["total"] > row["invalid"] else "failed")
        )
        changes: dict[str, Any] = {
            "status": status,
            "completed": completed,
            "failed": failed,
            "finalizing_at": now,
            f"{status}_at": now,
            "output_file_id": new_file_id() if output else None,
            "error_file_id": new_file_id() if errors else None,
            "usage": token_usage(input_tokens, output_tokens) if completed else None,
        }
        try:
            async with self._db.transaction() as conn:
                updated = await conn.execute(
                    sa.update(_BATCHES)
                    .where(_BATCHES.c.id == batch_id, _BATCHES.c.status == row["status"])
                    .values(changes)
                )
                if not updated.rowcount:
                    raise _Superseded
                for file_id, content, kind in (
                    (changes["output_file_id"], output, "output"),
                    (changes["error_file_id"], errors, "error"),
                ):
                    if file_id is not None:
                        await self._files.create(
                            tenant=row["tenant"],
                            purpose="batch_output",
                            filename=f"{batch_id}_{kind}.jsonl",
                            content=bytes(content),
                            file_id=file_id,
                            conn=conn,
                        )
        except _Superseded:
            return None
        logger.info(
            "batch %s %s: %d answered, %d in the error file", batch_id, status, completed, failed
        )
        return {**row, **changes}

    async def _lines(self, batch_id: str) -> AsyncIterator[_Row]:
        query = (
            sa.select(
                _LINES.c.line,
                _LINES.c.custom_id,
                _LINES.c.task_id,
                _LINES.c.error,
                _TASKS.c.state,
                _TASKS.c.result,
                _TASKS.c.error.label("task_error"),
            )
            .select_from(_LINES.outerjoin(_TASKS, _TASKS.c.id == _LINES.c.task_id))
            .where(_LINES.c.batch_id == batch_id)
            .order_by(_LINES.c.line)
            .limit(_CHUNK)
        )
        after = 0
        while True:
            async with self._db.transaction() as conn:
                rows = list((await conn.execute(query.where(_LINES.c.line > after))).mappings())
            for line in rows:
                yield line
            if len(rows) < _CHUNK:
                return
            after = rows[-1]["line"]

    async def _row(self, batch_id: str, tenant: str) -> _Row:
        query = sa.select(_BATCHES).where(_BATCHES.c.id == batch_id, _BATCHES.c.tenant == tenant)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"no batch {batch_id!r}", field="batch_id")
        return row


class _Superseded(Exception):
    """Another reader finalized (or cancelled) the batch first."""


_BATCHES: sa.Table = BatchRow.__table__  # type: ignore[assignment]
_LINES: sa.Table = BatchLineRow.__table__  # type: ignore[assignment]
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]


def _columns(row: _Row) -> dict[str, Any]:
    return {column.name: row[column.name] for column in _BATCHES.c}


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
