"""Budget alerts: a budget reached 80 % or 100 % of its limit in a period, announced once.

What counts is settled spend (what calls cost), not what calls in flight hold reserved: a
reservation is the most a call may cost, and most cost less. So a budget can refuse calls
before it reaches 100 % (what is reserved fills the rest); 100 % is reached when what was
spent meets the limit (a call may cost more than its reservation: it is counted in full).

Once per budget (scope), period, period start and threshold, across every process: the process
that settles spend past a threshold inserts a row keyed by exactly that (table
``budget_alerts``), and only the one whose insert went in announces it: logged, counted
(``spine_budget_alerts_total``) and handed to the ledger's :data:`AlertHook` (the API and
workers publish it on NATS, subject ``spine.budget.threshold``). The rows are the durable
record, shown with the budget (``GET /v1/budgets/...``: ``alerts``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite

from spine.platform.db import Database
from spine.platform.metering.budget_periods import Counter, Period
from spine.platform.schema import BudgetAlertRow
from spine.platform.telemetry import record_budget_alert

__all__ = ["THRESHOLDS", "AlertHook", "BudgetAlert", "BudgetAlerts", "reached"]

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[int, ...] = (80, 100)
"""Percentages of a limit that are announced."""
_ALERTS: sa.Table = BudgetAlertRow.__table__  # type: ignore[assignment]


class BudgetAlert(BaseModel):
    """A budget reached a threshold of its limit in one period, as published and shown."""

    type: Literal["budget.threshold"] = "budget.threshold"
    scope: str = Field(description="global, tenant:<name> or key:<id>.")
    tenant: str | None = Field(description="The tenant whose call reached it; None: global.")
    period: Period
    period_start: date = Field(description="The period's first UTC day.")
    threshold: int = Field(description="Percent of the limit: 80 or 100.")
    limit: Decimal = Field(description="The limit when the threshold was reached (USD).")
    spent: Decimal = Field(description="What was spent in the period then (USD).")
    reached_at: datetime

    @property
    def id(self) -> str:
        """Name this alert uniquely: the same in every process that sees it."""
        return f"{self.scope}:{self.period}:{self.period_start.isoformat()}:{self.threshold}"


AlertHook = Callable[[BudgetAlert], None]
"""Called with each alert this process announces; must not block nor raise."""


def reached(spent: Decimal, limit: Decimal) -> list[int]:
    """Return the thresholds ``spent`` has reached of ``limit`` (none of a zero limit)."""
    if limit <= 0:
        return []
    return [t for t in THRESHOLDS if spent * 100 >= limit * t]


class BudgetAlerts:
    """Records each threshold once (table ``budget_alerts``) and reads them back."""

    def __init__(self, db: Database, *, hook: AlertHook | None = None) -> None:
        self._db = db
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert
        self.hook = hook
        # The highest threshold known to be recorded, per counter: no need to ask again.
        self._known: dict[Counter, int] = {}

    def watching(self, counter: Counter, limit: Decimal | None) -> bool:
        """Tell whether the spend of ``counter`` may still reach a threshold not yet recorded."""
        return bool(limit) and self._known.get(counter, 0) < THRESHOLDS[-1]

    async def observe(
        self,
        counter: Counter,
        *,
        spent: Decimal,
        limit: Decimal,
        tenant: str | None,
        at: datetime,
    ) -> None:
        """Record each threshold ``spent`` reached of ``limit``; announce those this recorded."""
        for threshold in reached(spent, limit):
            if self._known.get(counter, 0) >= threshold:
                continue
            alert = BudgetAlert(
                scope=counter.scope,
                tenant=tenant or _tenant_of(counter.scope),
                period=counter.period,
                period_start=counter.start,
                threshold=threshold,
                limit=limit,
                spent=spent,
                reached_at=at,
            )
            if await self.claim(alert):
                self.announce(alert)
            if len(self._known) > 10_000:  # counters of past periods: forget them all
                self._known.clear()
            self._known[counter] = max(threshold, self._known.get(counter, 0))

    async def claim(self, alert: BudgetAlert) -> bool:
        """Record ``alert``; True when this call recorded it, False when it was already there."""
        statement = (
            self._insert(_ALERTS)
            .values(
                scope=alert.scope,
                period=alert.period,
                period_start=alert.period_start,
                threshold=alert.threshold,
                tenant=alert.tenant,
                amount=alert.limit,
                spent=alert.spent,
                reached_at=alert.reached_at,
            )
            .on_conflict_do_nothing()
        )
        async with self._db.transaction() as conn:
            inserted = (await conn.execute(statement)).rowcount
        return bool(inserted)

    def announce(self, alert: BudgetAlert) -> None:
        """Log, count and hand on an alert this process recorded; never raises."""
        log = logger.warning if alert.threshold >= 100 else logger.info
        log(
            "budget %s reached %d%% of its %s limit %s: %s spent (period from %s)",
            alert.scope,
            alert.threshold,
            alert.period,
            alert.limit,
            alert.spent,
            alert.period_start,
        )
        record_budget_alert(alert.period, alert.threshold)
        if self.hook is None:
            return
        try:
            self.hook(alert)
        except Exception as exc:  # the row is the durable record; the call goes on
            logger.warning("budget alert %s not handed on: %r", alert.id, exc)

    async def current(self, scope: str, starts: Mapping[Period, date]) -> list[BudgetAlert]:
        """Return the alerts of ``scope`` in the periods beginning on ``starts``, oldest first."""
        if not starts:
            return []
        query = (
            sa.select(_ALERTS)
            .where(
                _ALERTS.c.scope == scope,
                sa.or_(
                    *(
                        sa.and_(_ALERTS.c.period == period, _ALERTS.c.period_start == start)
                        for period, start in starts.items()
                    )
                ),
            )
            .order_by(_ALERTS.c.reached_at, _ALERTS.c.threshold)
        )
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            BudgetAlert(
                scope=r["scope"],
                tenant=r["tenant"],
                period=r["period"],
                period_start=r["period_start"],
                threshold=r["threshold"],
                limit=r["amount"],
                spent=r["spent"],
                reached_at=r["reached_at"],
            )
            for r in rows
        ]


def _tenant_of(scope: str) -> str | None:
    kind, _, name = scope.partition(":")
    return name if kind == "tenant" else None
