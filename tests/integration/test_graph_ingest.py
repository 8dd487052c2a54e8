"""Graph ingestion through the EVENTS stream: idempotent replays, superseded facts, failures."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from spine.events.streams import EVENTS_STREAM, INGEST_CONSUMER
from spine.graph.store import GraphError, GraphStore, Statement
from support.fake_models import FakeModelServer
from support.knowledge import (
    consumed_all,
    delete_event_streams,
    event_consumers,
    eventually,
    knowledge,
    tenant_name,
)
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    await delete_event_streams(services.nats_url)
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge(ingest_batch=200)
    ) as running:
        yield running


def event(kind: str, data: dict[str, Any], *, at: datetime, tenant: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/test",
        "type": f"com.example.person.{kind}",
        "time": at.isoformat(),
        "spinetenant": tenant,
        "data": data,
    }


def workload(tenant: str, count: int) -> list[dict[str, Any]]:
    """Hires (each person moves between companies), meetings and updates, ``count`` in all."""
    events = []
    for i in range(count):
        at = T0 + timedelta(minutes=i)
        person = i % 150
        if i % 3 == 0:
            data = {"person": {"id": person}, "company": {"id": f"c{i % 7}"}, "role": f"r{i}"}
            events.append(event("hired", data, at=at, tenant=tenant))
        elif i % 3 == 1:
            data = {"a": person, "b": (person * 7 + 1) % 150, "where": f"w{i % 5}"}
            events.append(event("met", data, at=at, tenant=tenant))
        else:
            data = {"id": person, "name": f"name-{i}", "email": f"p{person}@x"}
            events.append(event("updated", data, at=at, tenant=tenant))
    return events


async def publish(spine: RunningPlatform, events: Sequence[dict[str, Any]]) -> None:
    js = spine.platform.bus.js
    for item in events:
        await js.publish(
            f"spine.events.{item['spinetenant']}.{item['type']}",
            json.dumps(item).encode(),
            headers={"Nats-Msg-Id": item["id"]},
        )


async def drained(spine: RunningPlatform) -> bool:
    return await consumed_all(spine.platform, EVENTS_STREAM, INGEST_CONSUMER)


async def snapshot(store: GraphStore, tenant: str) -> tuple[dict[str, Any], list[Any]]:
    nodes = await store.read("MATCH (n {tenant: $t}) RETURN n", {"t": tenant})
    rels = await store.read(
        "MATCH (a {tenant: $t})-[r]->(b) RETURN a.uid AS a, type(r) AS type, b.uid AS b, r",
        {"t": tenant},
    )
    return (
        {r["n"].properties["uid"]: r["n"].properties for r in nodes.records},
        sorted(
            json.dumps([r["a"], r["type"], r["b"], r["r"].properties], sort_keys=True)
            for r in rels.records
        ),
    )


async def test_ingesting_the_same_1000_events_twice_gives_the_same_graph(
    spine: RunningPlatform,
) -> None:
    tenant = tenant_name()
    store = spine.platform.knowledge.store
    assert store is not None
    events = workload(tenant, 1000)
    await publish(spine, events)
    async with event_consumers(spine.platform):
        await eventually(lambda: drained(spine), bool, timeout=60)
    first = await snapshot(store, tenant)
    people = {uid for uid in first[0] if uid.startswith("Person:")}
    assert len(people) == 150
    assert len(first[0]) == 157  # 150 people, 7 companies
    assert len(first[1]) > 300

    # The same events published again are dropped by JetStream's dedupe ...
    await publish(spine, events)
    assert (await spine.platform.bus.js.stream_info(EVENTS_STREAM)).state.messages == 1000
    # ... and a full replay of the stream (a fresh consumer) writes the same graph.
    await spine.platform.bus.js.delete_consumer(EVENTS_STREAM, INGEST_CONSUMER)
    await spine.platform.layout.ensure(spine.platform.bus.js)
    async with event_consumers(spine.platform):
        await eventually(lambda: drained(spine), bool, timeout=60)
    again = await snapshot(store, tenant)
    assert len(again[0]) == len(first[0])
    assert len(again[1]) == len(first[1])
    assert again == first

    rows = await spine.platform.knowledge.log.list_page(tenant=tenant, limit=200)
    assert {row.status for row in rows.data} == {"mapped"}


async def test_stopping_the_consumers_gives_up_their_waiting_pulls_and_loses_no_event(
    spine: RunningPlatform,
) -> None:
    tenant = tenant_name("stop")
    stop = asyncio.Event()
    running = asyncio.create_task(spine.platform.run_event_consumers(stop))
    await asyncio.sleep(0.3)  # bound, and waiting in their pulls
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(running, 10)
    # The pulls wait 1 s for messages: a stop used to wait them out.
    assert time.monotonic() - began < 0.5

    # An event published while nobody consumes is ingested by the next consumers.
    hire = {"person": {"id": 1}, "company": {"id": "c1"}, "role": "r"}
    await publish(spine, [event("hired", hire, at=T0, tenant=tenant)])
    async with event_consumers(spine.platform):
        await eventually(lambda: drained(spine), bool, timeout=30)
    store = spine.platform.knowledge.store
    assert store is not None
    assert {"Person:1", "Company:c1"} <= set((await snapshot(store, tenant))[0])


async def test_a_later_fact_closes_the_earlier_one_whatever_order_events_come_in(
    spine: RunningPlatform,
) -> None:
    tenant = tenant_name()
    hires = [
        event(
            "hired",
            {"person": {"id": 1}, "company": {"id": f"c{k}"}},
            at=T0 + timedelta(days=k),
            tenant=tenant,
        )
        for k in (2, 0, 1)  # out of order
    ]
    await publish(spine, hires)
    async with event_consumers(spine.platform):
        await eventually(lambda: drained(spine), bool)
    explorer = spine.platform.knowledge.graph()
    chain = await explorer.store.read(
        "MATCH (:Person {tenant: $t, uid: 'Person:1'})-[r:WORKS_AT]->(c) "
        "RETURN c.uid AS c, r.valid_from AS f, r.valid_to AS t ORDER BY f",
        {"t": tenant},
    )
    day = 24 * 3600 * 1000
    start = int(T0.timestamp() * 1000)
    assert [(r["c"], r["f"], r["t"]) for r in chain.records] == [
        ("Company:c0", start, start + day),
        ("Company:c1", start + day, start + 2 * day),
        ("Company:c2", start + 2 * day, None),
    ]
    now = await explorer.neighbors("Person:1", tenant=tenant, types=["WORKS_AT"])
    assert {n.id for n in now.nodes} == {"Person:1", "Company:c2"}
    then = await explorer.neighbors(
        "Person:1", tenant=tenant, types=["WORKS_AT"], at=T0 + timedelta(hours=36)
    )
    assert {n.id for n in then.nodes} == {"Person:1", "Company:c1"}
    history = await explorer.neighbors("Person:1", tenant=tenant, history=True)
    assert len(history.edges) == 3
    closed = [e for e in history.edges if e.properties.get("valid_to")]
    assert all(e.properties["superseded_by"] for e in closed)


class PoisonStore:
    """The real store, refusing any write that touches ``Person:poison``."""

    def __init__(self, store: GraphStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def write(self, statements: Sequence[Statement]) -> None:
        if any("Person:poison" in json.dumps(params, default=str) for _, params in statements):
            raise GraphError("the graph server refused a write: poisoned")
        await self._store.write(statements)


async def test_a_failing_event_is_retried_then_dead_lettered_and_the_rest_go_on(
    spine: RunningPlatform,
) -> None:
    tenant = tenant_name()
    knowledge_layer = spine.platform.knowledge
    assert knowledge_layer.store is not None
    knowledge_layer.store = cast(GraphStore, PoisonStore(knowledge_layer.store))
    good = [event("updated", {"id": i, "name": f"n{i}"}, at=T0, tenant=tenant) for i in range(5)]
    poison = event("updated", {"id": "poison", "name": "x"}, at=T0, tenant=tenant)
    await publish(spine, [*good[:2], poison, *good[2:]])
    async with event_consumers(spine.platform):
        await eventually(lambda: drained(spine), bool, timeout=30)
    page = await knowledge_layer.log.list_page(tenant=tenant)
    by_id = {row.event_id: row for row in page.data}
    assert {by_id[e["id"]].status for e in good} == {"mapped"}
    dead = by_id[poison["id"]]
    assert dead.status == "dead_lettered"
    assert "poisoned" in (dead.reason or "")
    assert dead.attempts == 3
    letter = await spine.platform.bus.js.get_msg("EVENTS_DLQ", 1)
    assert letter.data is not None
    assert json.loads(letter.data)["event"]["id"] == poison["id"]
