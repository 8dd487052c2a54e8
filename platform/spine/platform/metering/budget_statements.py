"""The budget counters' statements, and the refusal a full counter answers with.

The ledger (:mod:`.budgets`) runs the same few statements on both databases: SQLAlchemy Core on
SQLite, plain SQL through asyncpg's prepared statements on PostgreSQL (its hot path: a hold is
one statement that commits on its own). Both sets are kept here, side by side, so a change to
one is seen beside the other. :func:`usage_spend` and :func:`seed` read a scope's spend from the
usage ledger (``model_calls``, the durable record of every call's cost), for a budget that was
not counted until it got a limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.errors import BudgetExceeded
from spine.platform.metering.budget_periods import Counter, resets_at
from spine.platform.schema import (
    ApiKeyRow,
    BudgetHoldRow,
    BudgetSpendRow,
    ModelCallRow,
    Money,
    money_text,
)

__all__ = [
    "HOLDS",
    "READ_SQL",
    "SETTLE_SQL",
    "SPEND",
    "Insert",
    "ensure_rows",
    "free",
    "hold",
    "hold_driver",
    "move",
    "per_counter",
    "read_counter",
    "refusal",
    "seed",
    "spent_driver",
    "usage_spend",
]

# The dialect's INSERT (SQLite's or PostgreSQL's: both have ON CONFLICT DO NOTHING).
Insert = Callable[[sa.Table], Any]
logger = logging.getLogger("spine.platform.metering.budgets")  # the ledger's log, as before
_ZERO = Decimal(0)

SPEND: sa.Table = BudgetSpendRow.__table__  # type: ignore[assignment]
HOLDS: sa.Table = BudgetHoldRow.__table__  # type: ignore[assignment]
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
_KEYS: sa.Table = ApiKeyRow.__table__  # type: ignore[assignment]

# Bound names differ from column names: in an UPDATE those would become SET clauses.
_SCOPE = sa.bindparam("p_scope", type_=sa.String())
_PERIOD = sa.bindparam("p_period", type_=sa.String())
_DAY = sa.bindparam("p_day", type_=sa.Date())
_AMOUNT = sa.bindparam("p_amount", type_=Money())
_LIMIT = sa.bindparam("p_limit", type_=Money())
_ACTUAL = sa.bindparam("p_actual", type_=Money())
HOLD = (
    sa.update(SPEND)
    .where(
        SPEND.c.scope == _SCOPE,
        SPEND.c.period == _PERIOD,
        SPEND.c.day == _DAY,
        sa.type_coerce(SPEND.c.spent + SPEND.c.reserved + _AMOUNT, Money()) <= _LIMIT,
    )
    .values(reserved=SPEND.c.reserved + _AMOUNT)
)
SETTLE = (
    sa.update(SPEND)
    .where(SPEND.c.scope == _SCOPE, SPEND.c.period == _PERIOD, SPEND.c.day == _DAY)
    .values(
        # Never below zero, even if a reservation were settled twice.
        reserved=sa.case(
            (SPEND.c.reserved >= _AMOUNT, SPEND.c.reserved - _AMOUNT), else_=sa.literal(0)
        ),
        spent=SPEND.c.spent + _ACTUAL,
    )
)
SEED = (
    sa.update(SPEND)
    .where(SPEND.c.scope == _SCOPE, SPEND.c.period == _PERIOD, SPEND.c.day == _DAY)
    .values(spent=sa.case((SPEND.c.spent >= _ACTUAL, SPEND.c.spent), else_=_ACTUAL))
)

# The same hold, row insert and read for asyncpg, in PostgreSQL's own terms (budget_spend).
# A hold and its row in budget_holds ($6: the reservation's id, $7: its holder) are one
# statement: both or neither.
_HOLD_SQL = """
WITH held AS (
  UPDATE budget_spend SET reserved = reserved + $4
  WHERE scope = $1 AND period = $2 AND day = $3 AND spent + reserved + $4 <= $5{lazy}
  RETURNING scope, period, day
)
INSERT INTO budget_holds (id, scope, period, day, holder, amount)
SELECT $6, scope, period, day, $7, $4 FROM held"""
HOLD_SQL = _HOLD_SQL.format(
    lazy="\n    AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"
)
"""Reserve ``$4`` in a counter and write its hold, if the limit ``$5`` leaves room.

Its commit does not wait for the WAL's flush (``synchronous_commit`` off for its transaction):
the counter's row lock is released at once instead of after the flush, which every other
reservation of the scope waits for. It is safe to lose in a crash of PostgreSQL: the counter's
change and the hold go together, and a settlement that finds no hold gives nothing back (a
settlement commits synchronously, flushing the WAL before it, so it never outlives its hold)."""
DURABLE_HOLD_SQL = _HOLD_SQL.format(lazy="")
"""The same hold, committed when the WAL is flushed: a lease's (:mod:`.budget_leases`). Its
calls are reserved in memory, so a lease lost in a crash of PostgreSQL would let the others
reserve what its calls spend; leases are taken once per many calls, so the wait is cheap."""
ENSURE_SQL = (
    "INSERT INTO budget_spend (scope, period, day, spent, reserved) VALUES ($1, $2, $3, 0, 0) "
    "ON CONFLICT DO NOTHING"
)
READ_SQL = "SELECT spent, reserved FROM budget_spend WHERE scope = $1 AND period = $2 AND day = $3"
SPENT_SQL = (
    "SELECT s.scope, s.period, s.day, s.spent FROM budget_spend s "
    "JOIN unnest($1::text[], $2::text[], $3::date[]) AS k(scope, period, day) "
    "ON s.scope = k.scope AND s.period = k.period AND s.day = k.day"
)
# One counter's part of a batch of settlements: the batch's holds in this counter ($4: the
# reservations' ids) are deleted and what they held given back, and $5 is spent, in one
# statement; run for each counter in sorted order (executemany: one round trip, atomic), so
# the counters are locked in the order reservations lock them.
SETTLE_SQL = """
WITH gone AS (
  DELETE FROM budget_holds
  WHERE id = ANY($4::varchar[]) AND scope = $1 AND period = $2 AND day = $3
  RETURNING amount
)
UPDATE budget_spend
SET reserved = GREATEST(reserved - (SELECT coalesce(sum(amount), 0) FROM gone), 0),
    spent = spent + $5
WHERE scope = $1 AND period = $2 AND day = $3"""


def bound(counter: Counter) -> dict[str, Any]:
    """The bound values naming ``counter`` in the Core statements."""
    return {"p_scope": counter.scope, "p_period": counter.period, "p_day": counter.start}


async def spent_driver(raw: Any, counters: list[Counter]) -> dict[Counter, Decimal]:
    """Read what each of ``counters`` has spent, in one statement (asyncpg)."""
    rows = await raw.fetch(
        SPENT_SQL,
        [c.scope for c in counters],
        [c.period for c in counters],
        [c.start for c in counters],
    )
    return {Counter(scope=r["scope"], period=r["period"], start=r["day"]): r["spent"] for r in rows}


async def hold_driver(
    raw: Any,
    counter: Counter,
    amount: Decimal,
    limit: Decimal,
    *,
    hold_id: str,
    holder: str,
    durable: bool = False,
) -> bool:
    """Hold ``amount`` in ``counter`` if its limit leaves room (asyncpg); as :func:`hold`.

    ``durable``: commit when the WAL is flushed (:data:`DURABLE_HOLD_SQL`).
    """
    key = (counter.scope, counter.period, counter.start)
    statement = DURABLE_HOLD_SQL if durable else HOLD_SQL
    if await raw.execute(statement, *key, amount, limit, hold_id, holder) != "INSERT 0 0":
        return True
    await raw.execute(ENSURE_SQL, *key)
    return bool(await raw.execute(statement, *key, amount, limit, hold_id, holder) != "INSERT 0 0")


def per_counter(rows: Iterable[Any]) -> dict[Counter, Decimal]:
    """Sum the ``amount`` of hold rows per counter."""
    freed: dict[Counter, Decimal] = {}
    for row in rows:
        counter = Counter(scope=row["scope"], period=row["period"], start=row["day"])
        freed[counter] = freed.get(counter, _ZERO) + row["amount"]
    return freed


def refusal(
    counter: Counter,
    amount: Decimal,
    limit: Decimal,
    found: tuple[Decimal, Decimal] | None,
) -> BudgetExceeded:
    """The error refusing ``amount`` in ``counter`` (``found``: its spent and reserved)."""
    spent, reserved = found or (_ZERO, _ZERO)
    resets = resets_at(counter.period, counter.start)
    logger.info(
        "budget %s (%s) refused %s: limit %s, spent %s, reserved %s",
        counter.scope,
        counter.period,
        money_text(amount),
        money_text(limit),
        money_text(spent),
        money_text(reserved),
    )
    left = limit - spent - reserved
    if left > 0:
        # Room is left, only not enough for this call's worst case: say so, not "exhausted".
        problem = (
            f"this call may cost up to {money_text(amount)}, more than the "
            f"{money_text(left)} left of the {counter.period} budget of {counter.scope}"
        )
    else:
        problem = f"the {counter.period} budget of {counter.scope} is exhausted"
    return BudgetExceeded(
        f"{problem}: {money_text(spent)} spent and {money_text(reserved)} reserved of "
        f"{money_text(limit)}; it resets at {resets.isoformat()}",
        scope=counter.scope,
        period=counter.period,
        budget=money_text(limit),
        spent=money_text(spent),
        reserved=money_text(reserved),
        requested=money_text(amount),
        resets_at=resets.isoformat(),
    )


# -- the SQLite side, through SQLAlchemy Core -------------------------------------------------


async def hold(
    conn: AsyncConnection,
    insert: Insert,
    counter: Counter,
    amount: Decimal,
    limit: Decimal,
    *,
    hold_id: str,
    holder: str,
) -> bool:
    """Hold ``amount`` in ``counter`` if its limit leaves room, with its row in
    ``budget_holds`` (``hold_id``, ``holder``); tell whether it did."""
    values = {**bound(counter), "p_amount": amount, "p_limit": limit}
    held = await conn.execute(HOLD, values)
    if not held.rowcount:
        # No row yet (the counter's first call of its period) or no room left. Insert the
        # row if missing, then try again: another call may have just inserted it, and the
        # retry must see that row, not a refusal based on the first statement's snapshot.
        await ensure_rows(conn, insert, (counter,))
        held = await conn.execute(HOLD, values)
        if not held.rowcount:
            return False
    row = {"scope": counter.scope, "period": counter.period, "day": counter.start}
    await conn.execute(sa.insert(HOLDS).values(id=hold_id, holder=holder, amount=amount, **row))
    return True


async def free(conn: AsyncConnection, hold_ids: list[str]) -> dict[Counter, Decimal]:
    """Delete the holds of ``hold_ids``; return what they held, per counter (a hold given
    back already, by its settlement or as a dead process's, see :mod:`.budget_holds`, is not
    counted again)."""
    if not hold_ids:
        return {}
    gone = (
        sa.delete(HOLDS)
        .where(HOLDS.c.id.in_(hold_ids))
        .returning(HOLDS.c.scope, HOLDS.c.period, HOLDS.c.day, HOLDS.c.amount)
    )
    return per_counter((await conn.execute(gone)).mappings())


async def ensure_rows(conn: AsyncConnection, insert: Insert, counters: Iterable[Counter]) -> None:
    """Insert the counters' rows that are missing (at zero)."""
    rows = [
        {"scope": c.scope, "period": c.period, "day": c.start, "spent": _ZERO, "reserved": _ZERO}
        for c in counters
    ]
    await conn.execute(insert(SPEND).values(rows).on_conflict_do_nothing())


async def read_counter(conn: AsyncConnection, counter: Counter) -> tuple[Decimal, Decimal] | None:
    """Return what ``counter`` has spent and holds reserved, None when it has no row."""
    query = sa.select(SPEND.c.spent, SPEND.c.reserved).where(
        SPEND.c.scope == counter.scope,
        SPEND.c.period == counter.period,
        SPEND.c.day == counter.start,
    )
    row = (await conn.execute(query)).one_or_none()
    return (row.spent, row.reserved) if row is not None else None


async def move(
    conn: AsyncConnection, counters: Iterable[Counter], held: Decimal, *, spent: Decimal
) -> None:
    """Give back ``held`` in each counter and count ``spent`` instead."""
    for counter in counters:
        await conn.execute(SETTLE, {**bound(counter), "p_amount": held, "p_actual": spent})


# -- the usage ledger's record of a scope's spend ---------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _usage_spend_query(scope: str, start: date, end: date) -> sa.Select[Any]:
    """The sum of the costs ``scope`` recorded in the usage ledger from ``start`` to ``end``."""
    query = sa.select(
        sa.type_coerce(sa.func.coalesce(sa.func.sum(_CALLS.c.cost), 0), Money())
    ).where(_CALLS.c.created_at >= _midnight(start), _CALLS.c.created_at < _midnight(end))
    kind, _, name = scope.partition(":")
    if kind == "tenant":
        query = query.where(_CALLS.c.tenant == name)
    elif kind == "key":
        # The key's tenant lets the (tenant, created_at) index find its calls.
        tenant = sa.select(_KEYS.c.tenant).where(_KEYS.c.id == name).scalar_subquery()
        query = query.where(_CALLS.c.tenant == tenant, _CALLS.c.key_id == name)
    return query


async def usage_spend(conn: AsyncConnection, scope: str, start: date, end: date) -> Decimal:
    """Return what ``scope`` spent from ``start`` to ``end`` by the usage ledger."""
    found: Decimal | None = (await conn.execute(_usage_spend_query(scope, start, end))).scalar()
    return found if found is not None else _ZERO


async def seed(conn: AsyncConnection, insert: Insert, counter: Counter, end: date) -> Decimal:
    """Count in ``counter`` what its scope spent so far in its period; return that spend.

    The counter keeps what it counted when that is more (usage rows are written behind).
    """
    spent = await usage_spend(conn, counter.scope, counter.start, end)
    await ensure_rows(conn, insert, (counter,))
    await conn.execute(SEED, {**bound(counter), "p_actual": spent})
    return spent
