"""A state that takes long to store is stored less often; a small one on the set rhythm."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from spine.events.learner import LONGEST_SPACING, STORE_SHARE, Learner
from spine.platform.learning.snapshots import ScratchSnapshots


class SlowSnapshots(ScratchSnapshots):
    """Keeps snapshots in memory, taking ``seconds`` for each save; counts them."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.saves = 0

    async def save(
        self, *, version: int, state: dict[str, Any], events: int, applied: Sequence[str]
    ) -> None:
        await asyncio.sleep(self.seconds)
        self.saves += 1
        await super().save(version=version, state=state, events=events, applied=applied)


def outcome(n: int) -> dict[str, Any]:
    return {"type": "model.outcome", "id": f"call-{n}", "model": "m", "outcome": "ok"}


async def feed(learner: Learner, seconds: float) -> None:
    """Hand the learner one event every 20 ms for ``seconds``."""
    for n in range(int(seconds / 0.02)):
        await learner.take([outcome(n)])
        await asyncio.sleep(0.02)


async def test_a_quick_store_keeps_the_set_rhythm() -> None:
    store = SlowSnapshots(0.001)
    learner = Learner(store, checkpoint_seconds=0.1)
    stop = asyncio.Event()
    rhythm = asyncio.create_task(learner.run_checkpoints(stop))
    await feed(learner, 1.0)
    stop.set()
    await rhythm
    assert learner.spacing == 0.1
    assert 5 <= store.saves <= 12  # about one a tenth of a second, and the last at stop


async def test_a_slow_store_spaces_the_versions_by_its_share_of_the_time() -> None:
    store = SlowSnapshots(0.1)  # 0.1 s a save: one every 2 s at most
    learner = Learner(store, checkpoint_seconds=0.1)
    stop = asyncio.Event()
    rhythm = asyncio.create_task(learner.run_checkpoints(stop))
    await feed(learner, 1.5)
    assert 0.1 / STORE_SHARE <= learner.spacing < LONGEST_SPACING
    assert store.saves == 1  # the first, then nothing within 2 s
    stop.set()
    await rhythm
    assert store.saves == 2  # what came since is stored at stop, not lost
    assert learner.applied == 75 and not learner._pending


async def test_the_spacing_is_bounded() -> None:
    store = SlowSnapshots(1.6)  # would ask for 32 s between versions
    learner = Learner(store, checkpoint_seconds=0.1)
    await learner.take([outcome(1)])
    assert await learner.checkpoint()
    assert learner.spacing == LONGEST_SPACING
