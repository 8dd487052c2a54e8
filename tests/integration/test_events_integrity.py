"""One event, one key, one outcome: a msg id squatted on NATS, repeats with other content,
and invalid or oversize events on NATS each leave the row and graph they should."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
import sqlalchemy as sa

from spine.events.cloudevent import STRUCTURED_CONTENT_TYPE, dedupe_id, parse_structured
from spine.events.log import ReceivedEvent
from spine.events.streams import EVENTS_STREAM, INGEST_CONSUMER
from spine.events.subjects import event_subject
from spine.platform.schema import EventRow, utcnow
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
UPDATED = "com.example.person.updated"


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


def hire(event_id: str, person: int, name: str, *, source: str = "/hr") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": HIRED,
        "time": "2026-03-01T00:00:00Z",
        "data": {"person": {"id": person, "name": name}, "company": {"id": "c1"}},
    }


async def post(client: httpx.AsyncClient, event: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(
        "/v1/events", content=json.dumps(event), headers={"Content-Type": STRUCTURED_CONTENT_TYPE}
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json()["events"][0])


async def events_of(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/v1/events", params={"limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def settled(spine: RunningPlatform, count: int) -> list[dict[str, Any]]:
    async with event_consumers(spine.platform):
        return await eventually(
            lambda: events_of(spine.client),
            lambda rows: len(rows) >= count and all(r["status"] != "pending" for r in rows),
        )


async def publish_on_nats(
    services: Any, subject: str, payloads: list[bytes], headers: dict[str, str] | None = None
) -> None:
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    for payload in payloads:
        await js.publish(subject, payload, headers=headers)
    await nc.close()


async def name_of(spine: RunningPlatform, person: int) -> str:
    node = await spine.client.get(f"/v1/graph/nodes/Person:{person}")
    assert node.status_code == 200, node.text
    return str(node.json()["properties"]["name"])


async def stream_messages(spine: RunningPlatform) -> int:
    return int((await spine.platform.bus.js.stream_info(EVENTS_STREAM)).state.messages)


# -- a Nats-Msg-Id squatted by another tenant ------------------------------------------------


async def test_another_tenants_msg_id_does_not_block_an_http_event(
    spine: RunningPlatform, services: Any
) -> None:
    # globex may publish only on its own subjects, but may set any Nats-Msg-Id: here the
    # (public, deterministic) key of acme's next invoice.
    squatted = dedupe_id("acme", "/billing", "invoice-1001")
    await publish_on_nats(
        services, "spine.events.globex.junk", [b"junk"], headers={"Nats-Msg-Id": squatted}
    )
    invoice = hire("invoice-1001", 41, "Paid", source="/billing")

    answer = await post(spine.client, invoice)

    assert answer["key"] == squatted
    assert answer["duplicate"] is False  # its first submission
    rows = await settled(spine, 1)
    mine = next(r for r in rows if r["key"] == squatted)
    assert mine["status"] == "mapped"
    assert await name_of(spine, 41) == "Paid"
    # A true repeat is still a duplicate, and is not published again.
    before = await stream_messages(spine)
    again = await post(spine.client, invoice)
    assert again["duplicate"] is True
    assert await stream_messages(spine) == before


async def test_an_event_the_tenant_published_on_nats_already_is_a_duplicate_over_http(
    spine: RunningPlatform, services: Any
) -> None:
    event = {**hire("own-1", 36, "Same"), "spinetenant": "acme"}
    key = dedupe_id("acme", "/hr", "own-1")
    await publish_on_nats(
        services, event_subject("acme", HIRED), [json.dumps(event).encode()], {"Nats-Msg-Id": key}
    )

    answer = await post(spine.client, event)

    assert answer["duplicate"] is True
    assert await stream_messages(spine) == 1
    rows = await settled(spine, 1)
    assert [(r["key"], r["status"]) for r in rows] == [(key, "mapped")]


async def test_another_version_on_nats_under_the_key_does_not_block_an_http_event(
    spine: RunningPlatform, services: Any
) -> None:
    # The tenant's own NATS publisher sent other content under the event's key, not yet
    # ingested: the HTTP event's row comes first, so the HTTP event is the one kept.
    key = dedupe_id("acme", "/hr", "own-2")
    other = json.dumps(hire("own-2", 37, "On NATS")).encode()
    await publish_on_nats(services, event_subject("acme", HIRED), [other], {"Nats-Msg-Id": key})

    answer = await post(spine.client, hire("own-2", 37, "Over HTTP"))

    assert answer["duplicate"] is False
    rows = await settled(spine, 1)
    assert [(r["key"], r["status"]) for r in rows] == [(key, "mapped")]
    assert rows[0]["event"]["data"]["person"]["name"] == "Over HTTP"
    assert await name_of(spine, 37) == "Over HTTP"


async def test_a_retry_after_a_failure_between_recording_and_publishing_runs_once(
    spine: RunningPlatform,
) -> None:
    # The request that recorded this row failed before it published; the retries carry no
    # time, so each request's copy would get another one.
    event = {k: v for k, v in hire("retry-1", 42, "Once").items() if k != "time"}
    stamped = parse_structured(event).with_attributes(
        spinetenant="acme", time="2026-03-01T08:00:00Z"
    )
    key = dedupe_id("acme", "/hr", "retry-1")
    await spine.platform.knowledge.log.record(
        [ReceivedEvent(key=key, tenant="acme", event=stamped)]
    )

    first = await post(spine.client, event)
    second = await post(spine.client, event)

    assert first["duplicate"] is True and second["duplicate"] is True  # its row was there
    assert await stream_messages(spine) == 1
    stored = await spine.platform.bus.js.get_last_msg(EVENTS_STREAM, event_subject("acme", HIRED))
    assert stored.data is not None
    assert json.loads(stored.data)["time"] == "2026-03-01T08:00:00Z"  # as recorded
    rows = await settled(spine, 1)
    assert [(r["key"], r["status"]) for r in rows] == [(key, "mapped")]


async def test_an_event_whose_publish_failed_is_sent_again_by_the_sweeper(
    spine: RunningPlatform,
) -> None:
    # The request recorded the row, then NATS was away (503) and the client never retried:
    # the row stayed pending for good.
    stamped = parse_structured(hire("lost-1", 43, "Found")).with_attributes(spinetenant="acme")
    key = dedupe_id("acme", "/hr", "lost-1")
    await spine.platform.knowledge.log.record(
        [ReceivedEvent(key=key, tenant="acme", event=stamped)]
    )
    intake = spine.platform.knowledge.intake
    assert await intake.resend_pending(older_than=60) == 0  # too young: may be on its way
    assert await intake.resend_pending(older_than=0) == 1
    assert await intake.resend_pending(older_than=0) == 1  # still pending: JetStream drops it
    assert await stream_messages(spine) == 1
    rows = await settled(spine, 1)
    assert [(r["key"], r["status"]) for r in rows] == [(key, "mapped")]
    assert await name_of(spine, 43) == "Found"
    assert await intake.resend_pending(older_than=0) == 0


# -- a repeated key with other content -------------------------------------------------------


async def test_on_nats_the_first_event_with_a_key_wins_and_a_replay_keeps_it(
    spine: RunningPlatform, services: Any
) -> None:
    first, second = hire("n-1", 31, "First"), hire("n-1", 31, "Second")
    await publish_on_nats(
        services,
        event_subject("acme", HIRED),
        [json.dumps(first).encode(), json.dumps(second).encode()],
    )

    rows = await settled(spine, 1)

    assert len(rows) == 1
    assert rows[0]["status"] == "mapped"
    assert rows[0]["event"]["data"]["person"]["name"] == "First"
    assert await name_of(spine, 31) == "First"  # the row and the graph agree

    # A replay delivers both again: the first is ingested again, the second left out again.
    await clear_tenants(spine.platform, "acme")
    await spine.platform.bus.js.delete_consumer(EVENTS_STREAM, INGEST_CONSUMER)
    await spine.platform.layout.ensure(spine.platform.bus.js)
    async with event_consumers(spine.platform):
        await eventually(
            lambda: spine.client.get("/v1/graph/nodes/Person:31"),
            lambda node: node.status_code == 200,
        )
    assert await name_of(spine, 31) == "First"
    assert [r["status"] for r in await events_of(spine.client)] == ["mapped"]


async def test_an_event_sent_over_http_is_not_overwritten_by_a_nats_repeat(
    spine: RunningPlatform, services: Any
) -> None:
    answer = await post(spine.client, hire("h-1", 32, "Over HTTP"))
    await publish_on_nats(
        services, event_subject("acme", HIRED), [json.dumps(hire("h-1", 32, "On NATS")).encode()]
    )

    rows = await settled(spine, 1)

    assert [(r["key"], r["status"]) for r in rows] == [(answer["key"], "mapped")]
    assert await name_of(spine, 32) == "Over HTTP"


async def test_an_event_is_its_own_repeat_whatever_the_database_makes_of_its_numbers(
    spine: RunningPlatform,
) -> None:
    # PostgreSQL's JSON gives 1e300 back as an integer and 1.0 as 1.0: still the same event.
    data = {"id": 35, "name": "Numbers", "big": 1e300, "one": 1.0, "tiny": 5e-324, "n": -0.0}
    event = {**hire("num-1", 35, ""), "type": UPDATED, "data": data}
    answer = await post(spine.client, event)

    rows = await settled(spine, 1)

    assert [(r["key"], r["status"]) for r in rows] == [(answer["key"], "mapped")]
    assert await name_of(spine, 35) == "Numbers"


# -- invalid and oversize events on NATS -----------------------------------------------------


def raw_event(event_id: str, tail: str) -> bytes:
    head = f'{{"specversion":"1.0","id":"{event_id}","source":"/x","type":"{UPDATED}"'
    return (head + tail + "}").encode()


INVALID_ON_NATS = [
    (raw_event("nul", ',"data":{"id":1,"name":"a\\u0000b"}'), "NUL"),
    (raw_event("surrogate", ',"data":{"id":1,"name":"\\ud800"}'), "surrogate"),
    (raw_event("bigint", ',"data":{"id":1,"n":18446744073709551616}'), "64 bits"),
    (raw_event("inf", ',"data":{"id":1,"n":1e999}'), "infinite"),
    (raw_event("nan", ',"data":{"id":1,"n":NaN}'), "infinite"),
    (raw_event("deep", ',"data":' + "[" * 70 + "]" * 70), "nested"),
    (raw_event("yesterday", ',"time":"yesterday"'), "RFC 3339"),
    (raw_event("epoch", ',"time":1700000000'), "RFC 3339"),
    (raw_event("b\\u001fc", ""), "control characters"),
    (b'{"specversion":"1.0","id":5,"source":"/x","type":"t"}', "id"),
    (b'{"specversion":"1.0","id":"\xff\xfe","source":"/x","type":"t"}', "JSON"),
]


async def test_invalid_events_on_nats_are_dead_lettered_with_a_row_saying_why(
    spine: RunningPlatform, services: Any
) -> None:
    subject = event_subject("acme", UPDATED)
    await publish_on_nats(services, subject, [payload for payload, _ in INVALID_ON_NATS])

    rows = await settled(spine, len(INVALID_ON_NATS))

    assert len(rows) == len(INVALID_ON_NATS)
    assert {r["status"] for r in rows} == {"dead_lettered"}
    reasons = [r["reason"] for r in rows]
    for _, words in INVALID_ON_NATS:
        assert any(words in reason for reason in reasons), (words, reasons)
    by_event_id = {r["event_id"]: r for r in rows}
    assert by_event_id["yesterday"]["key"] == dedupe_id("acme", "/x", "yesterday")
    info = await spine.platform.bus.js.stream_info("EVENTS_DLQ")
    assert info.state.messages == len(INVALID_ON_NATS)


async def test_an_event_over_the_size_limit_on_nats_is_dead_lettered(
    spine: RunningPlatform, services: Any
) -> None:
    limit = spine.settings.knowledge.max_event_bytes
    big = hire("big-1", 33, "x" * (limit + 1000))
    over_http = await spine.client.post(
        "/v1/events", content=json.dumps(big), headers={"Content-Type": STRUCTURED_CONTENT_TYPE}
    )
    assert over_http.status_code == 413
    await publish_on_nats(services, event_subject("acme", HIRED), [json.dumps(big).encode()])

    rows = await settled(spine, 1)

    assert [(r["event_id"], r["status"]) for r in rows] == [("big-1", "dead_lettered")]
    assert f"over the limit of {limit}" in rows[0]["reason"]
    assert (await spine.client.get("/v1/graph/nodes/Person:33")).status_code == 404


# -- refused over HTTP, naming the attribute -------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "b\u001fc", "source": "/a"}, "id"),
        ({"id": "c", "source": "/a\u001fb"}, "source"),
        ({"time": 1700000000}, "time"),
        ({"time": "1700000000"}, "time"),
        ({"data_base64": "!!notbase64", "data": None}, "data_base64"),
        ({"subject": ""}, "subject"),
    ],
)
async def test_events_that_would_be_misread_are_refused(
    spine: RunningPlatform, changes: dict[str, Any], field: str
) -> None:
    event = {**hire("r-1", 34, "R"), **changes}
    answer = await spine.client.post(
        "/v1/events",
        content=json.dumps({k: v for k, v in event.items() if v is not None}),
        headers={"Content-Type": STRUCTURED_CONTENT_TYPE},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == field
    assert await events_of(spine.client) == []


async def test_binary_mode_refuses_ids_that_are_not_percent_encoded_utf8(
    spine: RunningPlatform,
) -> None:
    for value in ("z%FF", "z%FE"):
        answer = await spine.client.post(
            "/v1/events",
            content=b'{"id": 1}',
            headers={
                "ce-specversion": "1.0",
                "ce-id": value,
                "ce-source": "/s",
                "ce-type": UPDATED,
                "Content-Type": "application/json",
            },
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["field"] == "id"
    assert await events_of(spine.client) == []


async def test_remap_settles_a_row_stored_before_a_check_it_now_fails(
    spine: RunningPlatform,
) -> None:
    # A row stored with a control character in its id (refused since) made remap a 500.
    envelope = {**hire("old\u001fid", 7, "Old"), "spinetenant": "acme"}
    async with spine.platform.db.transaction() as conn:
        await conn.execute(
            sa.insert(EventRow).values(
                id="f" * 64,
                tenant="acme",
                source="/hr",
                event_id="old\u001fid",
                type=HIRED,
                envelope=envelope,
                status="unmapped",
                received_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    answer = await spine.client.post("/v1/events/remap", json={"type": HIRED})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"remapped": 0}
    row = (await spine.client.get(f"/v1/events/{'f' * 64}")).json()
    assert row["status"] == "dead_lettered"
    assert "no longer a valid CloudEvent" in row["reason"]
