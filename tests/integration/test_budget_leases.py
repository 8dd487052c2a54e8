"""Budget leases against the database: calls carved in memory still never overspend, their
spend is counted, and every lease comes back (on SQLite and PostgreSQL alike)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spine.platform.db import Database
from spine.platform.errors import BudgetExceeded
from spine.platform.metering.budget_leases import LEASE_IDLE_SECONDS
from spine.platform.metering.budgets import (
    HOLD_LEASE_SECONDS,
    BudgetLedger,
    BudgetLimits,
    Reservation,
    budget_scopes,
)

pytestmark = pytest.mark.integration

ACME = budget_scopes(tenant="acme", key_id="k1")
ZERO = Decimal(0)
NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = NOON

    def __call__(self) -> datetime:
        return self.now


def ledger_of(db: Database, clock: FakeClock, limit: str, *, leases: bool = True) -> BudgetLedger:
    limits = BudgetLimits(tenants={"acme": Decimal(limit)})
    return BudgetLedger(db, limits, now=clock, leases=leases)


async def counter(db: Database, clock: FakeClock) -> tuple[Decimal, Decimal]:
    """The tenant's daily spent and reserved as every process reads them."""
    reader = ledger_of(db, clock, "1", leases=False)  # holds no lease of its own
    state = await reader.state("tenant:acme")
    return state.spent, state.reserved


async def test_two_processes_carving_at_once_never_reserve_more_than_the_limit(
    db: Database,
) -> None:
    clock = FakeClock()
    first, second = ledger_of(db, clock, "1"), ledger_of(db, clock, "1")
    amount = Decimal("0.0009")  # leases of 0.015625: 17 calls each

    async def call(ledger: BudgetLedger) -> Reservation | None:
        try:
            return await ledger.reserve(ACME, amount)
        except BudgetExceeded:
            return None

    held = await asyncio.gather(*(call(first if i % 2 else second) for i in range(1600)))
    admitted = [r for r in held if r is not None]
    assert len(admitted) * amount <= 1
    assert len(admitted) * amount >= Decimal("0.95")  # leases leave little unused
    assert sum(1 for r in admitted if r.leases) > len(admitted) / 2  # most were carved
    spent, reserved = await counter(db, clock)
    assert spent == 0 and reserved <= 1

    await asyncio.gather(
        *(
            (first if r in held[1::2] else second).settle_later(r, amount - Decimal("0.0001"))
            for r in admitted
        )
    )
    await first.close()
    await second.close()
    assert await counter(db, clock) == (len(admitted) * Decimal("0.0008"), ZERO)


async def test_a_carved_call_is_counted_when_settled_and_its_lease_comes_back(
    db: Database,
) -> None:
    clock = FakeClock()
    ledger = ledger_of(db, clock, "100")
    call = await ledger.reserve(ACME, Decimal("0.01"))
    assert [lease.amount for lease in call.leases] == [Decimal("1.5625")]
    # Every process sees the lease held, not the call.
    assert await counter(db, clock) == (ZERO, Decimal("1.5625"))
    # The process reading its own budgets gives back its unused leases first, not this one.
    assert (await ledger.state("tenant:acme")).reserved == Decimal("1.5625")

    await ledger.settle_later(call, Decimal("0.004"))
    state = await ledger.state("tenant:acme")
    assert (state.spent, state.reserved) == (Decimal("0.004"), ZERO)
    assert await counter(db, clock) == (Decimal("0.004"), ZERO)


async def test_a_released_call_spends_nothing_and_an_idle_lease_goes_back_with_the_beat(
    db: Database,
) -> None:
    clock = FakeClock()
    ledger = ledger_of(db, clock, "100")
    call = await ledger.reserve(ACME, Decimal("0.01"))
    await ledger.release(call)
    await ledger.keep_holds()  # not idle long enough yet
    await ledger.flush()
    assert await counter(db, clock) == (ZERO, Decimal("1.5625"))

    (lease,) = call.leases
    lease.used_at -= LEASE_IDLE_SECONDS
    await ledger.keep_holds()  # what the API and the workers run every 10 s
    await ledger.flush()
    assert await counter(db, clock) == (ZERO, ZERO)


async def test_a_refusal_first_gives_back_this_process_s_unused_lease(db: Database) -> None:
    clock = FakeClock()
    ledger = ledger_of(db, clock, "1.6")  # leases of 0.025
    small = await ledger.reserve(ACME, Decimal("0.001"))
    assert small.leases
    await ledger.settle_later(small, Decimal("0.001"))
    # 1.6 - 0.025 leased leaves less than 1.59; without the lease 1.599 is left.
    large = await ledger.reserve(ACME, Decimal("1.59"))
    assert not large.leases
    await ledger.settle_later(large, Decimal("1.5"))
    await ledger.flush()
    assert await counter(db, clock) == (Decimal("1.501"), ZERO)


async def test_a_killed_process_s_lease_is_given_back_by_the_others(db: Database) -> None:
    clock = FakeClock()
    dead = ledger_of(db, clock, "1.6")
    assert (await dead.reserve(ACME, Decimal("0.001"))).leases  # and it is killed
    alive = ledger_of(db, clock, "1.6", leases=False)
    await alive.keep_holds()
    with pytest.raises(BudgetExceeded):
        await alive.reserve(ACME, Decimal("1.58"))  # the dead lease still holds 0.025

    clock.now += timedelta(seconds=HOLD_LEASE_SECONDS + 1)
    await alive.keep_holds()
    assert await counter(db, clock) == (ZERO, ZERO)
    await alive.reserve(ACME, Decimal("1.58"))


async def test_a_lowered_limit_retires_the_lease_taken_under_the_old_one(db: Database) -> None:
    clock = FakeClock()
    ledger = ledger_of(db, clock, "100")
    before = await ledger.reserve(ACME, Decimal("0.01"))
    await ledger.set_limit("tenant:acme", "daily", Decimal("64"), by=None)
    after = await ledger.reserve(ACME, Decimal("0.01"))
    assert [lease.amount for lease in after.leases] == [Decimal(1)]
    assert await counter(db, clock) == (ZERO, Decimal("2.5625"))  # the old one has a call
    await ledger.settle_later(before, Decimal("0.01"))  # its last call: it goes back
    await ledger.flush()
    assert await counter(db, clock) == (Decimal("0.01"), Decimal(1))


async def test_without_leases_every_call_is_held_on_its_own(db: Database) -> None:
    clock = FakeClock()
    ledger = ledger_of(db, clock, "100", leases=False)
    call = await ledger.reserve(ACME, Decimal("0.01"))
    assert not call.leases
    assert await counter(db, clock) == (ZERO, Decimal("0.01"))
