"""Budget leases: a process holds a slice of a budget ahead of its calls, and most calls
reserve from it in memory, without a round trip to the database.

A reservation held in the database is one statement on every model call's path: ~0.35 ms of
the ~1.5 ms the gateway added to a call, with two processes calling alike (one with a budget,
one without, interleaved). A *lease* is the same kind of hold (:mod:`.budgets`), made by this
process under an id of its own, for :data:`LEASE_SHARE` of the budget's limit; calls then
*carve* their reservations out of it. The rules:

- A lease is taken only where it serves at least :data:`MIN_CALLS` calls of the amount asked,
  and only while the budget has room for a whole lease. Otherwise the call is held on its own,
  as without leases: near the end of a budget, calls are held one by one again.
- A lease carves while what its calls in flight reserve plus what its settled calls spent
  stays within its amount. The database admitted the lease against the limit, so the calls of
  every process together never reserve more than the limit, as before.
- A carved call is settled as any other (written behind): its spend is counted, and nothing is
  given back, since its reservation was never in the database. The lease stays held in full
  until it is given back, so meanwhile the counter counts its calls' spend twice (spent, and
  the lease's reserved): that errs on the side of spending less.
- A lease is given back (its hold deleted, its amount returned to the counter) once no call
  carved from it is in flight and it is closed (full, replaced, or its limit changed) or idle
  for :data:`LEASE_IDLE_SECONDS`; and before a refusal, before this process reads its
  budgets, and when it stops. It goes through the settlements' queue behind its calls'
  settlements, so their spend is counted before the lease's amount is returned.
- The leases of a process that was killed are given back by the others after the hold lease
  (60 s), as any reservation of a dead process (:mod:`.budget_holds`).

What it costs: another process may be refused while this one holds leased amount it does not
use (at most :data:`LEASE_SHARE` of the limit per process and budget period, for at most
:data:`LEASE_IDLE_SECONDS` plus the ~10 s between two runs of the periodic job), and a
budget's ``reserved`` includes the leases of the processes that hold them.
"""

from __future__ import annotations

import time as monotonic_time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from spine.platform.metering.budget_periods import Counter

__all__ = ["LEASE_IDLE_SECONDS", "LEASE_SHARE", "MIN_CALLS", "Lease", "LeaseBook"]

LEASE_SHARE = Decimal(1) / 64  # of the limit, per lease
MIN_CALLS = 16  # a lease must serve at least this many calls of the amount asked
LEASE_IDLE_SECONDS = 5.0  # unused this long (and nothing in flight), a lease is given back
_CENTS_OF_CENTS = Decimal("1e-8")  # the counters' precision (``Money``)
_ZERO = Decimal(0)


@dataclass(slots=True, eq=False, kw_only=True)
class Lease:
    """Part of one counter held by this process for its calls to carve from."""

    counter: Counter
    amount: Decimal  # what the lease's hold holds in the counter
    limit: Decimal  # the limit it was taken under
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    used: Decimal = _ZERO  # reserved by its calls in flight, plus what its settled calls spent
    in_flight: int = 0
    used_at: float = 0.0  # when a call last carved from it (the book's clock)
    closed: bool = False  # it carves no more; it is given back once nothing is in flight

    def fits(self, amount: Decimal, limit: Decimal) -> bool:
        """Tell whether a call of ``amount`` may carve from this lease under ``limit``."""
        return not self.closed and self.limit == limit and self.used + amount <= self.amount


class LeaseBook:
    """This process's leases: the open one per counter, and those closed but still in use.

    Args:
        clock: Seconds, monotonic (tests move it).
    """

    def __init__(self, *, clock: Callable[[], float] = monotonic_time.monotonic) -> None:
        self._clock = clock
        self._open: dict[Counter, Lease] = {}
        self._closed: list[Lease] = []

    @staticmethod
    def size(limit: Decimal, amount: Decimal) -> Decimal | None:
        """The lease to take in a counter of ``limit`` for calls of ``amount``; None when a
        lease would serve fewer than :data:`MIN_CALLS` of them (the call is held on its own)."""
        size = (limit * LEASE_SHARE).quantize(_CENTS_OF_CENTS, rounding=ROUND_DOWN)
        return size if amount > 0 and size >= amount * MIN_CALLS else None

    def carve(self, limits: dict[Counter, Decimal], amount: Decimal) -> tuple[Lease, ...] | None:
        """Reserve ``amount`` in the open lease of every counter of ``limits`` (each with its
        limit), or in none; None when one of them has no open lease with room."""
        leases = []
        for counter, limit in limits.items():
            lease = self._open.get(counter)
            if lease is None or not lease.fits(amount, limit):
                return None
            leases.append(lease)
        now = self._clock()
        for lease in leases:
            lease.used += amount
            lease.in_flight += 1
            lease.used_at = now
        return tuple(leases)

    def lacking(self, limits: dict[Counter, Decimal], amount: Decimal) -> list[Counter]:
        """The counters of ``limits`` whose open lease cannot take a call of ``amount``."""
        return [
            counter
            for counter, limit in limits.items()
            if (lease := self._open.get(counter)) is None or not lease.fits(amount, limit)
        ]

    def open(self, lease: Lease) -> None:
        """Make ``lease`` its counter's open lease; the one it replaces is closed."""
        previous = self._open.get(lease.counter)
        if previous is not None:
            self._close(previous)
        lease.used_at = self._clock()
        self._open[lease.counter] = lease

    def finish(self, leases: tuple[Lease, ...], carved: Decimal, spent: Decimal) -> None:
        """A call that carved ``carved`` from ``leases`` ended, having spent ``spent``."""
        for lease in leases:
            lease.used += spent - carved
            lease.in_flight -= 1

    def to_give_back(self, *, unused: bool = False) -> list[Lease]:
        """Take out the leases to give back now: those with no call in flight that are closed,
        idle for :data:`LEASE_IDLE_SECONDS`, or, with ``unused``, every one."""
        now = self._clock()
        for lease in list(self._open.values()):
            if lease.in_flight == 0 and (unused or now - lease.used_at >= LEASE_IDLE_SECONDS):
                self._close(lease)
        done = [lease for lease in self._closed if lease.in_flight == 0]
        self._closed = [lease for lease in self._closed if lease.in_flight > 0]
        return done

    def held(self) -> list[Lease]:
        """Every lease not given back yet (open or closed)."""
        return [*self._open.values(), *self._closed]

    def _close(self, lease: Lease) -> None:
        lease.closed = True
        if self._open.get(lease.counter) is lease:
            del self._open[lease.counter]
        self._closed.append(lease)
