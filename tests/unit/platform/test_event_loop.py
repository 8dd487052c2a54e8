"""The long-running consumers (worker, learner) run on uvloop when it is installed."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from spine.platform.app.cli.running import event_loop_factory


def test_the_consumers_loop_is_uvloops_when_installed() -> None:
    factory = event_loop_factory()
    assert factory is not None

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.run(running_loop()), uvloop.Loop)


def test_without_uvloop_asyncios_own_loop_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop_factory() is None
