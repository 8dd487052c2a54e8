"""Which process holds each reservation, so the reservations of a dead process are given back.

A reservation writes one hold per counter (``budget_holds``, see :mod:`.budget_statements`),
naming its *holder*: the :class:`BudgetHolds` of the process that made it. A holder beats in
``budget_holders`` before its first hold and then every :data:`HOLD_BEAT_SECONDS` (the API's and
the workers' background job, :meth:`BudgetHolds.keep`, and any reservation when the last beat
is older). The holds of a holder silent for the lease (:data:`HOLD_LEASE_SECONDS`: its process
was killed or is frozen) are deleted and given back to their counters by whichever process
looks first; a holder that stops cleanly removes its row, so what it still holds is given back
at once. Deleting a hold is what gives it back, so a hold is never given back twice, whoever
races for it (its own settlement, or two processes looking for the dead).
"""

from __future__ import annotations

import asyncio
import logging
import time as monotonic_time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.db import Database
from spine.platform.metering.budget_periods import Counter
from spine.platform.metering.budget_statements import HOLDS, Insert, move, per_counter
from spine.platform.schema import BudgetHolderRow, money_text

__all__ = ["HOLD_BEAT_SECONDS", "HOLD_LEASE_SECONDS", "BudgetHolds"]

logger = logging.getLogger("spine.platform.metering.budgets")  # the ledger's log

HOLD_BEAT_SECONDS = 10.0  # how often a holder says it is alive
HOLD_LEASE_SECONDS = 60.0  # silent this long, its holds are given back
_LOOK_AGAIN_SECONDS = 1.0  # refusals come in bursts: look for the dead at most this often
_ZERO = Decimal(0)
HOLDERS: sa.Table = BudgetHolderRow.__table__  # type: ignore[assignment]


class BudgetHolds:
    """This process as a holder of reservations, and the one that gives back the dead's.

    Args:
        db: The database of the holds and the counters.
        insert: The dialect's INSERT (for the beat's upsert).
        now: The clock of the beats and the lease.
        lease: Seconds after its last beat when a holder's holds are given back.
    """

    def __init__(
        self,
        db: Database,
        *,
        insert: Insert,
        now: Callable[[], datetime],
        lease: float = HOLD_LEASE_SECONDS,
    ) -> None:
        self._db = db
        self._insert = insert
        self._now = now
        self._lease = lease
        self.holder = str(uuid.uuid4())
        self._beaten_at = float("-inf")
        self._looked_at = float("-inf")
        self.holding = asyncio.Event()
        """Set once this holder has beaten: it may hold reservations from then on."""

    async def keep(self) -> None:
        """Beat, then give back the holds of the holders that stopped (the periodic job)."""
        await self.beat()
        await self.give_back_dead()

    async def alive(self) -> None:
        """Beat unless the last beat is recent: before this holder's first hold (its row must
        exist before a hold names it), then whenever the beat interval passed."""
        if monotonic_time.monotonic() - self._beaten_at >= HOLD_BEAT_SECONDS:
            await self.beat()

    async def beat(self) -> None:
        """Say that this holder is alive now."""
        now = self._now()
        statement = self._insert(HOLDERS).values(holder=self.holder, seen_at=now)
        async with self._db.transaction() as conn:
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[HOLDERS.c.holder], set_={"seen_at": now}
                )
            )
        self._beaten_at = monotonic_time.monotonic()
        self.holding.set()

    async def give_back_dead(self) -> dict[Counter, Decimal]:
        """Give back what holders silent for the lease hold; return it, per counter."""
        cutoff = self._now() - timedelta(seconds=self._lease)
        async with self._db.transaction() as conn:
            freed = await _reap(conn, cutoff)
            for counter, amount in sorted(freed.items()):  # in order, as reservations lock
                await move(conn, (counter,), amount, spent=_ZERO)
        if freed:
            logger.warning(
                "gave back reservations held by processes silent for %.0f s: %s",
                self._lease,
                ", ".join(f"{c.scope} ({c.period}) {money_text(a)}" for c, a in freed.items()),
            )
        return freed

    async def give_back_dead_before_refusing(self) -> dict[Counter, Decimal]:
        """As :meth:`give_back_dead`, at most once a second (a dead holder's holds wait a
        lease anyway); an empty answer when it looked a moment ago."""
        if monotonic_time.monotonic() - self._looked_at < _LOOK_AGAIN_SECONDS:
            return {}
        self._looked_at = monotonic_time.monotonic()
        return await self.give_back_dead()

    async def leave(self) -> None:
        """Remove this holder (the process stops): what it still holds is given back by the
        next process that looks. Never raises: the lease gives it back all the same."""
        if self._beaten_at == float("-inf"):
            return
        try:
            async with self._db.transaction() as conn:
                await conn.execute(sa.delete(HOLDERS).where(HOLDERS.c.holder == self.holder))
        except Exception as exc:
            logger.warning("budget holder %s not removed: %r", self.holder, exc)


async def _reap(conn: AsyncConnection, cutoff: datetime) -> dict[Counter, Decimal]:
    """Delete the holds whose holder was last seen before ``cutoff`` (or is gone), and those
    holders; return what the holds held, per counter, for the caller to give back."""
    alive = sa.select(HOLDERS.c.holder).where(HOLDERS.c.seen_at >= cutoff)
    gone = (
        sa.delete(HOLDS)
        .where(HOLDS.c.holder.not_in(alive))
        .returning(HOLDS.c.scope, HOLDS.c.period, HOLDS.c.day, HOLDS.c.amount)
    )
    freed = per_counter((await conn.execute(gone)).mappings())
    await conn.execute(sa.delete(HOLDERS).where(HOLDERS.c.seen_at < cutoff))
    return freed
