"""The usage ledger: one row per model call, and totals computed by the database.

Every routed call (a cache hit, a failure, each fallback's final answer) is recorded with who
made it, what it cost and how it went. :meth:`UsageLedger.summary` groups those rows by day,
model, tenant or provider in one ``GROUP BY`` query, on SQLite and PostgreSQL alike; days are
UTC days.

Rows are written behind: :meth:`UsageLedger.submit` queues a row and returns, and a background
writer inserts what gathered every ~20 ms (or every 200 rows) with one multi-row ``INSERT``, so
a model call costs no commit of its own (on PostgreSQL through asyncpg's prepared statement,
one pipelined ``executemany``). A flush that fails keeps its rows and is retried with
backoff; the inserts ignore ids already stored, so a retry after a commit whose answer was lost
writes nothing twice. When the queue is full, :meth:`~UsageLedger.submit` writes its row itself
and the caller waits (backpressure: rows are never dropped). :meth:`~UsageLedger.summary` first
flushes this process's pending rows, so a caller reads its own calls; :meth:`~UsageLedger.close`
drains the queue. A worker ending a task takes that task's rows out of the queue and writes
them in the statement that ends it (:meth:`~UsageLedger.take`, :func:`insert_calls_from_json`):
one commit for both, and whoever sees the task finished sees what it used.

The trade-off: the rows of the last ~20 ms are lost if the process is killed without closing
(SIGKILL, a crash). Budgets do not depend on these rows: they are reserved synchronously
(:mod:`spine.platform.metering.budgets`), so spend limits hold all the same.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.db import Database
from spine.platform.errors import BadRequest
from spine.platform.schema import ModelCallRow, Money, utcnow
from spine.platform.write_behind import WriteBehind

__all__ = [
    "OK",
    "Grouping",
    "ModelCallRecord",
    "UsageLedger",
    "UsageRow",
    "calls_json",
    "insert_calls",
    "insert_calls_from_json",
]

Grouping = Literal["day", "model", "tenant", "provider"]
OK = "ok"
_GROUPINGS: tuple[str, ...] = get_args(Grouping)
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
# The same insert for asyncpg, its parameters in this order; its JSON columns take JSON text.
_COLUMNS = (
    "id",
    "tenant",
    "key_id",
    "task_id",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cost",
    "latency_ms",
    "cache_hit",
    "fallback_path",
    "outcome",
    "created_at",
    "strategy",
    "task_category",
    "completion_id",
    "decision",
    "experiment_id",
    "arm",
)
_JSON_COLUMNS = frozenset({"fallback_path", "decision"})
_INSERT_SQL = (
    "INSERT INTO model_calls (id, tenant, key_id, task_id, model, provider, input_tokens, "
    "output_tokens, cost, latency_ms, cache_hit, fallback_path, outcome, created_at, strategy, "
    "task_category, completion_id, decision, experiment_id, arm) VALUES ($1, $2, $3, $4, $5, "
    "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) "
    "ON CONFLICT (id) DO NOTHING"
)


@dataclass(slots=True, kw_only=True)
class ModelCallRecord:
    """One model call as the usage ledger keeps it.

    ``outcome`` is ``"ok"`` or the error class (an ``error_type`` such as ``"rate_limited"``);
    ``fallback_path`` lists the models tried before the one that answered, in order.
    ``strategy`` is the routing strategy (``explicit`` for a model the caller named, not for one
    an experiment's arm set); ``decision`` how the ``learned`` strategy chose (candidates and
    scores, exploration, the weights version and the request's features); ``completion_id`` the
    gateway's answer id, by which a client may rate it; ``experiment_id``/``arm`` the A/B arm
    the call was routed by.
    """

    tenant: str
    model: str
    provider: str
    key_id: str | None = None
    task_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    cache_hit: bool = False
    fallback_path: list[str] = field(default_factory=list)
    outcome: str = OK
    created_at: datetime = field(default_factory=utcnow)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    strategy: str | None = None
    task_category: str | None = None
    completion_id: str | None = None
    decision: dict[str, Any] | None = None
    experiment_id: str | None = None
    arm: str | None = None


@dataclass(slots=True, kw_only=True)
class UsageRow:
    """Totals of one group; the fields not grouped by are None."""

    day: date | None = None
    model: str | None = None
    tenant: str | None = None
    provider: str | None = None
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    cache_hits: int
    errors: int


class UsageLedger:
    """Records model calls and sums them up, with Core statements (see ``Database``).

    Args:
        db: The database of the ``model_calls`` table.
        flush_interval: Seconds the background writer gathers rows before it writes them.
        batch_rows: The most rows one ``INSERT`` writes.
        max_queued: Rows that may wait; past that, :meth:`submit` writes its row itself.
    """

    def __init__(
        self,
        db: Database,
        *,
        flush_interval: float = 0.02,
        batch_rows: int = 200,
        max_queued: int = 10_000,
    ) -> None:
        self._db = db
        self._day = _utc_day(db)
        self._behind: WriteBehind[ModelCallRecord] = WriteBehind(
            self.record_many,
            what="usage rows",
            interval=flush_interval,
            batch=batch_rows,
            max_queued=max_queued,
        )

    async def record(self, call: ModelCallRecord) -> None:
        """Write one model call now."""
        await self.record_many([call])

    async def record_many(self, calls: Sequence[ModelCallRecord]) -> None:
        """Write several model calls in one transaction (a batch, a drained buffer).

        A call whose id is already stored is skipped, which makes a retried write harmless.
        """
        if not calls:
            return
        if not self._db.is_sqlite:
            records = [_driver_values(call) for call in calls]
            async with self._db.driver() as raw:
                await raw.executemany(_INSERT_SQL, records)  # atomic, one round trip
            return
        async with self._db.transaction() as conn:
            await insert_calls(conn, calls)

    async def submit(self, call: ModelCallRecord) -> None:
        """Queue one model call for the background writer; returns at once unless the queue
        is full, when the row is written before this returns."""
        await self._behind.submit(call)

    @property
    def pending(self) -> int:
        """Rows submitted and not written yet."""
        return self._behind.pending

    def take(self, task_id: str) -> list[ModelCallRecord]:
        """Take the task's rows not written yet, for the caller to write with the task's end
        (see :func:`calls_json`); :meth:`put_back` what it could not write."""
        return self._behind.take(lambda call: call.task_id == task_id)

    def put_back(self, calls: list[ModelCallRecord]) -> None:
        """Queue again rows :meth:`take` gave out and their taker did not write."""
        self._behind.put_back(calls)

    async def flush(self) -> None:
        """Write the rows submitted so far; never raises (see :meth:`WriteBehind.flush`)."""
        await self._behind.flush()

    async def close(self) -> None:
        """Drain the queue and stop the background writer."""
        await self._behind.close()

    async def summary(
        self,
        *,
        tenant: str | None,
        group_by: Sequence[Grouping] = (),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRow]:
        """Sum the calls of ``tenant`` (None: every tenant) made in ``[since, until)``.

        Returns:
            One row per group, ordered by the groups; no row for a group without calls, so
            no calls at all give an empty list.

        Raises:
            BadRequest: ``group_by`` names something other than day, model, tenant, provider.
        """
        unknown = [g for g in group_by if g not in _GROUPINGS]
        if unknown:
            raise BadRequest(
                f"cannot group usage by {unknown[0]!r}; use {', '.join(_GROUPINGS)}",
                field="group_by",
            )
        keys = list(dict.fromkeys(group_by))
        columns = {
            "day": self._day,
            "model": _CALLS.c.model,
            "tenant": _CALLS.c.tenant,
            "provider": _CALLS.c.provider,
        }
        grouped = [columns[key].label(key) for key in keys]
        query = sa.select(
            *grouped,
            sa.func.count().label("calls"),
            sa.func.coalesce(sa.func.sum(_CALLS.c.input_tokens), 0).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(_CALLS.c.output_tokens), 0).label("output_tokens"),
            sa.type_coerce(sa.func.sum(_CALLS.c.cost), Money()).label("cost"),
            sa.func.coalesce(sa.func.sum(sa.case((_CALLS.c.cache_hit, 1), else_=0)), 0).label(
                "cache_hits"
            ),
            sa.func.coalesce(sa.func.sum(sa.case((_CALLS.c.outcome != OK, 1), else_=0)), 0).label(
                "errors"
            ),
        )
        if tenant is not None:
            query = query.where(_CALLS.c.tenant == tenant)
        if since is not None:
            query = query.where(_CALLS.c.created_at >= since)
        if until is not None:
            query = query.where(_CALLS.c.created_at < until)
        if grouped:
            positions: list[sa.ColumnElement[Any]] = [
                sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)
            ]
            query = query.group_by(*positions).order_by(*positions)
        await self.flush()  # this process's own calls are read back
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        return [_usage_row(row) for row in rows if row["calls"]]

    async def calls_page(
        self,
        *,
        tenant: str | None,
        model: str | None = None,
        strategy: str | None = None,
        task_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        routed_only: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[ModelCallRecord], str | None]:
        """List calls newest first, ``limit`` at a time, with the cursor to the next page.

        ``routed_only`` keeps calls the router chose a model for (a strategy other than
        ``explicit``): the routing decisions.
        """
        query = sa.select(_CALLS)
        for column, value in (
            (_CALLS.c.tenant, tenant),
            (_CALLS.c.model, model),
            (_CALLS.c.strategy, strategy),
            (_CALLS.c.task_id, task_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if routed_only:
            query = query.where(_CALLS.c.strategy.is_not(None), _CALLS.c.strategy != "explicit")
        if since is not None:
            query = query.where(_CALLS.c.created_at >= since)
        if until is not None:
            query = query.where(_CALLS.c.created_at < until)
        if cursor is not None:
            when, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    _CALLS.c.created_at < when,
                    sa.and_(_CALLS.c.created_at == when, _CALLS.c.id < last_id),
                )
            )
        query = query.order_by(_CALLS.c.created_at.desc(), _CALLS.c.id.desc()).limit(limit + 1)
        await self.flush()
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        following = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [_record(row) for row in rows], following


def _utc_day(db: Database) -> sa.ColumnElement[Any]:
    # SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS...' text; PostgreSQL's date() would
    # follow the session's time zone, so the timestamp is first taken to UTC explicitly.
    created = _CALLS.c.created_at
    if db.is_sqlite:
        day: sa.ColumnElement[Any] = sa.func.substr(created, 1, 10)
    else:
        day = sa.cast(sa.func.timezone("UTC", created), sa.Date)
    return sa.type_coerce(day, sa.Date())


async def insert_calls(conn: AsyncConnection, calls: Sequence[ModelCallRecord]) -> None:
    """Insert usage rows in ``conn``'s transaction; ids already stored are skipped."""
    if not calls:
        return
    insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    statement = insert(_CALLS).on_conflict_do_nothing(index_elements=[_CALLS.c.id])
    await conn.execute(statement, [_values(call) for call in calls])


def insert_calls_from_json(parameter: str) -> str:
    """An ``INSERT`` of the usage rows in the JSON array ``parameter`` (:func:`calls_json`) for
    PostgreSQL, to be a data-modifying ``WITH`` of another statement: one commit for both."""
    columns = ", ".join(_COLUMNS)
    return (
        f"INSERT INTO model_calls ({columns}) SELECT {columns} "  # noqa: S608 (names, no values)
        f"FROM jsonb_populate_recordset(NULL::model_calls, {parameter}::jsonb) "
        "ON CONFLICT (id) DO NOTHING"
    )


def calls_json(calls: Sequence[ModelCallRecord]) -> str:
    """Render usage rows for :func:`insert_calls_from_json` (exact costs, as text)."""
    return json.dumps([_values(call) for call in calls], default=_as_text)


def _as_text(value: object) -> str:
    if isinstance(value, Decimal | datetime):
        return str(value)  # exact; PostgreSQL reads either form back
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _values(call: ModelCallRecord) -> dict[str, Any]:
    return {
        "id": call.id,
        "tenant": call.tenant,
        "key_id": call.key_id,
        "task_id": call.task_id,
        "model": call.model,
        "provider": call.provider,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cost": call.cost,
        "latency_ms": call.latency_ms,
        "cache_hit": call.cache_hit,
        "fallback_path": list(call.fallback_path),
        "outcome": call.outcome,
        "created_at": call.created_at,
        "strategy": call.strategy,
        "task_category": call.task_category,
        "completion_id": call.completion_id,
        "decision": call.decision,
        "experiment_id": call.experiment_id,
        "arm": call.arm,
    }


def _driver_values(call: ModelCallRecord) -> tuple[Any, ...]:
    values = _values(call)
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.dumps(values[name])
    return tuple(values[name] for name in _COLUMNS)


def _usage_row(row: sa.RowMapping) -> UsageRow:
    day = row.get("day")
    if isinstance(day, str):  # SQLite's text, when the Date type did not parse it
        day = date.fromisoformat(day)
    return UsageRow(
        day=day,
        model=row.get("model"),
        tenant=row.get("tenant"),
        provider=row.get("provider"),
        calls=int(row["calls"]),
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cost=row["cost"] if row["cost"] is not None else Decimal(0),
        cache_hits=int(row["cache_hits"]),
        errors=int(row["errors"]),
    )


def _record(row: sa.RowMapping) -> ModelCallRecord:
    return ModelCallRecord(
        id=row["id"],
        tenant=row["tenant"],
        key_id=row["key_id"],
        task_id=row["task_id"],
        model=row["model"],
        provider=row["provider"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost=row["cost"],
        latency_ms=row["latency_ms"],
        cache_hit=row["cache_hit"],
        fallback_path=list(row["fallback_path"] or []),
        outcome=row["outcome"],
        created_at=row["created_at"],
        strategy=row["strategy"],
        task_category=row["task_category"],
        completion_id=row["completion_id"],
        decision=row["decision"],
        experiment_id=row["experiment_id"],
        arm=row["arm"],
    )
