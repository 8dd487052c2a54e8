"""Triggers: a matching event becomes one agent task, however often it is delivered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spine.events.streams import EVENTS_STREAM, TRIGGER_CONSUMER
from spine.platform.app.wiring import Platform
from support.fake_models import FakeModelServer
from support.knowledge import (
    consumed_all,
    delete_event_streams,
    event_consumers,
    eventually,
    knowledge,
)
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

RULES = """
triggers:
  - name: welcome
    event: com.example.person.*
    when:
      data.role: engineer
    agent: chat
    priority: low
    input:
      prompt: "Welcome {{ data.person.name }} to {{ data.company.id }} ({{ subject }})"
"""


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    await delete_event_streams(services.nats_url)
    (tmp_path / "rules.yaml").write_text(RULES)
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge(triggers_dir=tmp_path)
    ) as running:
        yield running


def hired(event_id: str, role: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/hr",
        "type": "com.example.person.hired",
        "subject": "onboarding",
        "data": {"person": {"id": 5, "name": "Dana"}, "company": {"id": "c1"}, "role": role},
    }


async def tasks(spine: RunningPlatform) -> list[dict[str, Any]]:
    return list((await spine.client.get("/v1/tasks")).json()["data"])


async def test_a_trigger_fires_once_per_event_even_when_redelivered(
    spine: RunningPlatform,
) -> None:
    events = [hired("e1", "engineer"), hired("e2", "sales")]
    answer = await spine.client.post(
        "/v1/events",
        content=json.dumps(events),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert answer.status_code == 202, answer.text
    async with event_consumers(spine.platform):
        made = await eventually(lambda: tasks(spine), lambda t: len(t) == 1)
    task = made[0]
    assert task["agent"] == "chat"
    assert task["priority"] == "low"
    assert task["input"] == {"prompt": "Welcome Dana to c1 (onboarding)"}
    assert task["metadata"]["trigger"] == "welcome"
    assert task["metadata"]["event"]["id"] == "e1"

    # Every event delivered again (a fresh consumer replays the stream), and the same event
    # published again past JetStream's dedupe: still one task.
    js = spine.platform.bus.js
    await js.delete_consumer(EVENTS_STREAM, TRIGGER_CONSUMER)
    await spine.platform.layout.ensure(js)
    await js.publish(
        "spine.events.acme.com.example.person.hired",
        json.dumps({**hired("e1", "engineer"), "spinetenant": "acme"}).encode(),
        headers={"Nats-Msg-Id": "another-id"},
    )
    async with event_consumers(spine.platform):
        await eventually(
            lambda: consumed_all(spine.platform, EVENTS_STREAM, TRIGGER_CONSUMER), bool
        )
    assert [t["id"] for t in await tasks(spine)] == [task["id"]]


async def test_a_trigger_fires_only_on_events_received_after_it_and_remap_fires_none(
    spine: RunningPlatform, tmp_path: Path
) -> None:
    # Before: a worker with no mapping for the type and no triggers (an empty folder).
    empty = tmp_path / "nothing"
    empty.mkdir()
    knowledge_before = spine.settings.knowledge.model_copy(
        update={"mappings_dir": empty, "triggers_dir": None}
    )
    before = Platform.build(
        spine.settings.model_copy(update={"knowledge": knowledge_before}), name="before"
    )
    await before.start()
    try:
        answer = await spine.client.post("/v1/events", json=hired("old", "engineer"))
        assert answer.status_code == 202, answer.text
        old = answer.json()["events"][0]
        assert old["event_id"] == old["id"] == "old"  # `id`: the deprecated name of event_id
        key = old["key"]
        async with event_consumers(before):
            await eventually(
                lambda: spine.client.get(f"/v1/events/{key}"),
                lambda r: r.json()["status"] == "unmapped",
            )
    finally:
        await before.close()
    entry = (await spine.client.get(f"/v1/events/{key}")).json()
    assert (entry["key"], entry["id"], entry["event_id"]) == (key, key, "old")

    # Now the mappings and the trigger are in force: a new event fires it, the old one never.
    async with event_consumers(spine.platform):
        await spine.client.post("/v1/events", json=hired("new", "engineer"))
        made = await eventually(lambda: tasks(spine), lambda t: len(t) == 1)
        assert made[0]["metadata"]["event"]["id"] == "new"
        assert (await spine.client.get(f"/v1/events/{key}")).json()["status"] == "unmapped"

        # The old event is mapped once asked for, and still fires nothing.
        remapped = await spine.client.post("/v1/events/remap", json={})
        assert remapped.status_code == 202, remapped.text
        assert remapped.json() == {"remapped": 1}
        await eventually(
            lambda: spine.client.get(f"/v1/events/{key}"),
            lambda r: r.json()["status"] == "mapped",
        )
        await eventually(
            lambda: consumed_all(spine.platform, EVENTS_STREAM, TRIGGER_CONSUMER), bool
        )
    assert [t["id"] for t in await tasks(spine)] == [made[0]["id"]]
    assert (await spine.client.post("/v1/events/remap", json={})).json() == {"remapped": 0}
