"""Helpers for knowledge-layer tests: example folders, a clean EVENTS stream, the consumers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import nats

from spine.platform.app.wiring import Platform

EXAMPLES = Path(__file__).resolve().parents[2] / "graph" / "spine" / "graph" / "examples"
EVENT_STREAMS = ("EVENTS", "EVENTS_DLQ")

T = TypeVar("T")

# The example HR events the graph tests and the console's browser tests draw.
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def hired(person: int, company: str, day: int, name: str) -> dict[str, Any]:
    """A ``person.hired`` CloudEvent: ``person`` joins ``company`` ``day`` days after T0."""
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/hr",
        "type": "com.example.person.hired",
        "time": (T0 + timedelta(days=day)).isoformat(),
        "data": {
            "person": {"id": person, "name": name},
            "company": {"id": company, "name": company.upper()},
        },
    }


def met(a: int, b: int) -> dict[str, Any]:
    """A ``person.met`` CloudEvent between persons ``a`` and ``b`` at T0."""
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/hr",
        "type": "com.example.person.met",
        "time": T0.isoformat(),
        "data": {"a": a, "b": b, "where": "conf"},
    }


def knowledge(**extra: Any) -> dict[str, Any]:
    """The ``knowledge`` settings section of a test: the example folders, short backoffs."""
    return {
        "mappings_dir": EXAMPLES / "mappings",
        "schemas_dir": EXAMPLES / "schemas",
        "ingest_backoff": [0.2],
        "ingest_max_attempts": 3,
        **extra,
    }


def tenant_name(prefix: str = "t") -> str:
    """A tenant no other test uses: the graph server is shared by the session."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def delete_event_streams(nats_url: str) -> None:
    """Delete EVENTS and EVENTS_DLQ, so no event of an earlier test is delivered."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for stream in EVENT_STREAMS:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    await nc.close()


@contextlib.asynccontextmanager
async def event_consumers(platform: Platform) -> AsyncIterator[None]:
    """Run graph ingestion and triggers (a worker's event consumers) for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(platform.run_event_consumers(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def consumed_all(platform: Platform, stream: str, consumer: str) -> bool:
    """Tell whether ``consumer`` has acked every message ``stream`` holds.

    Not ``num_pending == 0``: nats-server counts a stored message into its consumers' pending
    asynchronously, so right after a publish (on a busy machine, ~3 % of the time here) the
    consumer can still say 0 pending and 0 awaiting an ack. The ack floor against the stream's
    last sequence is exact (the consumers here take every subject of their stream).
    """
    js = platform.bus.js
    last = (await js.stream_info(stream)).state.last_seq
    info = await js.consumer_info(stream, consumer)
    return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq >= last)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    timeout: float = 20.0,
    every: float = 0.1,
) -> T:
    """Call ``probe`` until ``check`` accepts its value; return that value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(every)


async def clear_tenants(platform: Platform, *tenants: str) -> None:
    """Delete the graph of some tenants (the graph server outlives each test)."""
    store = platform.knowledge.store
    assert store is not None
    for tenant in tenants:
        await store.write([("MATCH (n {tenant: $tenant}) DETACH DELETE n", {"tenant": tenant})])
