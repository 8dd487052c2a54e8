"""Daily budgets: spend is reserved before a model call and settled after it.

Each budget has a scope: ``global`` (``GENAI_BUDGET_DAILY``), ``tenant:<name>``
(``GENAI_BUDGETS__TENANTS``) and ``key:<id>`` (``GENAI_BUDGETS__KEYS``). One row per scope and
UTC day counts what was ``spent`` and what calls in flight hold ``reserved``.

A reservation is one conditional ``UPDATE ... SET reserved = reserved + :amount WHERE spent +
reserved + :amount <= :limit`` per scope, all in one transaction: the database decides, so
concurrent calls can never overspend, and a refusal in any scope rolls back the others. Scopes
are always updated in the same (sorted) order, so two reservations cannot deadlock. A scope
without a limit is not counted at all, and a call that costs nothing never touches the ledger.
On PostgreSQL the reservation runs through asyncpg's prepared statements
(:meth:`~spine.platform.db.Database.driver`), and the usual call, with one limited scope, is a
single statement that commits on its own.

Settling can be written behind (:meth:`BudgetLedger.settle_later`): settlements are queued and
a background writer applies every ~20 ms what gathered, summed per scope, in one transaction.
Until then the reservation stays held, which errs on the side of spending less; a reservation
refused while settlements are pending is tried again once they are written, so a refusal never
rests on a settlement not applied yet. :meth:`~BudgetLedger.state` reads them back first.

A reservation that is never settled nor released (its process died, or a settlement written
behind was lost with it) stays reserved until the day ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.errors import BudgetExceeded
from spine.platform.router import ModelSpec, Requirements
from spine.platform.schema import BudgetSpendRow, Money, utcnow
from spine.platform.settings import Settings
from spine.platform.write_behind import WriteBehind

__all__ = [
    "DEFAULT_ANSWER_TOKENS",
    "GLOBAL",
    "BudgetLedger",
    "BudgetLimits",
    "BudgetState",
    "Reservation",
    "budget_scopes",
    "cost_of",
    "estimate_cost",
    "is_free",
]

logger = logging.getLogger(__name__)

GLOBAL = "global"
# What an answer may cost when the request sets no max_tokens and the model's window is unknown.
DEFAULT_ANSWER_TOKENS = 4096
_ZERO = Decimal(0)
_SPEND: sa.Table = BudgetSpendRow.__table__  # type: ignore[assignment]

# Bound names differ from column names: in an UPDATE those would become SET clauses.
_SCOPE = sa.bindparam("p_scope", type_=sa.String())
_DAY = sa.bindparam("p_day", type_=sa.Date())
_AMOUNT = sa.bindparam("p_amount", type_=Money())
_LIMIT = sa.bindparam("p_limit", type_=Money())
_ACTUAL = sa.bindparam("p_actual", type_=Money())
_HOLD = (
    sa.update(_SPEND)
    .where(
        _SPEND.c.scope == _SCOPE,
        _SPEND.c.day == _DAY,
        sa.type_coerce(_SPEND.c.spent + _SPEND.c.reserved + _AMOUNT, Money()) <= _LIMIT,
    )
    .values(reserved=_SPEND.c.reserved + _AMOUNT)
)
_SETTLE = (
    sa.update(_SPEND)
    .where(_SPEND.c.scope == _SCOPE, _SPEND.c.day == _DAY)
    .values(
        # Never below zero, even if a reservation were settled twice.
        reserved=sa.case(
            (_SPEND.c.reserved >= _AMOUNT, _SPEND.c.reserved - _AMOUNT), else_=sa.literal(0)
        ),
        spent=_SPEND.c.spent + _ACTUAL,
    )
)

# The same hold, row insert and read for asyncpg, in PostgreSQL's own terms (budget_spend).
_HOLD_SQL = (
    "UPDATE budget_spend SET reserved = reserved + $3 "
    "WHERE scope = $1 AND day = $2 AND spent + reserved + $3 <= $4"
)
_ENSURE_SQL = (
    "INSERT INTO budget_spend (scope, day, spent, reserved) VALUES ($1, $2, 0, 0) "
    "ON CONFLICT DO NOTHING"
)
_READ_SQL = "SELECT spent, reserved FROM budget_spend WHERE scope = $1 AND day = $2"
_SETTLE_SQL = (
    "UPDATE budget_spend SET reserved = CASE WHEN reserved >= $3 THEN reserved - $3 ELSE 0 END, "
    "spent = spent + $4 WHERE scope = $1 AND day = $2"
)


def budget_scopes(*, tenant: str | None = None, key_id: str | None = None) -> list[str]:
    """Name every budget scope a call of this tenant and key falls under."""
    scopes = [GLOBAL]
    if tenant is not None:
        scopes.append(f"tenant:{tenant}")
    if key_id is not None:
        scopes.append(f"key:{key_id}")
    return scopes


def estimate_cost(spec: ModelSpec, prompt_tokens: int, max_tokens: int | None) -> Decimal | None:
    """Return the most a call can cost, to reserve before it; None when a price is unknown.

    Without ``max_tokens`` the answer may fill what the context window leaves (or
    :data:`DEFAULT_ANSWER_TOKENS` when the window is unknown). Estimate ``prompt_tokens`` from
    the messages with :meth:`Requirements.of`.
    """
    if max_tokens is None:
        left = (spec.context_window or 0) - prompt_tokens
        max_tokens = left if spec.context_window is not None else DEFAULT_ANSWER_TOKENS
    requirements = Requirements(prompt_tokens=max(prompt_tokens, 0), max_tokens=max(max_tokens, 0))
    return spec.estimated_cost(requirements)


def cost_of(spec: ModelSpec | None, input_tokens: int, output_tokens: int) -> Decimal:
    """Return what a call cost at ``spec``'s prices; an unknown price counts as free."""
    if spec is None or spec.input_price is None or spec.output_price is None:
        return Decimal(0)
    return spec.input_price * input_tokens + spec.output_price * output_tokens


def is_free(spec: ModelSpec) -> bool:
    """Tell whether a model costs nothing (a local model)."""
    return spec.input_price == 0 and spec.output_price == 0


@dataclass(slots=True, kw_only=True, frozen=True)
class BudgetLimits:
    """The daily limit of each scope; a scope missing here is unlimited."""

    daily: Decimal | None = None
    tenants: Mapping[str, Decimal] = field(default_factory=dict)
    keys: Mapping[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> BudgetLimits:
        """Read ``GENAI_BUDGET_DAILY``, ``GENAI_BUDGETS__TENANTS`` and ``GENAI_BUDGETS__KEYS``."""
        return cls(
            daily=settings.budget_daily,
            tenants=dict(settings.budgets.tenants),
            keys=dict(settings.budgets.keys),
        )

    def limit(self, scope: str) -> Decimal | None:
        """Return the daily limit of ``scope``, None when it has none."""
        if scope == GLOBAL:
            return self.daily
        kind, _, name = scope.partition(":")
        if kind == "tenant":
            return self.tenants.get(name)
        if kind == "key":
            return self.keys.get(name)
        return None


@dataclass(slots=True, kw_only=True, frozen=True)
class Reservation:
    """Spend held for one call in every limited scope, on the UTC day it was made."""

    scopes: tuple[str, ...]
    amount: Decimal
    day: date


@dataclass(slots=True, kw_only=True, frozen=True)
class BudgetState:
    """Where one scope stands today."""

    scope: str
    day: date
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal
    resets_at: datetime

    @property
    def remaining(self) -> Decimal | None:
        """What can still be reserved, None when unlimited."""
        if self.limit is None:
            return None
        return max(self.limit - self.spent - self.reserved, _ZERO)


@dataclass(slots=True, kw_only=True, frozen=True)
class _Settlement:
    reservation: Reservation
    actual: Decimal


class BudgetLedger:
    """Reserves, settles and releases spend against daily limits."""

    def __init__(
        self,
        db: Database,
        limits: BudgetLimits,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._limits = limits
        self._now = now
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert
        self._settlements: WriteBehind[_Settlement] = WriteBehind(
            self._settle_many, what="budget settlements"
        )

    @property
    def limits(self) -> BudgetLimits:
        """The limits this ledger enforces."""
        return self._limits

    def today(self) -> date:
        """Return the current UTC day, by this ledger's clock."""
        return _utc_day(self._now())

    async def reserve(self, scopes: Iterable[str], amount: Decimal) -> Reservation:
        """Hold ``amount`` in every limited scope, or in none.

        Raises:
            BudgetExceeded: One scope cannot cover ``amount``; nothing is held anywhere.
        """
        day = self.today()
        limited = tuple(sorted({s for s in scopes if self._limits.limit(s) is not None}))
        if amount <= 0 or not limited:
            # Free calls (local models) and unlimited scopes never wait on the database.
            return Reservation(scopes=limited, amount=max(amount, _ZERO), day=day)
        try:
            await self._hold_all(limited, day, amount)
        except BudgetExceeded:
            if not self._settlements.pending:
                raise
            # Settlements written behind still hold their reservations: apply them and look
            # again, so the refusal stands on the actual spend.
            await self._settlements.flush()
            await self._hold_all(limited, day, amount)
        return Reservation(scopes=limited, amount=amount, day=day)

    async def _hold_all(self, scopes: tuple[str, ...], day: date, amount: Decimal) -> None:
        if not self._db.is_sqlite:
            await self._hold_all_driver(scopes, day, amount)
            return
        async with self._db.transaction() as conn:
            for scope in scopes:
                limit = self._limits.limit(scope)
                assert limit is not None
                if not await self._hold(conn, scope, day, amount, limit):
                    refusal = await self._refusal(conn, scope, day, amount, limit)
                    raise refusal

    async def settle(self, reservation: Reservation, actual_cost: Decimal) -> None:
        """Turn a reservation into spend of ``actual_cost``, which may differ from it.

        A cost above the reservation is counted in full, even past the limit: the call was
        made. Later calls are refused until the day ends.
        """
        actual = max(actual_cost, _ZERO)
        if not reservation.scopes or (reservation.amount == 0 and actual == 0):
            return
        async with self._db.transaction() as conn:
            if reservation.amount == 0:
                await self._ensure_rows(conn, reservation.scopes, reservation.day)
            await self._move(conn, reservation, spent=actual)

    async def settle_later(self, reservation: Reservation, actual_cost: Decimal) -> None:
        """Settle like :meth:`settle`, written behind: queued, and applied within ~20 ms.

        The reservation stays held until then. A settlement whose scope rows may not exist yet
        (a reservation of nothing) is settled at once.
        """
        actual = max(actual_cost, _ZERO)
        if not reservation.scopes or (reservation.amount == 0 and actual == 0):
            return
        if reservation.amount == 0:
            await self.settle(reservation, actual)
            return
        await self._settlements.submit(_Settlement(reservation=reservation, actual=actual))

    async def flush(self) -> None:
        """Apply the settlements queued so far; never raises (failures are logged)."""
        await self._settlements.flush()

    async def close(self) -> None:
        """Apply the settlements queued and stop their background writer."""
        await self._settlements.close()

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back: the call failed or was never made."""
        if not reservation.scopes or reservation.amount == 0:
            return
        async with self._db.transaction() as conn:
            await self._move(conn, reservation, spent=_ZERO)

    async def state(self, scope: str, *, day: date | None = None) -> BudgetState:
        """Tell what ``scope`` has spent and holds reserved on ``day`` (default today)."""
        day = day or self.today()
        await self._settlements.flush()  # read this process's own settlements back
        query = sa.select(_SPEND.c.spent, _SPEND.c.reserved).where(
            _SPEND.c.scope == scope, _SPEND.c.day == day
        )
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).one_or_none()
        spent, reserved = (row.spent, row.reserved) if row is not None else (_ZERO, _ZERO)
        return BudgetState(
            scope=scope,
            day=day,
            limit=self._limits.limit(scope),
            spent=spent,
            reserved=reserved,
            resets_at=_next_midnight(day),
        )

    async def _hold_all_driver(self, scopes: tuple[str, ...], day: date, amount: Decimal) -> None:
        # One scope: its statements commit on their own; several: one transaction.
        async with self._db.driver() as raw:
            together = raw.transaction() if len(scopes) > 1 else contextlib.nullcontext()
            async with together:
                for scope in scopes:
                    limit = self._limits.limit(scope)
                    assert limit is not None
                    if not await _hold_driver(raw, scope, day, amount, limit):
                        row = await raw.fetchrow(_READ_SQL, scope, day)
                        found = (row["spent"], row["reserved"]) if row is not None else None
                        raise _refusal(scope, day, amount, limit, found)

    # -- statements ---------------------------------------------------------------------------

    async def _hold(
        self, conn: AsyncConnection, scope: str, day: date, amount: Decimal, limit: Decimal
    ) -> bool:
        held = await conn.execute(
            _HOLD, {"p_scope": scope, "p_day": day, "p_amount": amount, "p_limit": limit}
        )
        if held.rowcount:
            return True
        # No row yet (the scope's first call of the day) or no room left. Insert the row if
        # missing, then try again: another call may have just inserted it, and the retry
        # must see that row, not a refusal based on the first statement's snapshot.
        await self._ensure_rows(conn, (scope,), day)
        held = await conn.execute(
            _HOLD, {"p_scope": scope, "p_day": day, "p_amount": amount, "p_limit": limit}
        )
        return bool(held.rowcount)

    async def _ensure_rows(self, conn: AsyncConnection, scopes: Iterable[str], day: date) -> None:
        rows = [{"scope": s, "day": day, "spent": _ZERO, "reserved": _ZERO} for s in scopes]
        await conn.execute(self._insert(_SPEND).values(rows).on_conflict_do_nothing())

    async def _read(
        self, conn: AsyncConnection, scope: str, day: date
    ) -> tuple[Decimal, Decimal] | None:
        query = sa.select(_SPEND.c.spent, _SPEND.c.reserved).where(
            _SPEND.c.scope == scope, _SPEND.c.day == day
        )
        row = (await conn.execute(query)).one_or_none()
        return (row.spent, row.reserved) if row is not None else None

    async def _refusal(
        self, conn: AsyncConnection, scope: str, day: date, amount: Decimal, limit: Decimal
    ) -> BudgetExceeded:
        return _refusal(scope, day, amount, limit, await self._read(conn, scope, day))

    async def _settle_many(self, settlements: list[_Settlement]) -> None:
        # Summed per scope and day: one UPDATE per scope for the whole batch, in sorted order
        # like the reservations, so the two cannot deadlock. A batch retried after a commit
        # whose answer was lost counts its spend twice: it errs on the side of spending less.
        totals: dict[tuple[str, date], tuple[Decimal, Decimal]] = {}
        for settlement in settlements:
            reservation = settlement.reservation
            for scope in reservation.scopes:
                held, spent = totals.get((scope, reservation.day), (_ZERO, _ZERO))
                totals[scope, reservation.day] = (
                    held + reservation.amount,
                    spent + settlement.actual,
                )
        if not self._db.is_sqlite:
            rows = [(scope, day, held, spent) for (scope, day), (held, spent) in totals.items()]
            async with self._db.driver() as raw:
                await raw.executemany(_SETTLE_SQL, sorted(rows))  # atomic, one round trip
            return
        async with self._db.transaction() as conn:
            for (scope, day), (held, spent) in sorted(totals.items()):
                await conn.execute(
                    _SETTLE,
                    {"p_scope": scope, "p_day": day, "p_amount": held, "p_actual": spent},
                )

    async def _move(
        self, conn: AsyncConnection, reservation: Reservation, *, spent: Decimal
    ) -> None:
        for scope in reservation.scopes:
            await conn.execute(
                _SETTLE,
                {
                    "p_scope": scope,
                    "p_day": reservation.day,
                    "p_amount": reservation.amount,
                    "p_actual": spent,
                },
            )


async def _hold_driver(raw: Any, scope: str, day: date, amount: Decimal, limit: Decimal) -> bool:
    # As _hold: on no row, insert it if missing and try again.
    if await raw.execute(_HOLD_SQL, scope, day, amount, limit) != "UPDATE 0":
        return True
    await raw.execute(_ENSURE_SQL, scope, day)
    return bool(await raw.execute(_HOLD_SQL, scope, day, amount, limit) != "UPDATE 0")


def _refusal(
    scope: str,
    day: date,
    amount: Decimal,
    limit: Decimal,
    found: tuple[Decimal, Decimal] | None,
) -> BudgetExceeded:
    spent, reserved = found or (_ZERO, _ZERO)
    resets_at = _next_midnight(day)
    logger.info(
        "budget %s refused %s: limit %s, spent %s, reserved %s",
        scope,
        amount,
        limit,
        spent,
        reserved,
    )
    return BudgetExceeded(
        f"the daily budget of {scope} is exhausted: {_text(spent)} spent and "
        f"{_text(reserved)} reserved of {_text(limit)}; it resets at {resets_at.isoformat()}",
        scope=scope,
        budget=_text(limit),
        spent=_text(spent),
        reserved=_text(reserved),
        requested=_text(amount),
        resets_at=resets_at.isoformat(),
    )


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        raise ValueError("the budget clock must give timezone-aware datetimes")
    return moment.astimezone(UTC).date()


def _next_midnight(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)


def _text(amount: Decimal) -> str:
    # Amounts leave as strings: exact, and JSON can carry them (Decimal it cannot).
    return format(amount.normalize(), "f") if amount.is_finite() else str(amount)
