"""Budgets: spend is reserved before a model call and settled after it.

Each budget has a scope, ``global``, ``tenant:<name>`` or ``key:<id>``, and a period,
``daily``, ``weekly`` (ISO weeks, from Monday) or ``monthly``; periods are UTC
(:mod:`.budget_periods`). Limits come from the database or the settings
(:mod:`.budget_limits` says which wins). One row per scope, period and period start (its first
day) counts what was ``spent`` and what calls in flight hold ``reserved``: a *counter*.

A reservation is one conditional ``UPDATE ... SET reserved = reserved + :amount WHERE spent +
reserved + :amount <= :limit`` per limited counter, all in one transaction: the database
decides, so concurrent calls can never overspend, and a refusal in any counter rolls back the
others. Counters are always updated in the same (sorted) order, so two reservations cannot
deadlock. A budget without a limit is not counted (a call that costs nothing never touches the
ledger either): when a limit is set for a budget that had none, its counter is seeded with what
the scope spent so far in the period by the usage ledger (``model_calls``, where every call's
cost is recorded), so the limit holds against the period's real spend; reads of a budget
without a limit take its spend from there too (:meth:`BudgetLedger.states`). On PostgreSQL the
reservation runs through asyncpg's prepared statements
(:meth:`~spine.platform.db.Database.driver`), and the usual call, with one limited counter, is
a single statement that commits on its own. The statements of both databases are in
:mod:`.budget_statements`.

Settling can be written behind (:meth:`BudgetLedger.settle_later`): settlements are queued and
a background writer applies every ~20 ms what gathered, summed per counter, in one transaction.
Until then the reservation stays held, which errs on the side of spending less; a reservation
refused while settlements are pending is tried again once they are written, so a refusal never
rests on a settlement not applied yet. :meth:`~BudgetLedger.state` reads them back first.

Each reservation also writes, in the same statement or transaction, one *hold* per counter
(``budget_holds``: the reservation's id, the amount, the process holding it); its settlement or
release deletes them and gives back what they held. Every process that reserves beats in
``budget_holders`` (:meth:`BudgetLedger.keep_holds`, every ~10 s); the holds of a process
silent for ``hold_lease`` (60 s: it was killed, or is frozen) are given back by the others, and
before a refusal, so a crash never keeps a budget reserved until its period ends
(:mod:`.budget_holds`). Giving a hold back deletes it first, so nothing is given back twice.
A call whose process died may still have been charged by its provider: that spend is not
counted (its usage row, written behind, died with it too).

Where a budget's limit is large beside its calls, this process holds a slice of it ahead of
them, a *lease*, and calls reserve from it in memory: no round trip on the call's path
(:mod:`.budget_leases` has the rules and what they cost).

Stored limits are read from the database at most every ``stored_seconds`` (2 s by default) by
each ledger, and at once after this ledger changed one (:meth:`BudgetLedger.set_limit`). After
each settlement, the counters it moved are read back and each threshold newly reached (80 %,
100 %) is recorded and announced once across processes (:mod:`.budget_alerts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time as monotonic_time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.errors import BudgetExceeded
from spine.platform.metering.budget_alerts import AlertHook, BudgetAlert, BudgetAlerts
from spine.platform.metering.budget_holds import (
    HOLD_BEAT_SECONDS,
    HOLD_LEASE_SECONDS,
    BudgetHolds,
)
from spine.platform.metering.budget_leases import Lease, LeaseBook
from spine.platform.metering.budget_limits import (
    GLOBAL,
    BudgetBook,
    BudgetLimits,
    StoredBudget,
)
from spine.platform.metering.budget_periods import (
    PERIODS,
    Counter,
    Period,
    next_start,
    period_start,
    resets_at,
    utc_day,
)
from spine.platform.metering.budget_statements import (
    READ_SQL,
    SETTLE_SQL,
    SPEND,
    ensure_rows,
    free,
    hold,
    hold_driver,
    move,
    read_counter,
    refusal,
    seed,
    spent_driver,
    usage_spend,
)
from spine.platform.router import ModelSpec, Requirements
from spine.platform.schema import money_text, utcnow
from spine.platform.write_behind import WriteBehind

__all__ = [
    "DEFAULT_ANSWER_TOKENS",
    "GLOBAL",
    "HOLD_BEAT_SECONDS",
    "HOLD_LEASE_SECONDS",
    "BudgetLedger",
    "BudgetLimits",
    "BudgetState",
    "Counter",
    "Reservation",
    "budget_scopes",
    "cost_of",
    "estimate_cost",
    "is_free",
]

logger = logging.getLogger(__name__)

# What an answer may cost when the request sets no max_tokens and the model's window is unknown.
DEFAULT_ANSWER_TOKENS = 4096
_ZERO = Decimal(0)


def budget_scopes(*, tenant: str | None = None, key_id: str | None = None) -> list[str]:
    """Name every budget scope a call of this tenant and key falls under."""
    scopes = [GLOBAL]
    if tenant is not None:
        scopes.append(f"tenant:{tenant}")
    if key_id is not None:
        scopes.append(f"key:{key_id}")
    return scopes


def estimate_cost(
    spec: ModelSpec,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    window_prompt_tokens: int | None = None,
) -> Decimal | None:
    """Return the most a call can cost, to reserve before it; None when a price is unknown.

    ``prompt_tokens`` is the most the prompt can take (:attr:`Requirements.prompt_ceiling`).
    Without ``max_tokens`` the answer may fill what the context window leaves after
    ``window_prompt_tokens`` (the prompt's estimate; default ``prompt_tokens``), or
    :data:`DEFAULT_ANSWER_TOKENS` when the window is unknown.
    """
    if max_tokens is None:
        taken = prompt_tokens if window_prompt_tokens is None else window_prompt_tokens
        left = (spec.context_window or 0) - taken
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
class Reservation:
    """Spend held for one call in every limited counter, on the UTC day it was made.

    ``scopes`` names the limited budgets, ``counters`` their periods; ``tenant`` is the
    calling tenant (named in the alerts the settlement may raise); ``id`` names its holds.
    ``leases``: the leases it was carved from, one per counter (then it has no holds).
    """

    scopes: tuple[str, ...]
    amount: Decimal
    day: date
    counters: tuple[Counter, ...] = ()
    tenant: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    leases: tuple[Lease, ...] = field(default=(), compare=False, repr=False)


@dataclass(slots=True, kw_only=True, frozen=True)
class BudgetState:
    """Where one budget stands in its current period (``day``: the period's first day)."""

    scope: str
    day: date
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal
    resets_at: datetime
    period: Period = "daily"

    @property
    def remaining(self) -> Decimal | None:
        """What can still be reserved, None when unlimited."""
        if self.limit is None:
            return None
        return max(self.limit - self.spent - self.reserved, _ZERO)


_Hold = tuple[Counter, Decimal, str]  # a counter, the amount held in it, the hold's id


@dataclass(slots=True, kw_only=True, frozen=True)
class _Settlement:
    reservation: Reservation
    actual: Decimal


class BudgetLedger:
    """Reserves, settles and releases spend against each budget's limits.

    Args:
        db: The database of the counters, the stored limits and the alerts.
        limits: The settings' limits (defaults; stored limits win over them).
        now: The clock that says which periods a call falls in.
        stored_seconds: How long the stored limits read are trusted (0: read on every call).
        on_alert: Handed each budget threshold this ledger announces (see :mod:`.budget_alerts`).
        hold_lease: Seconds after its last beat when a process's holds are given back.
        leases: Reserve from leases where a budget allows (:mod:`.budget_leases`); False holds
            every call on its own.
    """

    def __init__(
        self,
        db: Database,
        limits: BudgetLimits,
        *,
        now: Callable[[], datetime] = utcnow,
        stored_seconds: float = 2.0,
        on_alert: AlertHook | None = None,
        hold_lease: float = HOLD_LEASE_SECONDS,
        leases: bool = True,
    ) -> None:
        self._db = db
        self._defaults = limits.with_stored({})
        self._limits = limits
        self._now = now
        self._stored_seconds = stored_seconds
        self._loaded_at = -math.inf
        self._ever_loaded = False
        self._loading = asyncio.Lock()
        # The limited counters of each set of scopes on a day, under the limits last read.
        self._counted: dict[tuple[tuple[str, ...], date], tuple[Counter, ...]] = {}
        self._counted_under: BudgetLimits | None = None
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert
        # This process as the holder of its reservations (see :mod:`.budget_holds`).
        self.holds = BudgetHolds(db, insert=self._insert, now=now, lease=hold_lease)
        self.book = BudgetBook(db)
        self.alerts = BudgetAlerts(db, hook=on_alert)
        self._settlements: WriteBehind[_Settlement] = WriteBehind(
            self._settle_many, what="budget settlements"
        )
        self.leases = LeaseBook() if leases else None
        self._leasing = asyncio.Lock()  # one top-up at a time: concurrent calls share it

    @property
    def limits(self) -> BudgetLimits:
        """The limits this ledger enforces, as last read (see :meth:`current_limits`)."""
        return self._limits

    async def current_limits(self) -> BudgetLimits:
        """Return the limits, reading the stored ones again when older than ``stored_seconds``.

        When they cannot be read, the limits read last stay in force (tried again after
        ``stored_seconds``); before any read, the error is raised: a call is never admitted
        against limits that were never known.
        """
        if monotonic_time.monotonic() - self._loaded_at < self._stored_seconds:
            return self._limits
        async with self._loading:
            if monotonic_time.monotonic() - self._loaded_at >= self._stored_seconds:
                try:
                    stored = await self.book.all()
                except Exception as exc:
                    if not self._ever_loaded:
                        raise
                    logger.warning("stored budget limits not read, the last ones hold: %r", exc)
                    self._loaded_at = monotonic_time.monotonic()
                    return self._limits
                self._limits = self._defaults.with_stored(stored)
                self._loaded_at = monotonic_time.monotonic()
                self._ever_loaded = True
        return self._limits

    async def set_limit(
        self, scope: str, period: Period, amount: Decimal, *, by: str | None
    ) -> StoredBudget | None:
        """Store a limit (it wins over the settings); return the stored one it replaced.

        A budget that had no limit was not counted: its counter is seeded with the period's
        spend by the usage ledger first (calls of other processes that are still writing their
        usage rows, ~20 ms behind, may be missed). This ledger enforces the limit from its next
        call on; other processes within their ``stored_seconds``.
        """
        previous = await self.book.set(scope, period, amount, by=by)
        if previous is None and self._defaults.limit(scope, period) is None:
            start = period_start(period, self.today())
            counter = Counter(scope=scope, period=period, start=start)
            async with self._db.transaction() as conn:
                spent = await seed(conn, self._insert, counter, next_start(period, start))
            logger.info(
                "budget %s (%s) limited to %s, counted from %s spent since %s",
                scope,
                period,
                money_text(amount),
                money_text(spent),
                start,
            )
        self._loaded_at = -math.inf
        return previous

    def reload_limits(self) -> None:
        """Read the stored limits again on the next call: another store changed them (a key
        rotation gives the new key the old one's)."""
        self._loaded_at = -math.inf

    async def remove_limit(self, scope: str, period: Period) -> StoredBudget | None:
        """Remove a stored limit (the settings' default applies again); return it, or None."""
        previous = await self.book.remove(scope, period)
        self._loaded_at = -math.inf
        return previous

    def today(self) -> date:
        """Return the current UTC day, by this ledger's clock."""
        return utc_day(self._now())

    async def reserve(self, scopes: Iterable[str], amount: Decimal) -> Reservation:
        """Hold ``amount`` in every limited counter of ``scopes``, or in none.

        Raises:
            BudgetExceeded: One budget cannot cover ``amount``; nothing is held anywhere.
        """
        day = self.today()
        named = tuple(scopes)
        tenant = next((s.partition(":")[2] for s in named if s.startswith("tenant:")), None)
        # Free calls never wait on the database, not even to read the stored limits.
        limits = await self.current_limits() if amount > 0 else self._limits
        counters = self._counters(named, day, limits)
        held = amount > 0 and bool(counters)
        carved = await self._carve(counters, amount, limits) if held else None
        reservation = Reservation(
            scopes=tuple(sorted({c.scope for c in counters})),
            amount=max(amount, _ZERO),
            day=day,
            counters=counters,
            tenant=tenant,
            leases=carved or (),
        )
        if not held or carved is not None:
            return reservation
        holds = [(counter, amount, reservation.id) for counter in counters]
        await self.holds.alive()
        try:
            await self._hold_all(holds, limits)
        except BudgetExceeded:
            # This process's unused leases, settlements written behind that still hold their
            # reservations, and reservations of processes that died are given back first, so
            # a refusal stands on the actual spend. (Pending is read first: one may be written
            # while the dead are looked for.)
            self._give_back_leases(unused=True)
            pending = self._settlements.pending
            freed = await self.holds.give_back_dead_before_refusing()
            if not pending and not freed:
                raise
            await self._settlements.flush()
            await self._hold_all(holds, limits)
        return reservation

    def _counters(
        self, scopes: tuple[str, ...], day: date, limits: BudgetLimits
    ) -> tuple[Counter, ...]:
        """The limited counters of ``scopes`` on ``day``, in lock order. A caller's are the same
        call after call, so they are kept until the limits are read again (or 4,096 sets)."""
        if limits is not self._counted_under or len(self._counted) >= 4096:
            self._counted.clear()
            self._counted_under = limits
        found = self._counted.get((scopes, day))
        if found is None:
            found = tuple(
                sorted(
                    Counter(scope=s, period=p, start=period_start(p, day))
                    for s in set(scopes)
                    for p in PERIODS
                    if limits.limit(s, p) is not None
                )
            )
            self._counted[(scopes, day)] = found
        return found

    async def _carve(
        self, counters: tuple[Counter, ...], amount: Decimal, limits: BudgetLimits
    ) -> tuple[Lease, ...] | None:
        """Reserve ``amount`` from this process's leases, taking those missing; None when a
        counter's limit is too small for leases or has less room left than a lease."""
        if self.leases is None:
            return None
        limited = {c: limits.limit(c.scope, c.period) or _ZERO for c in counters}
        sizes = {c: LeaseBook.size(limit, amount) for c, limit in limited.items()}
        if None in sizes.values():
            return None
        carved = self.leases.carve(limited, amount)
        if carved is not None:
            return carved
        async with self._leasing:
            carved = self.leases.carve(limited, amount)  # another call's top-up may serve
            if carved is None:
                new = [
                    Lease(counter=c, amount=sizes[c] or _ZERO, limit=limited[c])
                    for c in self.leases.lacking(limited, amount)
                ]
                # Shielded: a lease held in the database is in the book even if its caller
                # was cancelled meanwhile, so it is given back like any other.
                if not await asyncio.shield(self._take(new, limits)):
                    return None
                carved = self.leases.carve(limited, amount)
        return carved

    async def _take(self, new: list[Lease], limits: BudgetLimits) -> bool:
        """Hold ``new`` leases in the database and open them; False when a counter has less
        room than its lease (nothing is held then)."""
        assert self.leases is not None
        await self.holds.alive()
        try:
            holds = [(lease.counter, lease.amount, lease.id) for lease in new]
            await self._hold_all(holds, limits, durable=True)
        except BudgetExceeded:
            return False
        for lease in new:
            self.leases.open(lease)
        self._give_back_leases()  # those the new ones replaced, once nothing is in flight
        return True

    def _give_back_leases(self, *, unused: bool = False) -> None:
        """Queue the leases due back (see :meth:`LeaseBook.to_give_back`) behind the
        settlements of their calls: each deletes its hold and returns its amount."""
        if self.leases is None:
            return
        for lease in self.leases.to_give_back(unused=unused):
            counter = lease.counter
            returned = Reservation(
                scopes=(counter.scope,),
                amount=lease.amount,
                day=counter.start,
                counters=(counter,),
                id=lease.id,
            )
            self._settlements.submit_after(_Settlement(reservation=returned, actual=_ZERO))

    async def keep_holds(self) -> None:
        """Beat as this process's holder and give back the holds of processes that stopped.

        Run every :data:`HOLD_BEAT_SECONDS` by every process that reserves (the API's and the
        workers' background jobs), so a call in flight keeps its reservation however long it
        takes, and one whose process was killed is given back within ``hold_lease``. This
        process's idle leases are given back too.
        """
        self._give_back_leases()
        await self.holds.keep()

    async def _hold_all(
        self, holds: Sequence[_Hold], limits: BudgetLimits, *, durable: bool = False
    ) -> None:
        """Hold each ``(counter, amount, hold id)`` of ``holds`` (in counter order), or none;
        ``durable``: committed when PostgreSQL's WAL is flushed (a lease)."""
        if not self._db.is_sqlite:
            await self._hold_all_driver(holds, limits, durable)
            return
        async with self._db.transaction() as conn:
            for counter, amount, hold_id in holds:
                limit = limits.limit(counter.scope, counter.period)
                assert limit is not None
                held = await hold(
                    conn,
                    self._insert,
                    counter,
                    amount,
                    limit,
                    hold_id=hold_id,
                    holder=self.holds.holder,
                )
                if not held:
                    found = await read_counter(conn, counter)
                    raise refusal(counter, amount, limit, found)

    async def settle(self, reservation: Reservation, actual_cost: Decimal) -> None:
        """Turn a reservation into spend of ``actual_cost``, which may differ from it.

        A cost above the reservation is counted in full, even past the limit: the call was
        made. Later calls are refused until the period ends.
        """
        actual = max(actual_cost, _ZERO)
        if not reservation.counters or (reservation.amount == 0 and actual == 0):
            return
        async with self._db.transaction() as conn:
            if reservation.amount == 0:
                await ensure_rows(conn, self._insert, reservation.counters)
            await _give_back(conn, reservation, spent=actual)
        self._finish_carved(reservation, actual)
        if actual > 0:
            await self._check_thresholds(
                self._watched({c: reservation.tenant for c in reservation.counters})
            )

    async def settle_later(self, reservation: Reservation, actual_cost: Decimal) -> None:
        """Settle like :meth:`settle`, written behind: queued, and applied within ~20 ms.

        The reservation stays held until then. A settlement whose counters may not exist yet
        (a reservation of nothing) is settled at once.
        """
        actual = max(actual_cost, _ZERO)
        if not reservation.counters or (reservation.amount == 0 and actual == 0):
            return
        if reservation.amount == 0:
            await self.settle(reservation, actual)
            return
        await self._settlements.submit(_Settlement(reservation=reservation, actual=actual))
        self._finish_carved(reservation, actual)  # its spend is queued before its lease's return

    async def flush(self) -> None:
        """Apply the settlements queued so far; never raises (failures are logged)."""
        await self._settlements.flush()

    async def close(self) -> None:
        """Apply the settlements queued and stop their background writer; then this process
        holds nothing any more: what is still held is for the others to give back at once."""
        self._give_back_leases(unused=True)
        await self._settlements.close()
        await self.holds.leave()

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back: the call failed or was never made."""
        if not reservation.counters or reservation.amount == 0:
            return
        if reservation.leases:  # carved: nothing of it is in the database
            self._finish_carved(reservation, _ZERO)
            return
        async with self._db.transaction() as conn:
            await _give_back(conn, reservation, spent=_ZERO)

    def _finish_carved(self, reservation: Reservation, spent: Decimal) -> None:
        """Tell the leases a call carved from that it ended, having spent ``spent``; give back
        those due."""
        if reservation.leases and self.leases is not None:
            self.leases.finish(reservation.leases, reservation.amount, spent)
            self._give_back_leases()

    async def state(
        self, scope: str, *, day: date | None = None, period: Period = "daily"
    ) -> BudgetState:
        """Tell what ``scope`` has spent and holds reserved in the ``period`` of ``day``.

        Its counter only: a budget without a limit reads 0 spent (see :meth:`states`).
        """
        states = await self.states(scope, day=day, periods=(period,), unlimited_from_usage=False)
        return states[0]

    async def states(
        self,
        scope: str,
        *,
        day: date | None = None,
        periods: Sequence[Period] = PERIODS,
        unlimited_from_usage: bool = True,
    ) -> list[BudgetState]:
        """Tell where ``scope`` stands in each of ``periods`` that ``day`` (today) falls in.

        A period without a limit has no counter: its spend is summed from the usage ledger
        (rows are written ~20 ms behind), or read as 0 when ``unlimited_from_usage`` is False.
        """
        day = day or self.today()
        limits = await self.current_limits()
        # Read this process's own settlements back, without its unused leases: what it reads
        # is what its calls spent and hold.
        self._give_back_leases(unused=True)
        await self._settlements.flush()
        starts = {p: period_start(p, day) for p in periods}
        query = sa.select(SPEND.c.period, SPEND.c.day, SPEND.c.spent, SPEND.c.reserved).where(
            SPEND.c.scope == scope,
            sa.or_(*(sa.and_(SPEND.c.period == p, SPEND.c.day == d) for p, d in starts.items())),
        )
        unlimited = [p for p in periods if limits.limit(scope, p) is None]
        async with self._db.transaction() as conn:
            found = {(r.period, r.day): (r.spent, r.reserved) for r in await conn.execute(query)}
            if unlimited_from_usage:
                for period in unlimited:
                    start = starts[period]
                    end = next_start(period, start)
                    found[(period, start)] = (await usage_spend(conn, scope, start, end), _ZERO)
        states = []
        for period, start in starts.items():
            spent, reserved = found.get((period, start), (_ZERO, _ZERO))
            states.append(
                BudgetState(
                    scope=scope,
                    day=start,
                    period=period,
                    limit=limits.limit(scope, period),
                    spent=spent,
                    reserved=reserved,
                    resets_at=resets_at(period, start),
                )
            )
        return states

    async def current_alerts(self, scope: str, *, day: date | None = None) -> list[BudgetAlert]:
        """Return the thresholds ``scope`` reached in the periods ``day`` (today) falls in."""
        day = day or self.today()
        return await self.alerts.current(scope, {p: period_start(p, day) for p in PERIODS})

    async def _hold_all_driver(
        self, holds: Sequence[_Hold], limits: BudgetLimits, durable: bool
    ) -> None:
        # One counter: its statements commit on their own; several: one transaction.
        async with self._db.driver() as raw:
            together = raw.transaction() if len(holds) > 1 else contextlib.nullcontext()
            async with together:
                for counter, amount, hold_id in holds:
                    limit = limits.limit(counter.scope, counter.period)
                    assert limit is not None
                    held = await hold_driver(
                        raw,
                        counter,
                        amount,
                        limit,
                        hold_id=hold_id,
                        holder=self.holds.holder,
                        durable=durable,
                    )
                    if not held:
                        row = await raw.fetchrow(
                            READ_SQL, counter.scope, counter.period, counter.start
                        )
                        found = (row["spent"], row["reserved"]) if row is not None else None
                        raise refusal(counter, amount, limit, found)

    # -- thresholds ----------------------------------------------------------------------------

    def _watched(self, touched: dict[Counter, str | None]) -> dict[Counter, str | None]:
        """Keep the counters whose spend may still reach a threshold not yet recorded."""
        limits = self._limits
        return {
            c: t
            for c, t in touched.items()
            if self.alerts.watching(c, limits.limit(c.scope, c.period))
        }

    async def _check_thresholds(
        self, watched: dict[Counter, str | None], spent: dict[Counter, Decimal] | None = None
    ) -> None:
        """Record and announce each threshold the spend of ``watched`` newly reached.

        ``spent`` is their spend when the caller read it already. Never raises: the spend is
        settled already, and a threshold missed now is found by the counter's next settlement.
        """
        if not watched:
            return
        try:
            if spent is None:
                spent = await self._spent(list(watched))
            for counter in sorted(watched):
                limit = self._limits.limit(counter.scope, counter.period)
                if limit is not None and counter in spent:
                    await self.alerts.observe(
                        counter,
                        spent=spent[counter],
                        limit=limit,
                        tenant=watched[counter],
                        at=self._now(),
                    )
        except Exception as exc:
            logger.warning("budget thresholds not checked: %r", exc)

    async def _spent(self, counters: list[Counter]) -> dict[Counter, Decimal]:
        key = sa.tuple_(SPEND.c.scope, SPEND.c.period, SPEND.c.day)
        query = sa.select(SPEND.c.scope, SPEND.c.period, SPEND.c.day, SPEND.c.spent).where(
            key.in_([(c.scope, c.period, c.start) for c in counters])
        )
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return {Counter(scope=r.scope, period=r.period, start=r.day): r.spent for r in rows}

    async def _settle_many(self, settlements: list[_Settlement]) -> None:
        # Summed per counter: one UPDATE per counter for the whole batch, in sorted order like
        # the reservations, so the two cannot deadlock. What is given back is what the batch's
        # holds held (a hold given back already, by a batch whose commit's answer was lost or
        # as a dead process's, is not given back twice); a retried batch counts its spend
        # twice: it errs on the side of spending less.
        spend: dict[Counter, Decimal] = {}
        tenants: dict[Counter, str | None] = {}
        for settlement in settlements:
            reservation = settlement.reservation
            for counter in reservation.counters:
                spend[counter] = spend.get(counter, _ZERO) + settlement.actual
                tenants[counter] = tenants.get(counter) or reservation.tenant
        ids = [s.reservation.id for s in settlements]
        # Then the spend of the counters that may reach a threshold is read back.
        watched = self._watched({c: tenants[c] for c, spent in spend.items() if spent})
        found: dict[Counter, Decimal] | None = None
        if not self._db.is_sqlite:
            rows = [(c.scope, c.period, c.start, ids, spent) for c, spent in sorted(spend.items())]
            async with self._db.driver() as raw:
                await raw.executemany(SETTLE_SQL, rows)  # atomic, one round trip
                if watched:
                    found = await spent_driver(raw, list(watched))
        else:
            async with self._db.transaction() as conn:
                freed = await free(conn, ids)
                for counter, spent in sorted(spend.items()):
                    await move(conn, (counter,), freed.get(counter, _ZERO), spent=spent)
        await self._check_thresholds(watched, found)


async def _give_back(conn: AsyncConnection, reservation: Reservation, *, spent: Decimal) -> None:
    """Delete ``reservation``'s holds and count ``spent`` instead of what they held, in each
    of its counters (a hold given back already, as a dead process's, is not given back twice)."""
    freed = await free(conn, [reservation.id]) if reservation.amount > 0 else {}
    for counter in reservation.counters:  # sorted, as reservations lock them
        held = freed.get(counter, _ZERO)
        if held or spent:
            await move(conn, (counter,), held, spent=spent)
