"""The learning state stays bounded (on SQLite and PostgreSQL).

Versions of the routing weights store their large values once: a dense model's covariance
changes only at a fold, a version stored between folds must not write it again, and every
reader must still get the exact state back. Applied event ids are forgotten once OUTCOMES can
no longer deliver their events."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import ServiceUnavailable
from spine.platform.learning import Observation, RoutingWeights
from spine.platform.learning.estimator import FOLD_EVERY
from spine.platform.learning.snapshots import PART_CHARS, SnapshotStore
from spine.platform.schema import LearnedEventRow, RoutingWeightPartRow, RoutingWeightsRow, utcnow

pytestmark = pytest.mark.integration

PARTS: sa.Table = RoutingWeightPartRow.__table__  # type: ignore[assignment]
VERSIONS: sa.Table = RoutingWeightsRow.__table__  # type: ignore[assignment]
APPLIED: sa.Table = LearnedEventRow.__table__  # type: ignore[assignment]


def scored(weights: RoutingWeights, rng: random.Random, model: str, count: int) -> None:
    """Fold ``count`` quality scores of ``model`` in (each touches 30 random features)."""
    space = weights.space
    for _ in range(count):
        text = " ".join(f"w{rng.randrange(5000)}" for _ in range(30))
        weights.observe(
            Observation(model=model, features=space.extract(text), quality=rng.random())
        )


def timed(weights: RoutingWeights, model: str) -> None:
    """One call's latency and cost: nothing of the covariance changes."""
    weights.observe(Observation(model=model, latency_ms=12.0, cost=0.001))


async def stored_parts(db: Database) -> dict[str, int]:
    async with db.transaction() as conn:
        rows = await conn.execute(sa.select(PARTS.c.digest, PARTS.c.last_version))
        return {str(digest): int(last) for digest, last in rows}


async def version_row(db: Database, version: int) -> dict[str, Any]:
    async with db.transaction() as conn:
        query = sa.select(VERSIONS.c.state).where(VERSIONS.c.version == version)
        state: dict[str, Any] = (await conn.execute(query)).scalar_one()
    return state


def as_text(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True)


async def test_an_unchanged_covariance_is_written_once_and_every_reader_gets_the_state(
    db: Database,
) -> None:
    rng = random.Random(3)
    weights = RoutingWeights()
    for model in ("a", "b"):
        scored(weights, rng, model, FOLD_EVERY + 2 * 8 + 3)  # folded, two full chunks, 3 rows
    writer, reader = SnapshotStore(db), SnapshotStore(db)

    await writer.save(version=1, state=weights.to_dict(), events=1, applied=["e1"])
    first = await stored_parts(db)
    # Per model: the covariance's strict upper triangle and two full chunks of gains.
    assert len(first) == 6
    row = json.dumps(await version_row(db, 1))
    assert len(row) < 2 * 5 * PART_CHARS  # the version itself holds only small values
    assert as_text((await reader.latest()).state) == as_text(weights.to_dict())  # type: ignore[union-attr]

    timed(weights, "a")
    await writer.save(version=2, state=weights.to_dict(), events=2, applied=["e2"])
    assert set(await stored_parts(db)) == set(first)  # nothing large written again
    assert set((await stored_parts(db)).values()) == {2}
    loaded = await reader.latest()
    assert loaded is not None and loaded.version == 2
    assert as_text(loaded.state) == as_text(weights.to_dict())
    assert loaded.state["models"]["a"]["latency_ms"]["count"] == 1

    scored(weights, rng, "b", FOLD_EVERY)  # b folds again: its covariance is new
    await writer.save(version=3, state=weights.to_dict(), events=3, applied=["e3"])
    third = await stored_parts(db)
    assert len(set(third) - set(first)) >= 1
    for fresh in (reader, SnapshotStore(db)):  # one that has parts already, one that has none
        latest = await fresh.latest()
        assert latest is not None and latest.version == 3
        assert as_text(latest.state) == as_text(weights.to_dict())
        rebuilt = RoutingWeights.from_dict(latest.state)
        assert json.dumps(rebuilt.to_dict()) == json.dumps(weights.to_dict())


async def test_parts_no_kept_version_uses_are_deleted(db: Database) -> None:
    rng = random.Random(4)
    weights = RoutingWeights()
    scored(weights, rng, "a", FOLD_EVERY)
    store = SnapshotStore(db)
    await store.save(version=1, state=weights.to_dict(), events=1, applied=[])
    old = set(await stored_parts(db))
    assert old
    scored(weights, rng, "a", FOLD_EVERY)  # another fold: version 2 uses none of them
    for version in range(2, 22):
        timed(weights, "a")
        await store.save(version=version, state=weights.to_dict(), events=version, applied=[])
        remaining = set(await stored_parts(db))
        # Version 1 is kept until version 21 is stored (the newest 20 are kept).
        assert (old <= remaining) == (version < 21)
    latest = await SnapshotStore(db).latest()
    assert latest is not None and as_text(latest.state) == as_text(weights.to_dict())


async def test_a_version_stored_whole_before_parts_existed_still_loads(db: Database) -> None:
    rng = random.Random(5)
    weights = RoutingWeights()
    scored(weights, rng, "a", 20)
    whole = weights.to_dict()
    async with db.transaction() as conn:
        await conn.execute(sa.insert(VERSIONS).values(version=1, state=whole, events=20))
    latest = await SnapshotStore(db).latest()
    assert latest is not None and as_text(latest.state) == as_text(whole)


async def test_a_reset_forgets_the_parts(db: Database) -> None:
    weights = RoutingWeights()
    scored(weights, random.Random(6), "a", FOLD_EVERY)
    store = SnapshotStore(db)
    await store.save(version=1, state=weights.to_dict(), events=1, applied=["x"])
    assert await stored_parts(db)
    await store.reset()
    assert await stored_parts(db) == {}
    assert await store.latest() is None


@pytest.mark.parametrize("keep", [None, 3600.0])
async def test_applied_event_ids_are_forgotten_after_the_time_given(
    db: Database, keep: float | None
) -> None:
    now = utcnow()
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(APPLIED),
            [
                {"id": "model.outcome:two-hours-ago", "applied_at": now - timedelta(hours=2)},
                {"id": "model.outcome:ten-minutes-ago", "applied_at": now - timedelta(minutes=10)},
            ],
        )
    store = SnapshotStore(db, keep_applied=keep)
    await store.save(version=1, state=RoutingWeights().to_dict(), events=1, applied=["fresh"])
    remembered = await store.applied(
        ["model.outcome:two-hours-ago", "model.outcome:ten-minutes-ago", "fresh"]
    )
    if keep is None:
        assert remembered == {
            "model.outcome:two-hours-ago",
            "model.outcome:ten-minutes-ago",
            "fresh",
        }
    else:
        assert remembered == {"model.outcome:ten-minutes-ago", "fresh"}


async def test_a_version_whose_parts_are_gone_is_refused_as_unavailable(db: Database) -> None:
    weights = RoutingWeights()
    scored(weights, random.Random(7), "a", FOLD_EVERY)
    await SnapshotStore(db).save(version=1, state=weights.to_dict(), events=1, applied=[])
    async with db.transaction() as conn:
        await conn.execute(sa.delete(PARTS))
    with pytest.raises(ServiceUnavailable, match="parts"):
        await SnapshotStore(db).latest()
