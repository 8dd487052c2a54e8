"""The outcome publisher never blocks a call: a full queue or a dead NATS drops and counts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from nats.js.api import DiscardPolicy

from spine.events.outcomes import ModelOutcome, OutcomePublisher
from spine.events.streams import StreamLayout
from spine.events.subjects import outcome_subject
from spine.platform.errors import ServiceUnavailable
from spine.platform.metering.usage import ModelCallRecord


class SlowBus:
    """Acknowledges each publish after a while, or refuses them all."""

    def __init__(self, *, down: bool = False, delay: float = 0.05) -> None:
        self.down = down
        self.delay = delay
        self.published: list[tuple[str, bytes, str]] = []

    async def publish_durable(self, subject: str, payload: bytes, *, msg_id: str) -> None:
        if self.down:
            raise ServiceUnavailable("NATS is not connected")
        await asyncio.sleep(self.delay)
        self.published.append((subject, payload, msg_id))


def record(tenant: str = "acme") -> ModelCallRecord:
    return ModelCallRecord(tenant=tenant, model="m", provider="p", latency_ms=1.5)


def publisher(bus: SlowBus, **kwargs: Any) -> OutcomePublisher:
    return OutcomePublisher(bus, **kwargs)  # type: ignore[arg-type]


async def test_a_full_queue_drops_and_counts_instead_of_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = SlowBus()
    outcomes = publisher(bus, max_queued=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            outcomes(record())
    assert outcomes.dropped == 3
    assert "not published" in caplog.text
    await outcomes.close()
    assert (outcomes.published, len(bus.published)) == (2, 2)
    subject, payload, msg_id = bus.published[0]
    event = ModelOutcome.model_validate_json(payload)
    assert (subject, event.id, event.type, event.outcome) == (
        "spine.outcomes.acme",
        msg_id,
        "model.outcome",
        "ok",
    )


async def test_nats_down_past_the_retry_time_drops_every_event_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = SlowBus(down=True)
    outcomes = publisher(bus, retry_for=0.3)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            outcomes(record())
        await asyncio.sleep(0.1)
        assert (outcomes.dropped, outcomes.published) == (0, 0)  # still being tried
        await asyncio.sleep(0.4)
    assert (outcomes.dropped, outcomes.published) == (3, 0)
    assert caplog.text.count("not published") == 1
    bus.down = False
    await outcomes.close()
    assert bus.published == []


async def test_without_retries_nats_down_drops_at_once() -> None:
    outcomes = publisher(SlowBus(down=True), retry_for=0)
    for _ in range(3):
        outcomes(record())
    await asyncio.sleep(0.05)
    assert (outcomes.dropped, outcomes.published) == (3, 0)
    await outcomes.close()


async def test_events_sent_while_nats_restarts_are_published_when_it_is_back() -> None:
    bus = SlowBus(down=True, delay=0.0)
    outcomes = publisher(bus, retry_for=5.0, in_flight=4)
    events = [record(tenant=f"t{i}") for i in range(10)]
    for event in events:
        outcomes(event)
    await asyncio.sleep(0.5)
    assert (outcomes.published, outcomes.dropped) == (0, 0)
    bus.down = False
    await outcomes.close(drain_timeout=5.0)
    assert (outcomes.published, outcomes.dropped) == (10, 0)
    assert sorted(subject for subject, _, _ in bus.published) == sorted(
        f"spine.outcomes.t{i}" for i in range(10)
    )


def test_a_tenant_name_becomes_one_subject_token() -> None:
    assert outcome_subject("acme") == "spine.outcomes.acme"
    assert outcome_subject("a.b *>c") == "spine.outcomes.a_b___c"


def test_the_outcomes_stream_keeps_events_for_a_limited_time_and_size() -> None:
    config = StreamLayout(replicas=3, outcomes_max_age=3600).outcomes_stream()
    assert (config.name, config.subjects, config.num_replicas, config.max_age) == (
        "OUTCOMES",
        ["spine.outcomes.>"],
        3,
        3600,
    )
    assert (config.max_bytes, config.discard) == (1 << 30, DiscardPolicy.OLD)
    assert StreamLayout(outcomes_max_bytes=0).outcomes_stream().max_bytes == -1


async def test_queued_events_are_published_together_in_their_order() -> None:
    bus = SlowBus(delay=0.05)
    outcomes = publisher(bus, in_flight=8)
    events = [record(tenant=f"t{i}") for i in range(20)]
    for event in events:
        outcomes(event)
    started = asyncio.get_running_loop().time()
    await outcomes.close()
    # 20 events at 50 ms each, up to 8 at a time: three rounds, not twenty.
    assert asyncio.get_running_loop().time() - started < 0.5
    assert [subject for subject, _, _ in bus.published] == [
        f"spine.outcomes.t{i}" for i in range(20)
    ]
    assert (outcomes.published, outcomes.dropped) == (20, 0)


async def test_events_in_flight_at_the_drain_deadline_count_as_dropped() -> None:
    bus = SlowBus(delay=10.0)
    outcomes = publisher(bus, in_flight=4)
    for _ in range(6):
        outcomes(record())
    await asyncio.sleep(0.01)  # four are in flight, two wait
    await outcomes.close(drain_timeout=0.05)
    assert (outcomes.published, outcomes.dropped) == (0, 6)
