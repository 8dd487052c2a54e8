"""SIGKILL nats-server while outcome events are being published: none is lost once it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spine.events.bus import NatsBus
from spine.events.outcomes import OutcomePublisher
from spine.events.streams import OUTCOMES_STREAM, StreamLayout
from spine.platform.metering.usage import ModelCallRecord
from support.reliability import nats_url_of, own_nats

pytestmark = pytest.mark.reliability

PER_PHASE = 20  # events before the kill, while NATS is dead, and after it is back
DOWN_FOR = 1.5  # seconds NATS stays dead (the supervisor of `spine up` takes ~1)


def record(n: int) -> ModelCallRecord:
    return ModelCallRecord(tenant="acme", model="m", provider="p", latency_ms=float(n))


async def test_outcome_events_published_across_a_nats_restart_all_arrive_once(
    tmp_path: Path,
) -> None:
    with own_nats(tmp_path / "nats") as stack:
        bus = NatsBus(nats_url_of(stack), name="test-outcomes-restart", publish_timeout=1.0)
        await bus.wait_connected(10)
        await StreamLayout().ensure(bus.js)
        outcomes = OutcomePublisher(bus, retry_for=20.0)
        try:
            for n in range(PER_PHASE):
                outcomes(record(n))
            await asyncio.sleep(0.5)
            assert outcomes.published == PER_PHASE
            stack.kill("nats")
            for n in range(PER_PHASE, 2 * PER_PHASE):
                outcomes(record(n))
            await asyncio.sleep(DOWN_FOR)
            assert outcomes.dropped == 0  # waiting, not given up
            await asyncio.to_thread(stack.restart, "nats")
            for n in range(2 * PER_PHASE, 3 * PER_PHASE):
                outcomes(record(n))
            await outcomes.close(drain_timeout=20.0)
            assert (outcomes.published, outcomes.dropped) == (3 * PER_PHASE, 0)
            await bus.wait_connected(10)
            info = await bus.js.stream_info(OUTCOMES_STREAM)
            assert info.state.messages == 3 * PER_PHASE  # each once (Nats-Msg-Id)
        finally:
            await outcomes.close(drain_timeout=0)
            await bus.close()
