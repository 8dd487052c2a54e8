"""Budget periods, limits' precedence and thresholds: pure functions and a fixed clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from spine.platform.db import Database
from spine.platform.metering.budget_alerts import reached
from spine.platform.metering.budget_limits import BudgetLimits
from spine.platform.metering.budget_periods import next_start, period_start, resets_at
from spine.platform.metering.budgets import BudgetLedger, Counter, budget_scopes


@pytest.mark.parametrize(
    ("day", "weekly", "monthly"),
    [
        (date(2026, 11, 30), date(2026, 11, 30), date(2026, 11, 1)),  # a Monday
        (date(2026, 12, 6), date(2026, 11, 30), date(2026, 12, 1)),  # the Sunday after
        (date(2026, 12, 31), date(2026, 12, 28), date(2026, 12, 1)),
        (date(2027, 1, 1), date(2026, 12, 28), date(2027, 1, 1)),  # a week across the year
        (date(2028, 2, 29), date(2028, 2, 28), date(2028, 2, 1)),  # a leap day
    ],
)
def test_each_period_starts_on_its_first_day(day: date, weekly: date, monthly: date) -> None:
    assert period_start("daily", day) == day
    assert period_start("weekly", day) == weekly
    assert period_start("monthly", day) == monthly


@pytest.mark.parametrize(
    ("period", "start", "following"),
    [
        ("daily", date(2026, 12, 31), date(2027, 1, 1)),
        ("weekly", date(2026, 12, 28), date(2027, 1, 4)),
        ("weekly", date(2026, 12, 31), date(2027, 1, 4)),  # from any day of the week
        ("monthly", date(2026, 12, 1), date(2027, 1, 1)),
        ("monthly", date(2028, 2, 1), date(2028, 3, 1)),
        ("monthly", date(2026, 1, 31), date(2026, 2, 1)),
    ],
)
def test_a_period_resets_at_the_next_ones_utc_midnight(
    period: str, start: date, following: date
) -> None:
    assert next_start(period, start) == following  # type: ignore[arg-type]
    assert resets_at(period, start) == datetime(  # type: ignore[arg-type]
        following.year, following.month, following.day, tzinfo=UTC
    )


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="yearly"):
        period_start("yearly", date(2026, 1, 1))  # type: ignore[arg-type]


def test_stored_limits_win_over_the_settings_which_are_daily_defaults() -> None:
    settings = BudgetLimits(
        daily=Decimal(100), tenants={"acme": Decimal(10)}, keys={"k1": Decimal(1)}
    )
    assert settings.limit("tenant:acme") == Decimal(10)
    assert settings.source("tenant:acme") == "settings"
    assert settings.limit("tenant:acme", "weekly") is None
    assert settings.source("tenant:acme", "monthly") is None

    stored = settings.with_stored(
        {("tenant:acme", "daily"): Decimal(3), ("key:k2", "monthly"): Decimal(50)}
    )
    assert (stored.limit("tenant:acme"), stored.source("tenant:acme")) == (Decimal(3), "stored")
    assert stored.default("tenant:acme") == Decimal(10)  # what removing the stored one restores
    assert (stored.limit("key:k2", "monthly"), stored.limit("key:k2")) == (Decimal(50), None)
    assert (stored.limit("key:k1"), stored.limit("global")) == (Decimal(1), Decimal(100))
    assert stored.with_stored({}).limit("tenant:acme") == Decimal(10)


@pytest.mark.parametrize(
    ("spent", "limit", "thresholds"),
    [
        ("0", "10", []),
        ("7.99999999", "10", []),
        ("8", "10", [80]),
        ("9.99", "10", [80]),
        ("10", "10", [80, 100]),
        ("12", "10", [80, 100]),  # a call may cost more than it reserved
        ("0", "0", []),  # a zero limit refuses calls; nothing is ever spent of it
    ],
)
def test_thresholds_are_reached_by_settled_spend(
    spent: str, limit: str, thresholds: list[int]
) -> None:
    assert reached(Decimal(spent), Decimal(limit)) == thresholds


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_reservation_counts_in_the_periods_its_moment_falls_in(tmp_path: Path) -> None:
    # A free call reads nothing from the database: the counters come from the clock alone.
    clock = FixedClock(datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC))  # a Sunday
    limits = BudgetLimits(tenants={"acme": Decimal(5)}).with_stored(
        {("tenant:acme", "weekly"): Decimal(20), ("key:k1", "monthly"): Decimal(50)}
    )
    ledger = BudgetLedger(Database(f"sqlite:///{tmp_path}/x.db"), limits, now=clock)
    scopes = budget_scopes(tenant="acme", key_id="k1")

    sunday = await ledger.reserve(scopes, Decimal(0))
    assert sunday.tenant == "acme" and sunday.scopes == ("key:k1", "tenant:acme")
    assert sunday.counters == (
        Counter(scope="key:k1", period="monthly", start=date(2026, 11, 1)),
        Counter(scope="tenant:acme", period="daily", start=date(2026, 11, 29)),
        Counter(scope="tenant:acme", period="weekly", start=date(2026, 11, 23)),
    )

    # Two seconds later (02:00:01 in UTC+2) it is Monday the 30th: a new day, a new week.
    clock.now = datetime(2026, 11, 30, 2, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    monday = await ledger.reserve(scopes, Decimal(0))
    assert [c.start for c in monday.counters] == [
        date(2026, 11, 1),
        date(2026, 11, 30),
        date(2026, 11, 30),
    ]
    clock.now = datetime(2026, 12, 1, tzinfo=UTC)
    december = await ledger.reserve(scopes, Decimal(0))
    assert december.counters[0] == Counter(
        scope="key:k1", period="monthly", start=date(2026, 12, 1)
    )
    assert december.counters[2].start == date(2026, 11, 30)  # the week goes on
    await ledger.close()
