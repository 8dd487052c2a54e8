"""A background job's rounds: the first one's delay, and a stop that comes first."""

from __future__ import annotations

import asyncio
import time

from spine.platform.periodic import run_every


async def test_the_first_round_waits_first_after_then_rounds_follow_the_interval() -> None:
    stop = asyncio.Event()
    began = time.monotonic()
    rounds: list[float] = []

    async def job() -> None:
        rounds.append(time.monotonic() - began)
        if len(rounds) == 2:
            stop.set()

    await asyncio.wait_for(
        run_every(job, interval=0.05, stop=stop, name="test", first_after=0.2), 5
    )
    assert len(rounds) == 2
    assert rounds[0] >= 0.2
    assert rounds[1] - rounds[0] >= 0.05


async def test_a_stop_during_the_first_delay_runs_nothing() -> None:
    stop = asyncio.Event()
    ran: list[bool] = []

    async def job() -> None:
        ran.append(True)

    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = time.monotonic()
    await asyncio.wait_for(run_every(job, interval=1, stop=stop, name="test", first_after=30), 5)
    assert not ran
    assert time.monotonic() - began < 1  # the stop cut the wait short
