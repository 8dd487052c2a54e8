"""Stored budget limits, weekly and monthly periods, and the 80 %/100 % alerts, on a real database.

Two ledgers on two connection pools stand for two processes: each reads the stored limits on
its own, and each settles on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import BudgetExceeded
from spine.platform.metering.budget_alerts import BudgetAlert
from spine.platform.metering.budgets import BudgetLedger, BudgetLimits, budget_scopes
from spine.platform.schema import BudgetAlertRow

pytestmark = pytest.mark.integration

ACME = budget_scopes(tenant="acme", key_id="k1")
SUNDAY = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = SUNDAY) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def eventually_refused(ledger: BudgetLedger, amount: Decimal, period: str) -> BudgetExceeded:
    """Reserve until the ``period`` budget refuses (a limit set elsewhere arrives), up to 10 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            held = await ledger.reserve(ACME, amount)
        except BudgetExceeded as refused:
            if refused.details["period"] == period:
                return refused
        else:
            await ledger.release(held)
        assert loop.time() < deadline, "the stored limit never took effect"
        await asyncio.sleep(0.05)


async def test_a_limit_stored_by_another_process_is_enforced_within_seconds(
    db: Database, database_url: str
) -> None:
    here = BudgetLedger(db, BudgetLimits(tenants={"acme": Decimal(100)}), stored_seconds=0.2)
    other_db = Database(database_url)
    elsewhere = BudgetLedger(other_db, BudgetLimits(), stored_seconds=0)
    try:
        await here.settle(await here.reserve(ACME, Decimal(2)), Decimal(2))
        assert await elsewhere.set_limit("tenant:acme", "weekly", Decimal(1), by=None) is None
        refused = await eventually_refused(here, Decimal(2), "weekly")
        assert (refused.details["scope"], refused.details["period"]) == ("tenant:acme", "weekly")
        # The weekly counter began when the limit did: the 2 spent before are not in it.
        assert refused.details["spent"] == "0" and refused.details["budget"] == "1"

        # A stored daily limit wins over the settings' 100; removed, the default is back.
        await elsewhere.remove_limit("tenant:acme", "weekly")
        await elsewhere.set_limit("tenant:acme", "daily", Decimal(1), by="k9")
        refused = await eventually_refused(here, Decimal("1.5"), "daily")
        assert refused.details["period"] == "daily" and refused.details["budget"] == "1"
        stored = await here.book.of("tenant:acme")
        assert [(s.period, s.amount, s.updated_by) for s in stored] == [("daily", Decimal(1), "k9")]
        assert await elsewhere.remove_limit("tenant:acme", "daily") is not None
        assert await elsewhere.remove_limit("tenant:acme", "daily") is None
        await asyncio.sleep(0.25)  # past `here`'s stored_seconds
        await here.release(await here.reserve(ACME, Decimal(50)))
        assert (await here.current_limits()).source("tenant:acme") == "settings"
    finally:
        await here.close()
        await elsewhere.close()
        await other_db.dispose()


async def test_weekly_and_monthly_budgets_reset_at_their_boundaries(db: Database) -> None:
    clock = FakeClock()
    ledger = BudgetLedger(db, BudgetLimits(), now=clock, stored_seconds=0)
    await ledger.set_limit("key:k1", "weekly", Decimal(3), by=None)
    await ledger.set_limit("tenant:acme", "monthly", Decimal(5), by=None)

    async def spend(amount: str) -> None:
        await ledger.settle(await ledger.reserve(ACME, Decimal(amount)), Decimal(amount))

    await spend("2.5")  # Sunday the 29th: the week since Monday the 23rd
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(ACME, Decimal(1))
    assert refused.value.details["scope"] == "key:k1"
    assert refused.value.details["resets_at"] == "2026-11-30T00:00:00+00:00"

    clock.now = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # Monday: a new week, the same month
    await spend("2")
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(ACME, Decimal(1))
    assert refused.value.details["scope"] == "tenant:acme"  # 4.5 of 5 spent this month
    assert refused.value.details["resets_at"] == "2026-12-01T00:00:00+00:00"

    clock.now = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # December: a new month
    await spend("1")
    states = {s.period: s for s in await ledger.states("tenant:acme")}
    assert (states["monthly"].day, states["monthly"].spent) == (date(2026, 12, 1), Decimal(1))
    assert states["monthly"].remaining == Decimal(4)
    assert states["daily"].limit is None and states["weekly"].limit is None
    weekly = await ledger.state("key:k1", period="weekly")
    assert (weekly.day, weekly.spent, weekly.remaining) == (
        date(2026, 11, 30),
        Decimal(3),
        Decimal(0),
    )
    await ledger.close()


async def test_each_threshold_is_announced_once_with_two_concurrent_spenders(
    pg_url: str,
) -> None:
    heard: list[tuple[str, BudgetAlert]] = []
    pools = [Database(pg_url), Database(pg_url)]
    await pools[0].migrate()

    def hearing(name: str) -> Callable[[BudgetAlert], None]:
        return lambda alert: heard.append((name, alert))

    ledgers = [
        BudgetLedger(pool, BudgetLimits(), stored_seconds=0, on_alert=hearing(name))
        for pool, name in zip(pools, ("one", "two"), strict=True)
    ]
    await ledgers[0].set_limit("tenant:acme", "daily", Decimal(1), by=None)

    async def spender(ledger: BudgetLedger, calls: int) -> int:
        spent = 0
        for _ in range(calls):
            try:
                held = await ledger.reserve(ACME, Decimal("0.05"))
            except BudgetExceeded:
                await ledger.flush()
                continue
            await ledger.settle_later(held, Decimal("0.05"))  # written behind, in batches
            spent += 1
        await ledger.flush()
        return spent

    try:
        made = await asyncio.gather(*(spender(ledger, 14) for ledger in ledgers))
        assert sum(made) == 20  # twenty calls of 0.05 fill the 1.00
        assert sorted((a.threshold, a.scope, a.period) for _, a in heard) == [
            (80, "tenant:acme", "daily"),
            (100, "tenant:acme", "daily"),
        ]
        eighty = next(a for _, a in heard if a.threshold == 80)
        assert eighty.tenant == "acme" and Decimal("0.8") <= eighty.spent <= 1
        # The rows decide: one per threshold, whichever process wrote it.
        async with pools[1].transaction() as conn:
            rows = (await conn.execute(sa.select(BudgetAlertRow.__table__))).all()
        assert sorted(r.threshold for r in rows) == [80, 100]
        shown = await ledgers[1].current_alerts("tenant:acme")
        assert [(a.threshold, a.limit) for a in shown] == [(80, Decimal(1)), (100, Decimal(1))]

        # A threshold is announced once per period, even reached again under a new limit.
        await ledgers[1].set_limit("tenant:acme", "daily", Decimal("1.25"), by=None)
        assert await spender(ledgers[0], 2) == 2  # 1.10 spent: past 80 % of 1.25
        assert len(heard) == 2
    finally:
        for ledger in ledgers:
            await ledger.close()
        for pool in pools:
            await pool.dispose()
