"""``POST /v1/events`` and ``GET /v1/events``: CloudEvents sent with the official SDK, in every
mode, recorded per tenant with their status; malformed events refused naming the attribute."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from spine.events.cloudevent import BATCH_CONTENT_TYPE, dedupe_id
from spine.events.subjects import event_subject
from support.fake_models import FakeModelServer
from support.knowledge import (
    clear_tenants,
    delete_event_streams,
    event_consumers,
    eventually,
    knowledge,
)
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

HIRED = "com.example.person.hired"


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    await delete_event_streams(services.nats_url)
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge()
    ) as running:
        await clear_tenants(running.platform, "acme", "globex")
        yield running


def hired(person: Any = 1, company: str = "c1", **attributes: Any) -> SdkEvent:
    return SdkEvent(
        attributes={"type": HIRED, "source": "/hr", "id": uuid.uuid4().hex, **attributes},
        data={"person": {"id": person, "name": f"P{person}"}, "company": {"id": company}},
    )


async def post(client: httpx.AsyncClient, message: Any) -> httpx.Response:
    return await client.post("/v1/events", content=message.body, headers=message.headers)


async def events_of(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def test_structured_binary_and_batch_events_from_the_sdk_are_accepted_and_mapped(
    spine: RunningPlatform,
) -> None:
    structured = hired(1)
    binary = hired(2)
    batch = [hired(3), hired(4, company="c2")]

    answer = await post(spine.client, to_structured(structured, JSONFormat()))
    assert answer.status_code == 202, answer.text
    assert answer.json()["events"][0]["key"] == dedupe_id("acme", "/hr", structured.get_id())
    answer = await post(spine.client, to_binary(binary, JSONFormat()))
    assert answer.status_code == 202, answer.text
    body = b"[" + b",".join(JSONFormat().write(e) for e in batch) + b"]"
    answer = await spine.client.post(
        "/v1/events", content=body, headers={"Content-Type": BATCH_CONTENT_TYPE}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2

    listed = await events_of(spine.client)
    assert {e["event_id"] for e in listed} == {e.get_id() for e in [structured, binary, *batch]}
    assert {e["status"] for e in listed} == {"pending"}
    binary_entry = next(e for e in listed if e["event_id"] == binary.get_id())
    assert binary_entry["event"]["data"]["person"]["id"] == 2
    assert binary_entry["event"]["spinetenant"] == "acme"

    async with event_consumers(spine.platform):
        listed = await eventually(
            lambda: events_of(spine.client),
            lambda rows: all(r["status"] == "mapped" for r in rows),
        )
    assert len(listed) == 4
    node = await spine.client.get("/v1/graph/nodes/Person:2")
    assert node.status_code == 200, node.text
    assert node.json()["properties"]["name"] == "P2"
    assert node.json()["properties"]["event_id"] == binary.get_id()


async def test_a_repeated_event_is_one_event(spine: RunningPlatform) -> None:
    event = hired(7)
    first = await post(spine.client, to_structured(event, JSONFormat()))
    again = await post(spine.client, to_structured(event, JSONFormat()))
    assert first.json()["events"][0]["duplicate"] is False
    assert again.json()["events"][0]["duplicate"] is True
    assert len(await events_of(spine.client)) == 1
    info = await spine.platform.bus.js.stream_info("EVENTS")
    assert info.state.messages == 1


async def test_a_batch_repeating_an_event_holds_it_once_and_marks_the_repeat(
    spine: RunningPlatform,
) -> None:
    event = hired(8)
    repeat = SdkEvent(
        attributes=event.get_attributes(),
        data={"person": {"id": 8, "name": "Someone else"}, "company": {"id": "c1"}},
    )
    body = b"[" + b",".join(JSONFormat().write(e) for e in (event, repeat)) + b"]"

    answer = await spine.client.post(
        "/v1/events", content=body, headers={"Content-Type": BATCH_CONTENT_TYPE}
    )

    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2  # both accepted, as two requests would be
    assert [e["duplicate"] for e in answer.json()["events"]] == [False, True]
    assert len(await events_of(spine.client)) == 1
    info = await spine.platform.bus.js.stream_info("EVENTS")
    assert info.state.messages == 1
    stored = await spine.platform.bus.js.get_last_msg("EVENTS", event_subject("acme", HIRED))
    assert stored.data is not None
    assert json.loads(stored.data)["data"] == event.get_data()  # the first occurrence


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "1.0", "source": "/s", "type": "t"}, "id"),
        ({"specversion": "1.0", "id": "", "source": "/s", "type": "t"}, "id"),
        ({"specversion": "1.0", "id": "1", "type": "t"}, "source"),
        ({"specversion": "1.0", "id": "1", "source": "/s"}, "type"),
        (
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "yesterday"},
            "time",
        ),
        (
            {
                "specversion": "1.0",
                "id": "1",
                "source": "/s",
                "type": "t",
                "time": "2026-01-01T00:00:00",
            },
            "time",
        ),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "Bad-Ext": "x"}, "Bad-Ext"),
        (
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "spinetenant": "other"},
            "spinetenant",
        ),
        (
            {
                "specversion": "1.0",
                "id": "1",
                "source": "/s",
                "type": HIRED,
                "data": {"person": {}, "company": {"id": "c1"}},
            },
            "data.person.id",
        ),
    ],
)
async def test_a_malformed_event_is_a_400_naming_the_attribute(
    spine: RunningPlatform, body: dict[str, Any], field: str
) -> None:
    response = await spine.client.post(
        "/v1/events",
        content=json.dumps(body),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert field.split(".")[0] in error["message"]
    assert await events_of(spine.client) == []


async def test_bad_bodies_and_batches_are_refused_whole(spine: RunningPlatform) -> None:
    not_json = await spine.client.post(
        "/v1/events", content=b"{nope", headers={"Content-Type": "application/cloudevents+json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["field"] == "body"
    good = json.loads(JSONFormat().write(hired(1)))
    batch = [good, {**good, "id": "x2", "source": ""}]
    response = await spine.client.post(
        "/v1/events", content=json.dumps(batch), headers={"Content-Type": BATCH_CONTENT_TYPE}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "[1].source"
    assert await events_of(spine.client) == []  # all or nothing
    binary = await spine.client.post(
        "/v1/events",
        content=b"{}",
        headers={"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"},
    )
    assert binary.status_code == 400
    assert binary.json()["error"]["field"] == "id"
    text = await spine.client.post(
        "/v1/events", content=b"hi", headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 400
    assert text.json()["error"]["field"] == "Content-Type"


async def test_unmapped_and_unkeyed_events_are_stored_and_marked(spine: RunningPlatform) -> None:
    unmapped = SdkEvent(
        attributes={"type": "com.example.unknown", "source": "/x", "id": "u1"}, data={"a": 1}
    )
    unkeyed = SdkEvent(
        attributes={"type": "com.example.person.updated", "source": "/x", "id": "k1"},
        data={"name": "no id"},
    )
    for event in (unmapped, unkeyed):
        assert (await post(spine.client, to_structured(event, JSONFormat()))).status_code == 202
    async with event_consumers(spine.platform):
        rows = await eventually(
            lambda: events_of(spine.client),
            lambda rows: len(rows) == 2 and all(r["status"] != "pending" for r in rows),
        )
    by_id = {r["event_id"]: r for r in rows}
    assert by_id["u1"]["status"] == "unmapped"
    assert "no mapping" in by_id["u1"]["reason"]
    assert by_id["k1"]["status"] == "dead_lettered"
    assert "data.id is missing" in by_id["k1"]["reason"]
    only = await events_of(spine.client, status="unmapped")
    assert [r["event_id"] for r in only] == ["u1"]
    # The dead letter is on EVENTS_DLQ with the reason and the event.
    dead = await spine.platform.bus.js.get_msg("EVENTS_DLQ", 1)
    assert dead.data is not None
    letter = json.loads(dead.data)
    assert "data.id is missing" in letter["reason"]
    assert letter["event"]["id"] == "k1"
    assert letter["tenant"] == "acme"


async def test_events_published_straight_to_nats_follow_the_subject_tenant(
    spine: RunningPlatform, services: Any
) -> None:
    other = await spine.new_key("globex")
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    plain = json.loads(JSONFormat().write(hired(11)))
    await js.publish(f"spine.events.acme.{HIRED}", json.dumps(plain).encode())
    lying = json.loads(JSONFormat().write(hired(12)))
    lying["spinetenant"] = "globex"
    await js.publish(f"spine.events.acme.{HIRED}", json.dumps(lying).encode())
    await js.publish("spine.events.acme.junk", b"not json")
    await nc.close()

    async with event_consumers(spine.platform):
        rows = await eventually(
            lambda: events_of(spine.client),
            lambda rows: {r["status"] for r in rows} == {"mapped", "dead_lettered"},
        )
    by_id = {r["event_id"]: r for r in rows}
    assert by_id[plain["id"]]["status"] == "mapped"
    assert by_id[lying["id"]]["status"] == "dead_lettered"
    assert "globex" in by_id[lying["id"]]["reason"]
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {other}"}
    ) as globex:
        assert await events_of(globex) == []
        missing = await globex.get("/v1/graph/nodes/Person:11")
        assert missing.status_code == 404
    info = await spine.platform.bus.js.stream_info("EVENTS_DLQ")
    assert info.state.messages == 2  # the liar and the junk


async def test_binary_mode_events_on_nats_are_read_from_their_ce_headers(
    spine: RunningPlatform, services: Any
) -> None:
    # The CloudEvents NATS binding (NATS 2.2+) puts the attributes in ce-* headers, as the Go
    # SDK publishes them; they were dead-lettered as "not JSON" before.
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    good = to_binary(hired(31, company="c3"), JSONFormat())
    await js.publish(f"spine.events.acme.{HIRED}", good.body, headers=dict(good.headers))
    bad = {"ce-specversion": "1.0", "ce-type": HIRED, "ce-source": "/hr"}  # no ce-id
    await js.publish(f"spine.events.acme.{HIRED}", b'{"person": {"id": 32}}', headers=bad)
    await nc.close()

    async with event_consumers(spine.platform):
        rows = await eventually(
            lambda: events_of(spine.client),
            lambda rows: len(rows) == 2 and all(r["status"] != "pending" for r in rows),
        )
    statuses = sorted((r["status"], r["reason"] or "") for r in rows)
    assert statuses[0] == ("dead_lettered", "id: is required"), statuses
    assert statuses[1][0] == "mapped", statuses
    person = await spine.client.get("/v1/graph/nodes/Person:31")
    assert person.status_code == 200, person.text
    assert person.json()["properties"]["name"] == "P31"


async def test_tenants_see_only_their_own_events(spine: RunningPlatform) -> None:
    other = await spine.new_key("globex")
    await post(spine.client, to_structured(hired(21), JSONFormat()))
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {other}"}
    ) as globex:
        await post(globex, to_structured(hired(22), JSONFormat()))
        theirs = await events_of(globex)
        ours = await events_of(spine.client)
        assert len(theirs) == len(ours) == 1
        assert theirs[0]["id"] != ours[0]["id"]
        assert (await globex.get(f"/v1/events/{ours[0]['id']}")).status_code == 404
        assert (await spine.client.get(f"/v1/events/{ours[0]['id']}")).status_code == 200
