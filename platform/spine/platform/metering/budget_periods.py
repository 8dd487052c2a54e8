"""Budget periods: a UTC day, an ISO week (from Monday) or a calendar month.

A budget counts spend per period; a period is named by its first UTC day (its ``start``) and
ends at the next period's start, at UTC midnight. Pure functions of a day: no clock here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args

__all__ = ["PERIODS", "Counter", "Period", "next_start", "period_start", "resets_at", "utc_day"]

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = get_args(Period)


@dataclass(slots=True, kw_only=True, frozen=True, order=True)
class Counter:
    """The spend of one budget in one period: a row of ``budget_spend``."""

    scope: str
    period: Period
    start: date


def utc_day(moment: datetime) -> date:
    """Return the UTC day of a timezone-aware moment.

    Raises:
        ValueError: ``moment`` is naive (the budget clock must say where it is).
    """
    if moment.tzinfo is None:
        raise ValueError("the budget clock must give timezone-aware datetimes")
    return moment.astimezone(UTC).date()


def period_start(period: Period, day: date) -> date:
    """Return the first day of the ``period`` that ``day`` falls in."""
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())  # ISO weeks begin on Monday
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown budget period {period!r}")


def next_start(period: Period, start: date) -> date:
    """Return the first day of the period after the one beginning on ``start``."""
    start = period_start(period, start)
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    if start.month == 12:
        return date(start.year + 1, 1, 1)
    return date(start.year, start.month + 1, 1)


def resets_at(period: Period, start: date) -> datetime:
    """Return the moment the period beginning on ``start`` ends: the next start's midnight."""
    return datetime.combine(next_start(period, start), time.min, tzinfo=UTC)
