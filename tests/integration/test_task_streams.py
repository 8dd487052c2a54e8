"""A task's progress stream (``GET /v1/tasks/{id}/events``) always ends, and waits on NATS.

- resumed after the final event, it sends that event again and ends at once;
- resumed after an event the task does not have, or beyond any event number, it is a 4xx;
- while it waits, it is woken by the NATS nudge of each new event, not by reading the
  database each second (the database is read for the stored events, once more a moment after
  it subscribed, then only as a slow safety net or when a nudge is missing);
- a task that ends while its stream subscribes (its nudge, published by a worker's
  connection, can miss a subscription the server does not show that connection yet) still
  ends the stream at once, not at the safety poll.

No worker runs: the tests move tasks through the store the worker uses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from spine.events.progress import ProgressFeed
from spine.events.subjects import progress_subject
from spine.platform.tasks import TaskEvent, TaskStore
from support.databases import create_database
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

CHAT = {"agent": "chat", "input": {"prompt": "hello"}}
BOUND = 10.0  # seconds a stream that should end at once may take before the test fails
ROUNDS = 3  # tasks ending as their stream subscribes


@pytest.fixture(scope="module")
async def spine(services: Any, fake_models: FakeModelServer) -> AsyncIterator[RunningPlatform]:
    database = create_database(services.database_url)
    async with running_platform(services, database, fake_models, workers=0) as running:
        yield running


async def finished_task(spine: RunningPlatform) -> str:
    """Submit a task and run it to ``succeeded`` through the store: events 1-3."""
    task = (await spine.client.post("/v1/tasks", json=CHAT)).json()
    store = spine.platform.tasks
    claim = await store.claim(task["id"], lease=30)
    await store.finish(task["id"], attempt=claim.attempt, state="succeeded", result={"text": "ok"})
    return str(task["id"])


async def read_stream(spine: RunningPlatform, path: str, **headers: str) -> list[dict[str, Any]]:
    """Read a stream to its end; fail if it does not end within the bound."""

    async def read() -> list[dict[str, Any]]:
        events = []
        async with spine.client.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        return events

    return await asyncio.wait_for(read(), BOUND)


async def test_a_stream_resumed_after_the_final_event_ends_at_once_with_it(
    spine: RunningPlatform,
) -> None:
    task_id = await finished_task(spine)
    everything = await read_stream(spine, f"/v1/tasks/{task_id}/events")
    assert [e["seq"] for e in everything] == [1, 2, 3]
    last = everything[-1]
    assert last["state"] == "succeeded"

    for resumed in (
        await read_stream(spine, f"/v1/tasks/{task_id}/events?after=3"),
        await read_stream(spine, f"/v1/tasks/{task_id}/events", **{"Last-Event-ID": "3"}),
    ):
        assert resumed == [last]
    # Resumed before the end: the rest, then the end.
    rest = await read_stream(spine, f"/v1/tasks/{task_id}/events?after=1")
    assert [e["seq"] for e in rest] == [2, 3]


@pytest.mark.parametrize(
    ("query", "headers", "status", "field"),
    [
        ("?after=4", {}, 400, "after"),
        ("?after=2147483647", {}, 400, "after"),
        ("?after=1099511627776", {}, 422, "after"),
        ("", {"Last-Event-ID": "4"}, 400, "Last-Event-ID"),
        ("", {"Last-Event-ID": "1099511627776"}, 400, "Last-Event-ID"),
    ],
)
async def test_resuming_beyond_the_stored_events_is_refused(
    spine: RunningPlatform, query: str, headers: dict[str, str], status: int, field: str
) -> None:
    task_id = await finished_task(spine)
    response = await spine.client.get(f"/v1/tasks/{task_id}/events{query}", headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


async def test_beyond_the_events_of_a_running_task_is_refused_too(spine: RunningPlatform) -> None:
    task = (await spine.client.post("/v1/tasks", json=CHAT)).json()  # one event: queued
    response = await spine.client.get(f"/v1/tasks/{task['id']}/events?after=2")
    assert response.status_code == 400, response.text


async def test_a_live_stream_is_woken_by_nudges_not_by_reading_the_database(
    spine: RunningPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = spine.platform.tasks
    task = (await spine.client.post("/v1/tasks", json=CHAT)).json()
    reads: list[int] = []
    real_events = store.events

    async def counted(task_id: str, **kwargs: Any) -> list[TaskEvent]:
        if task_id == task["id"]:
            reads.append(kwargs.get("after_seq", 0))
        return await real_events(task_id, **kwargs)

    monkeypatch.setattr(store, "events", counted)
    seen: list[TaskEvent] = []

    async def follow() -> None:
        async for event in spine.platform.feed.follow(task["id"], tenant="acme", after_seq=1):
            seen.append(event)

    following = asyncio.create_task(follow())
    try:
        for _ in range(200):  # subscribed, stored events read (and again once settled)
            if len(reads) >= 3:
                break
            await asyncio.sleep(0.02)
        assert reads == [0, 1, 1]  # the event resumed after, the ones after it, the same again

        claim = await store.claim(task["id"], lease=30)
        await store.append_event(task["id"], "step", {"n": 1})
        await store.finish(task["id"], attempt=claim.attempt, state="succeeded", result={})
        await asyncio.wait_for(following, BOUND)
    finally:
        following.cancel()
    assert [(e.seq, e.type) for e in seen] == [(2, "state"), (3, "step"), (4, "state")]
    assert seen[-1].is_final
    # Each new event came with its nudge: none was read from the database.
    assert reads == [0, 1, 1]


async def test_a_new_task_is_not_announced_its_later_events_are(
    spine: RunningPlatform, services: Any
) -> None:
    # No one can follow a task before its submit returned the id: its first event is read
    # from the database by whoever follows it later, and a nudge for it would reach no one.
    nudges: list[tuple[str, int]] = []
    nc = await nats.connect(services.nats_url)
    try:

        async def heard(msg: Msg) -> None:
            nudges.append((msg.subject, TaskEvent.model_validate_json(msg.data).seq))

        await nc.subscribe(progress_subject(">"), cb=heard)
        await nc.flush()
        task_id = await finished_task(spine)
        subject = progress_subject(task_id)
        for _ in range(250):
            if len([n for n in nudges if n[0] == subject]) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # a nudge for event 1, had one been sent, would be in by now
    finally:
        await nc.close()
    assert [seq for name, seq in nudges if name == subject] == [2, 3]


async def test_a_task_ending_while_its_stream_subscribes_ends_the_stream_at_once(
    spine: RunningPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's nudge is lost, as one published by another connection the moment after the
    # stream subscribed can be (nats-server does not show a new subscription to the publishes
    # of other connections at once: see ProgressFeed). The task ends right after the stream
    # read the stored events, so only a read after the subscription settled can find the end.
    silent_worker = TaskStore(spine.platform.db, announce=None)
    store = spine.platform.tasks
    feed = ProgressFeed(store, spine.platform.bus, safety_poll=60.0)
    real_events = store.events
    ending: dict[str, int] = {}

    async def then_the_task_ends(task_id: str, **kwargs: Any) -> list[TaskEvent]:
        found = await real_events(task_id, **kwargs)
        attempt = ending.pop(task_id, None)
        if attempt is not None:
            await silent_worker.finish(task_id, attempt=attempt, state="succeeded", result={})
        return found

    monkeypatch.setattr(store, "events", then_the_task_ends)
    for _ in range(ROUNDS):
        task = (await spine.client.post("/v1/tasks", json=CHAT)).json()
        ending[task["id"]] = (await silent_worker.claim(task["id"], lease=30)).attempt
        began = asyncio.get_running_loop().time()
        follow = feed.follow(task["id"], tenant="acme", after_seq=0)
        seen = await asyncio.wait_for(_all(follow), BOUND)
        assert asyncio.get_running_loop().time() - began < 2.0  # not the 60 s safety poll
        assert [e.seq for e in seen] == [1, 2, 3] and seen[-1].is_final


async def _all(events: AsyncIterator[TaskEvent]) -> list[TaskEvent]:
    return [event async for event in events]
