"""The lease book: when a lease is taken, what carves from it, and when it is due back."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from spine.platform.metering.budget_leases import (
    LEASE_IDLE_SECONDS,
    MIN_CALLS,
    Lease,
    LeaseBook,
)
from spine.platform.metering.budget_periods import Counter

DAY = date(2026, 12, 5)
GLOBAL = Counter(scope="global", period="daily", start=DAY)
TENANT = Counter(scope="tenant:acme", period="daily", start=DAY)
LIMIT = Decimal(64)  # leases of 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book_with(*counters: Counter, clock: Clock | None = None) -> LeaseBook:
    book = LeaseBook(clock=clock or Clock())
    for counter in counters:
        book.open(Lease(counter=counter, amount=Decimal(1), limit=LIMIT))
    return book


@pytest.mark.parametrize(
    ("limit", "amount", "size"),
    [
        ("64", "0.0625", "1"),  # exactly MIN_CALLS calls: leased
        ("64", "0.0626", None),  # fewer: each call is held on its own
        ("1", "0.0009", "0.015625"),
        ("0.00000099", "0.00000001", None),  # a lease rounds down to the counters' precision
        ("100", "0", None),  # a call of nothing never needs one
    ],
)
def test_a_lease_is_a_64th_of_the_limit_and_only_where_it_serves_enough_calls(
    limit: str, amount: str, size: str | None
) -> None:
    found = LeaseBook.size(Decimal(limit), Decimal(amount))
    assert found == (Decimal(size) if size is not None else None)
    if found is not None:
        assert found >= Decimal(amount) * MIN_CALLS


def test_a_call_carves_from_every_counter_or_from_none() -> None:
    book = book_with(GLOBAL)  # the tenant's counter has no lease
    limits = {GLOBAL: LIMIT, TENANT: LIMIT}
    assert book.carve(limits, Decimal("0.25")) is None
    assert book.lacking(limits, Decimal("0.25")) == [TENANT]
    (lease,) = book.held()
    # Nothing was taken from the one that had room.
    assert (lease.used, lease.in_flight) == (Decimal(0), 0)

    book.open(Lease(counter=TENANT, amount=Decimal(1), limit=LIMIT))
    carved = book.carve(limits, Decimal("0.25"))
    assert carved is not None and [c.counter for c in carved] == [GLOBAL, TENANT]
    assert all((c.used, c.in_flight) == (Decimal("0.25"), 1) for c in carved)


def test_a_lease_carves_until_its_calls_reserved_and_spent_fill_it() -> None:
    book = book_with(GLOBAL)
    limits = {GLOBAL: LIMIT}
    calls = [book.carve(limits, Decimal("0.3")) for _ in range(4)]
    assert [c is not None for c in calls] == [True, True, True, False]
    first = calls[0]
    assert first is not None
    book.finish(first, Decimal("0.3"), Decimal("0.1"))  # it spent less than it reserved
    assert book.carve(limits, Decimal("0.2")) is not None  # 0.1 + 0.3 + 0.3 + 0.2 = 0.9
    assert book.carve(limits, Decimal("0.2")) is None
    (lease,) = book.held()
    assert (lease.used, lease.in_flight) == (Decimal("0.9"), 3)


def test_a_lease_taken_under_another_limit_carves_no_more() -> None:
    book = book_with(GLOBAL)
    assert book.carve({GLOBAL: Decimal(32)}, Decimal("0.1")) is None  # the limit was lowered
    assert book.lacking({GLOBAL: Decimal(32)}, Decimal("0.1")) == [GLOBAL]


def test_a_replaced_lease_is_due_back_once_its_last_call_ends() -> None:
    book = book_with(GLOBAL)
    limits = {GLOBAL: LIMIT}
    carved = book.carve(limits, Decimal("0.9"))
    assert carved is not None
    book.open(Lease(counter=GLOBAL, amount=Decimal(1), limit=LIMIT))  # a top-up replaces it
    assert book.to_give_back() == []  # its call is still in flight
    book.finish(carved, Decimal("0.9"), Decimal("0.5"))
    (due,) = book.to_give_back()
    assert due is carved[0] and due.closed
    assert book.held() != [] and due not in book.held()


def test_an_open_lease_is_due_back_when_idle_or_when_every_unused_one_is_asked_for() -> None:
    clock = Clock()
    book = book_with(GLOBAL, TENANT, clock=clock)
    carved = book.carve({TENANT: LIMIT}, Decimal("0.1"))
    assert carved is not None
    assert book.to_give_back() == []
    clock.now += LEASE_IDLE_SECONDS
    # The idle one goes back; the tenant's has a call in flight and stays open.
    assert [lease.counter for lease in book.to_give_back()] == [GLOBAL]
    assert book.carve({TENANT: LIMIT}, Decimal("0.1")) is not None
    book.finish(carved, Decimal("0.1"), Decimal("0.1"))
    assert book.to_give_back(unused=True) == []  # one call still in flight
    assert len(book.held()) == 1
