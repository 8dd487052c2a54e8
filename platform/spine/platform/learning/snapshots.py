"""Where the learner keeps its state: versions of the routing weights, the events it applied,
and the facts of calls it no longer remembers (read back from the usage ledger).

A snapshot and the ids of the events it includes are written in one transaction, so after a
crash the learner resumes from the last snapshot and re-applies exactly the events after it;
an event already applied (a duplicate, or a replay) is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from spine.platform.db import Database, HeldLock
from spine.platform.learning.joins import CallFacts
from spine.platform.schema import LearnedEventRow, ModelCallRow, RoutingWeightsRow, utcnow

__all__ = ["ScratchSnapshots", "Snapshot", "SnapshotStore"]

_WEIGHTS: sa.Table = RoutingWeightsRow.__table__  # type: ignore[assignment]
_APPLIED: sa.Table = LearnedEventRow.__table__  # type: ignore[assignment]
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
_KEEP = 20  # versions kept for looking back; the newest is what routers load


@dataclass(slots=True, kw_only=True, frozen=True)
class Snapshot:
    """One stored version of the weights."""

    version: int
    state: dict[str, Any]
    events: int
    created_at: datetime


class SnapshotStore:
    """Reads and writes snapshots, applied event ids and call facts."""

    def __init__(self, db: Database, *, fence: HeldLock | None = None) -> None:
        """``fence``: the lock a leading learner holds; every write is refused once it is lost
        (a frozen learner that wakes must not store a version beside its successor's)."""
        self._db = db
        self._fence = fence
        insert = sqlite.insert if db.is_sqlite else postgresql.insert
        self._mark = insert(_APPLIED).on_conflict_do_nothing(index_elements=["id"])

    async def latest(self) -> Snapshot | None:
        """The newest snapshot, None before the first."""
        query = sa.select(_WEIGHTS).order_by(_WEIGHTS.c.version.desc()).limit(1)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().one_or_none()
        if row is None:
            return None
        return Snapshot(
            version=row["version"],
            state=row["state"],
            events=row["events"],
            created_at=row["created_at"],
        )

    async def save(
        self, *, version: int, state: dict[str, Any], events: int, applied: Sequence[str]
    ) -> None:
        """Store a snapshot and the ids of the events it includes, in one transaction."""
        async with self._db.transaction() as conn:
            if self._fence is not None:
                await self._fence.confirm(conn)
            await conn.execute(
                sa.insert(_WEIGHTS).values(
                    version=version, state=state, events=events, created_at=utcnow()
                )
            )
            for start in range(0, len(applied), 1000):
                chunk = applied[start : start + 1000]
                await conn.execute(self._mark, [{"id": i, "applied_at": utcnow()} for i in chunk])
            await conn.execute(sa.delete(_WEIGHTS).where(_WEIGHTS.c.version <= version - _KEEP))

    async def applied(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` a stored snapshot already includes."""
        wanted = list(dict.fromkeys(event_ids))
        found: set[str] = set()
        async with self._db.transaction() as conn:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                rows = await conn.execute(sa.select(_APPLIED.c.id).where(_APPLIED.c.id.in_(chunk)))
                found.update(str(r[0]) for r in rows)
        return found

    async def reset(self) -> None:
        """Forget every snapshot and applied event (before a replay from the stream's start)."""
        async with self._db.transaction() as conn:
            if self._fence is not None:
                await self._fence.confirm(conn)
            await conn.execute(sa.delete(_WEIGHTS))
            await conn.execute(sa.delete(_APPLIED))

    async def call_facts(
        self, *, call_ids: Iterable[str] = (), task_ids: Iterable[str] = ()
    ) -> list[CallFacts]:
        """Facts of calls (by id, or of tasks) from the usage ledger, oldest first."""
        calls, tasks = list(dict.fromkeys(call_ids)), list(dict.fromkeys(task_ids))
        if not calls and not tasks:
            return []
        query = (
            sa.select(_CALLS.c.id, _CALLS.c.model, _CALLS.c.task_id, _CALLS.c.decision)
            .where(sa.or_(_CALLS.c.id.in_(calls), _CALLS.c.task_id.in_(tasks)))
            .order_by(_CALLS.c.created_at, _CALLS.c.id)
        )
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [CallFacts.of(str(r.id), str(r.model), r.task_id, r.decision) for r in rows]


class ScratchSnapshots:
    """A :class:`SnapshotStore` that keeps only what a throw-away learner needs, in memory.

    For replays: the learner behind it is the production one, its state is discarded after.
    """

    def __init__(self) -> None:
        self._applied: set[str] = set()
        self._latest: Snapshot | None = None

    async def latest(self) -> Snapshot | None:
        """The last snapshot saved (None before the first)."""
        return self._latest

    async def save(
        self, *, version: int, state: dict[str, Any], events: int, applied: Sequence[str]
    ) -> None:
        """Remember the snapshot and the ids it includes."""
        self._latest = Snapshot(version=version, state=state, events=events, created_at=utcnow())
        self._applied.update(applied)

    async def applied(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` a saved snapshot includes."""
        return {i for i in event_ids if i in self._applied}

    async def call_facts(
        self, *, call_ids: Iterable[str] = (), task_ids: Iterable[str] = ()
    ) -> list[CallFacts]:
        """Nothing beyond the learner's memory."""
        return []
