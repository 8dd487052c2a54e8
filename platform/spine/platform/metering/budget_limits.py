"""Budget limits: the settings' defaults, and the limits stored in the database that override them.

A budget is a scope (``global``, ``tenant:<name>``, ``key:<id>``) and a period (``daily``,
``weekly``, ``monthly``). Where its limit comes from, first match wins:

1. a **stored** limit (table ``budget_limits``), set over HTTP (``PUT /v1/budgets/...``) or with
   ``spine budgets set``; removing it brings back the default below;
2. the **settings** (``GENAI_BUDGET_DAILY`` for ``global``, ``GENAI_BUDGETS__TENANTS`` and
   ``GENAI_BUDGETS__KEYS`` for tenants and keys): daily limits only;
3. none: the budget is unlimited and not counted.

Stored limits are a few rows (one per budget set); :class:`BudgetBook` reads them all at once,
and the budget ledger keeps them for a few seconds (``GENAI_BUDGETS__STORED_SECONDS``), so a
change takes effect in every process within that time, and at once in the process that made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.metering.budget_periods import Period
from spine.platform.schema import BudgetLimitRow, utcnow
from spine.platform.settings import Settings

__all__ = ["GLOBAL", "MAX_LIMIT", "BudgetBook", "BudgetLimits", "LimitSource", "StoredBudget"]

GLOBAL = "global"
# Money holds 10 digits before the point; a limit stays well inside it.
MAX_LIMIT = Decimal(1_000_000_000)
LimitSource = Literal["stored", "settings"]
_LIMITS: sa.Table = BudgetLimitRow.__table__  # type: ignore[assignment]


@dataclass(slots=True, kw_only=True, frozen=True)
class BudgetLimits:
    """The limit of each budget; a budget missing here is unlimited.

    ``daily``, ``tenants`` and ``keys`` are the settings' daily limits; ``stored`` the limits
    stored in the database, by scope and period, which win over them.
    """

    daily: Decimal | None = None
    tenants: Mapping[str, Decimal] = field(default_factory=dict)
    keys: Mapping[str, Decimal] = field(default_factory=dict)
    stored: Mapping[tuple[str, Period], Decimal] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> BudgetLimits:
        """Read ``GENAI_BUDGET_DAILY``, ``GENAI_BUDGETS__TENANTS`` and ``GENAI_BUDGETS__KEYS``."""
        return cls(
            daily=settings.budget_daily,
            tenants=dict(settings.budgets.tenants),
            keys=dict(settings.budgets.keys),
        )

    def with_stored(self, stored: Mapping[tuple[str, Period], Decimal]) -> BudgetLimits:
        """Return these defaults with ``stored`` limits over them."""
        return replace(self, stored=dict(stored))

    def limit(self, scope: str, period: Period = "daily") -> Decimal | None:
        """Return the limit of ``scope`` in ``period``, None when it has none."""
        stored = self.stored.get((scope, period))
        if stored is not None:
            return stored
        return self.default(scope, period)

    def default(self, scope: str, period: Period = "daily") -> Decimal | None:
        """Return the settings' limit of ``scope`` in ``period`` (daily only), or None."""
        if period != "daily":
            return None
        if scope == GLOBAL:
            return self.daily
        kind, _, name = scope.partition(":")
        if kind == "tenant":
            return self.tenants.get(name)
        if kind == "key":
            return self.keys.get(name)
        return None

    def source(self, scope: str, period: Period = "daily") -> LimitSource | None:
        """Tell where the limit of ``scope`` in ``period`` comes from; None: unlimited."""
        if (scope, period) in self.stored:
            return "stored"
        return "settings" if self.default(scope, period) is not None else None


@dataclass(slots=True, kw_only=True, frozen=True)
class StoredBudget:
    """A limit stored in the database."""

    scope: str
    period: Period
    amount: Decimal
    updated_at: datetime
    updated_by: str | None


class BudgetBook:
    """Reads and writes the stored limits (table ``budget_limits``)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert

    async def all(self) -> dict[tuple[str, Period], Decimal]:
        """Return every stored limit, by scope and period."""
        query = sa.select(_LIMITS.c.scope, _LIMITS.c.period, _LIMITS.c.amount)
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return {(r.scope, r.period): r.amount for r in rows}

    async def of(self, scope: str) -> list[StoredBudget]:
        """Return the limits stored for ``scope``."""
        query = sa.select(_LIMITS).where(_LIMITS.c.scope == scope)
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_stored(row) for row in rows]

    async def set(
        self, scope: str, period: Period, amount: Decimal, *, by: str | None
    ) -> StoredBudget | None:
        """Store the limit of ``scope`` in ``period``; return the stored one it replaced."""
        now = utcnow()
        values = {
            "scope": scope,
            "period": period,
            "amount": amount,
            "updated_at": now,
            "updated_by": by,
        }
        upsert = (
            self._insert(_LIMITS)
            .values(**values)
            .on_conflict_do_update(
                index_elements=[_LIMITS.c.scope, _LIMITS.c.period],
                set_={"amount": amount, "updated_at": now, "updated_by": by},
            )
        )
        async with self._db.transaction() as conn:
            previous = await self._read(conn, scope, period)
            await conn.execute(upsert)
        return previous

    async def remove(self, scope: str, period: Period) -> StoredBudget | None:
        """Remove the stored limit of ``scope`` in ``period``; return it (None: there was none)."""
        async with self._db.transaction() as conn:
            previous = await self._read(conn, scope, period)
            await conn.execute(
                sa.delete(_LIMITS).where(_LIMITS.c.scope == scope, _LIMITS.c.period == period)
            )
        return previous

    async def _read(self, conn: AsyncConnection, scope: str, period: str) -> StoredBudget | None:
        query = sa.select(_LIMITS).where(_LIMITS.c.scope == scope, _LIMITS.c.period == period)
        row = (await conn.execute(query)).mappings().one_or_none()
        return _stored(row) if row is not None else None


def _stored(row: sa.RowMapping) -> StoredBudget:
    return StoredBudget(
        scope=row["scope"],
        period=row["period"],
        amount=row["amount"],
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )
