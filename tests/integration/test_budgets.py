"""Budgets on their own: reservations, settlement and the race, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import BudgetExceeded, ConfigurationError
from spine.platform.metering.budget_periods import Counter
from spine.platform.metering.budget_statements import READ_SQL, SETTLE_SQL, hold_driver
from spine.platform.metering.budgets import (
    DEFAULT_ANSWER_TOKENS,
    HOLD_LEASE_SECONDS,
    BudgetLedger,
    BudgetLimits,
    Reservation,
    budget_scopes,
    estimate_cost,
)
from spine.platform.metering.usage import ModelCallRecord, UsageLedger
from spine.platform.router import ModelSpec, Requirements
from spine.platform.schema import BudgetSpendRow
from spine.platform.settings import load_settings

pytestmark = pytest.mark.integration

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ACME = budget_scopes(tenant="acme", key_id="k1")
ZERO = Decimal(0)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOON) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ledger_of(db: Database, clock: FakeClock, **limits: object) -> BudgetLedger:
    return BudgetLedger(db, BudgetLimits(**limits), now=clock)  # type: ignore[arg-type]


async def rows(db: Database) -> dict[tuple[str, date], tuple[Decimal, Decimal]]:
    async with db.session() as session:
        found = (await session.execute(sa.select(BudgetSpendRow))).scalars().all()
    return {(r.scope, r.day): (r.spent, r.reserved) for r in found}


# -- the race ---------------------------------------------------------------------------------


async def test_fifty_concurrent_reservations_admit_exactly_ten(
    db: Database, clock: FakeClock
) -> None:
    ledger = ledger_of(db, clock, daily=Decimal(1))
    outcomes = await asyncio.gather(
        *(ledger.reserve(ACME, Decimal("0.1")) for _ in range(50)), return_exceptions=True
    )
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert (len(admitted), len(refused)) == (10, 40), outcomes
    state = await ledger.state("global")
    assert (state.spent, state.reserved, state.remaining) == (ZERO, Decimal(1), ZERO)

    # Settled or released, the budget still admits nothing beyond its limit.
    await asyncio.gather(*(ledger.settle(r, Decimal("0.1")) for r in admitted[:5]))
    await asyncio.gather(*(ledger.release(r) for r in admitted[5:]))
    state = await ledger.state("global")
    assert (state.spent, state.reserved) == (Decimal("0.5"), ZERO)
    again = await asyncio.gather(
        *(ledger.reserve(ACME, Decimal("0.1")) for _ in range(50)), return_exceptions=True
    )
    assert sum(isinstance(o, Reservation) for o in again) == 5
    assert sum(isinstance(o, BudgetExceeded) for o in again) == 45


async def test_the_first_calls_of_a_day_racing_are_all_admitted_when_there_is_room(
    db: Database, clock: FakeClock
) -> None:
    # They race to create the day's rows; none may be refused for having lost that race.
    ledger = ledger_of(db, clock, daily=Decimal(5), tenants={"acme": Decimal(5)})
    outcomes = await asyncio.gather(
        *(ledger.reserve(ACME, Decimal("0.1")) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(o, Reservation) for o in outcomes), outcomes
    assert (await ledger.state("global")).reserved == Decimal(5)
    assert (await ledger.state("tenant:acme")).reserved == Decimal(5)


async def test_the_race_across_three_scopes_admits_what_the_tightest_allows(
    db: Database, clock: FakeClock
) -> None:
    # Every reservation locks three rows; sorted locking means no deadlock on PostgreSQL.
    ledger = ledger_of(
        db,
        clock,
        daily=Decimal(100),
        tenants={"acme": Decimal(50)},
        keys={"k1": Decimal("2.5"), "k2": Decimal(100)},
    )
    k1 = budget_scopes(tenant="acme", key_id="k1")
    k2 = budget_scopes(tenant="acme", key_id="k2")
    outcomes = await asyncio.gather(
        *(ledger.reserve(k1 if i % 2 else k2, Decimal("0.25")) for i in range(100)),
        return_exceptions=True,
    )
    assert all(isinstance(o, Reservation | BudgetExceeded) for o in outcomes), outcomes
    by_k1 = [o for i, o in enumerate(outcomes) if i % 2]
    by_k2 = [o for i, o in enumerate(outcomes) if not i % 2]
    assert sum(isinstance(o, Reservation) for o in by_k1) == 10
    assert all(isinstance(o, Reservation) for o in by_k2)
    assert {o.details["scope"] for o in by_k1 if isinstance(o, BudgetExceeded)} == {"key:k1"}
    assert (await ledger.state("tenant:acme")).reserved == Decimal("15")
    assert (await ledger.state("global")).reserved == Decimal("15")


# -- settle and release -----------------------------------------------------------------------


async def test_settle_counts_the_actual_cost(db: Database, clock: FakeClock) -> None:
    ledger = ledger_of(db, clock, daily=Decimal(10), tenants={"acme": Decimal(1)})
    cheaper = await ledger.reserve(ACME, Decimal("0.6"))
    assert cheaper.scopes == ("global", "tenant:acme")  # k1 has no limit: not counted
    assert cheaper.day == date(2026, 11, 25)
    await ledger.settle(cheaper, Decimal("0.25"))
    tenant = await ledger.state("tenant:acme")
    assert (tenant.spent, tenant.reserved, tenant.remaining) == (
        Decimal("0.25"),
        ZERO,
        Decimal("0.75"),
    )

    # A call may cost more than was reserved; the spend counts in full, past the limit.
    dearer = await ledger.reserve(ACME, Decimal("0.7"))
    await ledger.settle(dearer, Decimal("0.9"))
    tenant = await ledger.state("tenant:acme")
    assert (tenant.spent, tenant.reserved, tenant.remaining) == (Decimal("1.15"), ZERO, ZERO)
    assert (await ledger.state("global")).spent == Decimal("1.15")
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(ACME, Decimal("0.00000001"))
    assert await rows(db) == {
        ("global", date(2026, 11, 25)): (Decimal("1.15"), ZERO),
        ("tenant:acme", date(2026, 11, 25)): (Decimal("1.15"), ZERO),
    }


async def test_release_gives_the_reservation_back(db: Database, clock: FakeClock) -> None:
    ledger = ledger_of(db, clock, keys={"k1": Decimal(1)})
    held = await ledger.reserve(ACME, Decimal(1))
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(ACME, Decimal("0.01"))
    await ledger.release(held)
    state = await ledger.state("key:k1")
    assert (state.spent, state.reserved) == (ZERO, ZERO)
    again = await ledger.reserve(ACME, Decimal(1))
    assert again.scopes == ("key:k1",)
    # Released twice (a bug in a caller): nothing is given back twice, so the reservation
    # made since stays held.
    await ledger.release(held)
    await ledger.release(held)
    assert (await ledger.state("key:k1")).reserved == 1
    await ledger.release(again)
    assert (await ledger.state("key:k1")).reserved == 0


# -- reservations of processes that died --------------------------------------------------------

TWO_COUNTERS = {"daily": Decimal(1), "tenants": {"acme": Decimal(1)}}
LEASE = timedelta(seconds=HOLD_LEASE_SECONDS + 1)


async def test_the_reservations_of_a_process_that_died_are_given_back(
    db: Database, clock: FakeClock
) -> None:
    dead = ledger_of(db, clock, **TWO_COUNTERS)
    await dead.reserve(ACME, Decimal("0.8"))  # and its process is killed: never settled
    alive = ledger_of(db, clock, **TWO_COUNTERS)
    await alive.keep_holds()  # within the lease: a frozen process may still wake
    with pytest.raises(BudgetExceeded):
        await alive.reserve(ACME, Decimal("0.5"))

    clock.now += LEASE
    await alive.keep_holds()  # what the API and the workers run every 10 s
    for scope in ("global", "tenant:acme"):
        state = await alive.state(scope)
        assert (state.spent, state.reserved) == (ZERO, ZERO), scope
    await alive.reserve(ACME, Decimal("0.5"))


async def test_a_refusal_first_gives_back_what_dead_processes_held(
    db: Database, clock: FakeClock
) -> None:
    dead = ledger_of(db, clock, **TWO_COUNTERS)
    await dead.reserve(ACME, Decimal("0.8"))
    clock.now += LEASE
    # A process with no background beat of its own (a script, one call) is not refused.
    held = await ledger_of(db, clock, **TWO_COUNTERS).reserve(ACME, Decimal("0.5"))
    assert (await dead.state("global")).reserved == Decimal("0.5")
    assert held.amount == Decimal("0.5")


async def test_a_process_that_wakes_after_its_holds_were_given_back_settles_only_its_spend(
    db: Database, clock: FakeClock
) -> None:
    frozen = ledger_of(db, clock, **TWO_COUNTERS)
    late = await frozen.reserve(ACME, Decimal("0.8"))
    clock.now += LEASE
    alive = ledger_of(db, clock, **TWO_COUNTERS)
    mine = await alive.reserve(ACME, Decimal("0.5"))
    # It wakes and settles the call it made: the spend counts, the hold is not given back
    # twice (that would give back the other process's reservation).
    await frozen.settle(late, Decimal("0.3"))
    state = await alive.state("tenant:acme")
    assert (state.spent, state.reserved) == (Decimal("0.3"), Decimal("0.5"))
    await alive.settle(mine, Decimal("0.1"))
    state = await alive.state("tenant:acme")
    assert (state.spent, state.reserved) == (Decimal("0.4"), ZERO)


async def test_a_process_that_stops_leaves_what_it_still_holds_to_be_given_back_at_once(
    db: Database, clock: FakeClock
) -> None:
    stopping = ledger_of(db, clock, daily=Decimal(1))
    await stopping.reserve(ACME, Decimal("0.8"))  # a stream still open when it stops
    await stopping.close()
    alive = ledger_of(db, clock, daily=Decimal(1))
    await alive.keep_holds()  # no lease to wait for
    assert (await alive.state("global")).reserved == ZERO


# -- days -------------------------------------------------------------------------------------


async def test_a_new_utc_day_starts_a_new_budget(db: Database, clock: FakeClock) -> None:
    ledger = ledger_of(db, clock, daily=Decimal(1))
    clock.now = datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC)
    late = await ledger.reserve(ACME, Decimal(1))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(ACME, Decimal("0.5"))
    assert refused.value.details["resets_at"] == "2026-11-26T00:00:00+00:00"

    # 01:00 at UTC+2 is still 23:00 UTC the same day.
    clock.now = datetime(2026, 11, 26, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert ledger.today() == date(2026, 11, 25)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(ACME, Decimal("0.5"))

    clock.now = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    fresh = await ledger.reserve(ACME, Decimal("0.5"))
    assert fresh.day == date(2026, 11, 26)
    # The call reserved yesterday settles against yesterday.
    await ledger.settle(late, Decimal("0.75"))
    assert await rows(db) == {
        ("global", date(2026, 11, 25)): (Decimal("0.75"), ZERO),
        ("global", date(2026, 11, 26)): (ZERO, Decimal("0.5")),
    }
    yesterday = await ledger.state("global", day=date(2026, 11, 25))
    assert yesterday.resets_at == datetime(2026, 11, 26, tzinfo=UTC)


async def test_a_naive_clock_is_refused(db: Database) -> None:
    ledger = BudgetLedger(db, BudgetLimits(daily=Decimal(1)), now=datetime.now)
    with pytest.raises(ValueError, match="timezone-aware"):
        await ledger.reserve(["global"], Decimal(1))


# -- scopes -----------------------------------------------------------------------------------


async def test_a_refusal_in_one_scope_reserves_nothing_anywhere(
    db: Database, clock: FakeClock
) -> None:
    ledger = ledger_of(
        db, clock, daily=Decimal(1), tenants={"acme": Decimal(5)}, keys={"k1": Decimal(5)}
    )
    other = await ledger.reserve(budget_scopes(tenant="globex"), Decimal("0.8"))
    assert other.scopes == ("global",)
    before = await rows(db)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(ACME, Decimal("0.5"))
    assert refused.value.details["scope"] == "global"
    # The tenant and key rows, written before the global refusal, were rolled back with it.
    assert await rows(db) == before
    for scope in ("tenant:acme", "key:k1"):
        assert (await ledger.state(scope)).reserved == 0
    await ledger.release(other)
    assert (await ledger.reserve(ACME, Decimal("0.5"))).scopes == (
        "global",
        "key:k1",
        "tenant:acme",
    )


async def test_free_calls_and_unlimited_scopes_never_block(db: Database, clock: FakeClock) -> None:
    ledger = ledger_of(db, clock, daily=Decimal("0.1"))
    await ledger.reserve(ACME, Decimal("0.1"))
    free = await ledger.reserve(ACME, Decimal(0))
    assert free.amount == 0
    await ledger.settle(free, Decimal(0))
    await ledger.release(free)
    assert (await ledger.state("global")).reserved == Decimal("0.1")

    unlimited = ledger_of(db, clock)
    huge = await unlimited.reserve(ACME, Decimal(10**9))
    assert huge.scopes == ()
    await unlimited.settle(huge, Decimal(10**9))
    assert (await unlimited.state("global")).limit is None
    assert (await unlimited.state("global")).remaining is None
    assert (await ledger.state("global")).spent == 0

    # A call reserved at zero (price unknown) that turns out to cost something still counts.
    unknown = await ledger.reserve(budget_scopes(tenant="initech"), Decimal(0))
    await ledger.settle(unknown, Decimal("0.05"))
    assert (await ledger.state("global")).spent == Decimal("0.05")


async def test_budget_exceeded_names_the_budget_the_spend_and_the_reset(
    db: Database, clock: FakeClock
) -> None:
    ledger = ledger_of(db, clock, tenants={"acme": Decimal("2.50")})
    spent = await ledger.reserve(ACME, Decimal("1.5"))
    await ledger.settle(spent, Decimal("1.5"))
    await ledger.reserve(ACME, Decimal("0.75"))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(ACME, Decimal("0.5"))
    error = refused.value
    assert error.status_code == 429
    assert error.retryable is False
    assert error.details == {
        "scope": "tenant:acme",
        "period": "daily",
        "budget": "2.5",
        "spent": "1.5",
        "reserved": "0.75",
        "requested": "0.5",
        "resets_at": "2026-11-26T00:00:00+00:00",
    }
    body = error.to_dict()
    assert body["type"] == "budget_exceeded"
    assert "tenant:acme" in body["message"] and "2026-11-26T00:00:00+00:00" in body["message"]
    assert json.loads(json.dumps(body)) == body  # the HTTP layer can render it as is


async def test_a_call_dearer_than_what_is_left_is_told_so_in_plain_numbers(
    db: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = ledger_of(db, clock, keys={"k1": Decimal(1)})
    await ledger.reserve(ACME, Decimal("0.25"))  # the counter's row exists: its zeros are read
    with (
        caplog.at_level("INFO", logger="spine.platform.metering.budgets"),
        pytest.raises(BudgetExceeded) as refused,
    ):
        await ledger.reserve(ACME, Decimal("1.2"))
    message = refused.value.message
    assert message.startswith(
        "this call may cost up to 1.2, more than the 0.75 left of the daily budget of key:k1: "
        "0 spent and 0.25 reserved of 1;"
    ), message
    assert "exhausted" not in message
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert logged == ["budget key:k1 (daily) refused 1.2: limit 1, spent 0, reserved 0.25"]

    spent = await ledger.reserve(ACME, Decimal("0.75"))  # all that is left
    await ledger.settle(spent, Decimal("0.75"))
    with pytest.raises(BudgetExceeded) as exhausted:
        await ledger.reserve(ACME, Decimal("0.01"))
    assert exhausted.value.message.startswith("the daily budget of key:k1 is exhausted:")


async def test_a_limit_set_later_counts_the_periods_spend_from_the_usage_ledger(
    db: Database, clock: FakeClock
) -> None:
    usage = UsageLedger(db)
    for tenant, cost, when in (
        ("acme", "0.113", NOON),
        ("acme", "0.113", NOON - timedelta(hours=1)),
        ("acme", "0.113", NOON - timedelta(days=1)),  # yesterday: the same week and month
        ("globex", "5", NOON),
    ):
        record = ModelCallRecord(tenant=tenant, key_id="k1", model="m", provider="openai")
        record.cost, record.created_at = Decimal(cost), when
        await usage.record(record)
    ledger = ledger_of(db, clock)
    shown = {s.period: s.spent for s in await ledger.states("tenant:acme")}
    assert shown == {
        "daily": Decimal("0.226"),
        "weekly": Decimal("0.339"),
        "monthly": Decimal("0.339"),
    }

    await ledger.set_limit("tenant:acme", "daily", Decimal("0.25"), by=None)
    assert (await ledger.state("tenant:acme")).spent == Decimal("0.226")
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(ACME, Decimal("0.05"))
    await ledger.set_limit("global", "weekly", Decimal("100"), by=None)
    assert (await ledger.state("global", period="weekly")).spent == Decimal("5.339")


# -- limits and estimates ---------------------------------------------------------------------


def test_limits_come_from_the_settings() -> None:
    settings = load_settings(
        _env_file=None,
        budget_daily="20",
        budgets={"tenants": "acme=10, globex=2.5", "keys": "abc123=0.5"},
    )
    limits = BudgetLimits.from_settings(settings)
    assert limits.limit("global") == Decimal(20)
    assert limits.limit("tenant:acme") == Decimal(10)
    assert limits.limit("tenant:globex") == Decimal("2.5")
    assert limits.limit("tenant:initech") is None
    assert limits.limit("key:abc123") == Decimal("0.5")
    assert limits.limit("key:other") is None
    assert limits.limit("elsewhere:x") is None
    assert BudgetLimits.from_settings(load_settings(_env_file=None)).limit("global") is None
    assert budget_scopes() == ["global"]
    assert budget_scopes(tenant="t", key_id="k") == ["global", "tenant:t", "key:k"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("acme", "expected name=amount"),
        ("acme=-1", ">= 0"),
        ("acme=lots", "not an amount"),
    ],
)
def test_bad_budget_settings_name_the_variable(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None, budgets={"tenants": value})
    assert refused.value.field == "GENAI_BUDGETS__TENANTS"
    assert problem in refused.value.message


def test_estimate_cost_from_prompt_max_tokens_and_prices() -> None:
    priced = ModelSpec(
        name="gpt",
        provider="openai",
        model="gpt-4o",
        input_price=Decimal("0.000002"),
        output_price=Decimal("0.00001"),
        context_window=8000,
    )
    assert estimate_cost(priced, 1000, 500) == Decimal("0.007")
    # Without max_tokens the answer may fill the rest of the window.
    assert estimate_cost(priced, 1000, None) == Decimal("0.002") + 7000 * Decimal("0.00001")
    unbounded = priced.model_copy(update={"context_window": None})
    assert estimate_cost(unbounded, 0, None) == DEFAULT_ANSWER_TOKENS * Decimal("0.00001")
    assert estimate_cost(ModelSpec.for_provider("ollama", "llama3.2"), 1000, None) == 0
    unknown = ModelSpec(name="x", provider="openai", model="x")
    assert estimate_cost(unknown, 1000, 100) is None
    needs = Requirements.of([{"role": "user", "content": "x" * 400}], {"max_tokens": 50})
    assert estimate_cost(priced, needs.prompt_ceiling, needs.max_tokens) == (
        needs.prompt_ceiling * Decimal("0.000002") + 50 * Decimal("0.00001")
    )
    # The answer's room in the window is what the prompt's estimate leaves.
    assert estimate_cost(priced, 2000, None, window_prompt_tokens=1000) == (
        Decimal("0.004") + 7000 * Decimal("0.00001")
    )


# -- settling written behind ------------------------------------------------------------------


async def test_a_settlement_written_behind_is_read_back_by_state(
    db: Database, clock: FakeClock
) -> None:
    ledger = ledger_of(db, clock, daily=Decimal(10), tenants={"acme": Decimal(1)})
    first = await ledger.reserve(ACME, Decimal("0.4"))
    second = await ledger.reserve(ACME, Decimal("0.4"))
    await ledger.settle_later(first, Decimal("0.1"))
    await ledger.settle_later(second, Decimal("0.2"))
    assert (await rows(db))[("tenant:acme", date(2026, 11, 25))] == (ZERO, Decimal("0.8"))
    tenant = await ledger.state("tenant:acme")  # applies the pending settlements first
    assert (tenant.spent, tenant.reserved) == (Decimal("0.3"), ZERO)
    assert (await ledger.state("global")).spent == Decimal("0.3")
    await ledger.close()


async def test_a_refusal_waits_for_the_pending_settlements(db: Database, clock: FakeClock) -> None:
    # The held 0.9 would refuse 0.5; settled (to 0.1) it leaves room, and the call is admitted.
    ledger = ledger_of(db, clock, tenants={"acme": Decimal(1)})
    held = await ledger.reserve(ACME, Decimal("0.9"))
    await ledger.settle_later(held, Decimal("0.1"))
    admitted = await ledger.reserve(ACME, Decimal("0.5"))
    assert admitted.amount == Decimal("0.5")
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(ACME, Decimal("0.5"))
    state = await ledger.state("tenant:acme")
    assert (state.spent, state.reserved) == (Decimal("0.1"), Decimal("0.5"))
    await ledger.close()


async def test_a_reservation_does_not_wait_for_the_wal_flush_but_a_settlement_does(
    db: Database,
) -> None:
    if db.is_sqlite:
        pytest.skip("synchronous_commit is PostgreSQL's")
    counter = Counter(scope="tenant:acme", period="daily", start=date(2026, 12, 5))
    async with db.driver() as raw:
        async with raw.transaction():
            held = await hold_driver(
                raw, counter, Decimal("0.1"), Decimal(1), hold_id="h1", holder="p1"
            )
            assert held
            assert await raw.fetchval("SHOW synchronous_commit") == "off"
        # Only that transaction's: the connection's next ones wait for the flush again.
        assert await raw.fetchval("SHOW synchronous_commit") == "on"
        key = (counter.scope, counter.period, counter.start)
        async with raw.transaction():
            await raw.execute(SETTLE_SQL, *key, ["h1"], Decimal("0.05"))
            assert await raw.fetchval("SHOW synchronous_commit") == "on"
        row = await raw.fetchrow(READ_SQL, *key)
    assert (row["spent"], row["reserved"]) == (Decimal("0.05"), Decimal(0))


async def test_a_lease_waits_for_the_wal_flush(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("synchronous_commit is PostgreSQL's")
    counter = Counter(scope="tenant:acme", period="daily", start=date(2026, 12, 5))
    async with db.driver() as raw, raw.transaction():
        held = await hold_driver(
            raw, counter, Decimal("0.1"), Decimal(1), hold_id="l1", holder="p1", durable=True
        )
        assert held
        assert await raw.fetchval("SHOW synchronous_commit") == "on"
