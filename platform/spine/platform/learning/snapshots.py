"""Where the learner keeps its state: versions of the routing weights, the events it applied,
and the facts of calls it no longer remembers (read back from the usage ledger).

A snapshot and the ids of the events it includes are written in one transaction, so after a
crash the learner resumes from the last snapshot and re-applies exactly the events after it;
an event already applied (a duplicate, or a replay) is skipped.

A version's large values (strings of :data:`PART_CHARS` or more: a model's covariance, full
chunks of its pending gains) are stored apart, once each, by their SHA-256, and the version
holds ``{"$part": digest}`` in their place. The learner stores a version every second while
events flow, and a dense model's covariance (~0.8 MB) changes only every 64 quality scores: at
8 such models a version was 8 MB of WAL, and every router read all of it back. A reader keeps
the parts of the last version it loaded and fetches only the new ones. A part lives while a
kept version refers to it (``last_version``).

An applied event's id is remembered for ``keep_applied`` seconds (the learner passes how long
OUTCOMES keeps an event, and an hour): after that the stream cannot deliver the event again, and
the table would otherwise grow by one row per model call forever.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from spine.platform.db import Database, HeldLock
from spine.platform.errors import ServiceUnavailable
from spine.platform.learning.joins import CallFacts
from spine.platform.schema import (
    LearnedEventRow,
    ModelCallRow,
    RoutingWeightPartRow,
    RoutingWeightsRow,
    utcnow,
)

__all__ = ["PART_CHARS", "ScratchSnapshots", "Snapshot", "SnapshotStore"]

PART_CHARS = 16_384
"""A string this long or longer in a version is stored as a part."""
_WEIGHTS: sa.Table = RoutingWeightsRow.__table__  # type: ignore[assignment]
_PARTS: sa.Table = RoutingWeightPartRow.__table__  # type: ignore[assignment]
_APPLIED: sa.Table = LearnedEventRow.__table__  # type: ignore[assignment]
_CALLS: sa.Table = ModelCallRow.__table__  # type: ignore[assignment]
_KEEP = 20  # versions kept for looking back; the newest is what routers load
_FORGET_BATCH = 10_000  # applied ids forgotten per version stored, at most


@dataclass(slots=True, kw_only=True, frozen=True)
class Snapshot:
    """One stored version of the weights."""

    version: int
    state: dict[str, Any]
    events: int
    created_at: datetime


class SnapshotStore:
    """Reads and writes snapshots, applied event ids and call facts."""

    def __init__(
        self, db: Database, *, fence: HeldLock | None = None, keep_applied: float | None = None
    ) -> None:
        """``fence``: the lock a leading learner holds; every write is refused once it is lost
        (a frozen learner that wakes must not store a version beside its successor's).
        ``keep_applied``: seconds an applied event's id is remembered (None: always)."""
        self._db = db
        self._fence = fence
        self._keep_applied = keep_applied
        insert = sqlite.insert if db.is_sqlite else postgresql.insert
        self._mark = insert(_APPLIED).on_conflict_do_nothing(index_elements=["id"])
        self._parts: dict[str, str] = {}  # the parts of the last version read, by digest

    async def latest(self) -> Snapshot | None:
        """The newest snapshot, None before the first.

        Raises:
            ServiceUnavailable: The newest version's parts are gone three times in a row (the
                learner stored 20 versions between reading a version and its parts).
        """
        query = sa.select(_WEIGHTS).order_by(_WEIGHTS.c.version.desc()).limit(1)
        for _ in range(3):
            async with self._db.transaction() as conn:
                row = (await conn.execute(query)).mappings().one_or_none()
                if row is None:
                    return None
                refs = _refs(row["state"])
                wanted = [d for d in refs if d not in self._parts]
                found: dict[str, str] = {}
                if wanted:
                    fetched = await conn.execute(
                        sa.select(_PARTS.c.digest, _PARTS.c.data).where(_PARTS.c.digest.in_(wanted))
                    )
                    found = {str(digest): str(data) for digest, data in fetched}
            parts = {d: self._parts[d] if d in self._parts else found.get(d) for d in refs}
            if all(text is not None for text in parts.values()):
                self._parts = {d: text for d, text in parts.items() if text is not None}
                return Snapshot(
                    version=row["version"],
                    state=_joined(row["state"], self._parts),
                    events=row["events"],
                    created_at=row["created_at"],
                )
        raise ServiceUnavailable("the newest routing weights' parts keep disappearing")

    async def save(
        self, *, version: int, state: dict[str, Any], events: int, applied: Sequence[str]
    ) -> None:
        """Store a snapshot and the ids of the events it includes, in one transaction.

        Only the parts not stored yet are written; the others are marked as used by
        ``version``. Versions older than the newest :data:`_KEEP`, and parts no kept version
        uses, are deleted.
        """
        parts: dict[str, str] = {}
        # Hashing the large values (~6 MB at 8 dense models) releases the GIL: off the loop.
        skeleton = await asyncio.to_thread(_split, state, parts)
        async with self._db.transaction() as conn:
            if self._fence is not None:
                await self._fence.confirm(conn)
            if parts:
                kept = await conn.execute(
                    sa.update(_PARTS)
                    .where(_PARTS.c.digest.in_(list(parts)))
                    .values(last_version=version)
                    .returning(_PARTS.c.digest)
                )
                new = set(parts) - {str(r[0]) for r in kept}
                if new:
                    await conn.execute(
                        sa.insert(_PARTS),
                        [{"digest": d, "data": parts[d], "last_version": version} for d in new],
                    )
            await conn.execute(
                sa.insert(_WEIGHTS).values(
                    version=version, state=skeleton, events=events, created_at=utcnow()
                )
            )
            for start in range(0, len(applied), 1000):
                chunk = applied[start : start + 1000]
                await conn.execute(self._mark, [{"id": i, "applied_at": utcnow()} for i in chunk])
            await conn.execute(sa.delete(_WEIGHTS).where(_WEIGHTS.c.version <= version - _KEEP))
            await conn.execute(sa.delete(_PARTS).where(_PARTS.c.last_version <= version - _KEEP))
            if self._keep_applied is not None:
                cutoff = utcnow() - timedelta(seconds=self._keep_applied)
                old = sa.select(_APPLIED.c.id).where(_APPLIED.c.applied_at < cutoff)
                old = old.limit(_FORGET_BATCH)
                await conn.execute(sa.delete(_APPLIED).where(_APPLIED.c.id.in_(old)))

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
            await conn.execute(sa.delete(_PARTS))
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


def _split(value: Any, parts: dict[str, str]) -> Any:
    """Return ``value`` with every string of :data:`PART_CHARS` or more replaced by a
    reference to its digest, the strings added to ``parts``."""
    if isinstance(value, dict):
        return {key: _split(item, parts) for key, item in value.items()}
    if isinstance(value, list):
        return [_split(item, parts) for item in value]
    if isinstance(value, str) and len(value) >= PART_CHARS:
        digest = hashlib.sha256(value.encode()).hexdigest()
        parts[digest] = value
        return {"$part": digest}
    return value


def _refs(value: Any) -> list[str]:
    """Return the digests ``value`` refers to."""
    if isinstance(value, dict):
        if set(value) == {"$part"}:
            return [str(value["$part"])]
        return [d for item in value.values() for d in _refs(item)]
    if isinstance(value, list):
        return [d for item in value for d in _refs(item)]
    return []


def _joined(value: Any, parts: dict[str, str]) -> Any:
    """Return ``value`` with its references replaced by the parts (the inverse of _split)."""
    if isinstance(value, dict):
        if set(value) == {"$part"}:
            return parts[value["$part"]]
        return {key: _joined(item, parts) for key, item in value.items()}
    if isinstance(value, list):
        return [_joined(item, parts) for item in value]
    return value


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
