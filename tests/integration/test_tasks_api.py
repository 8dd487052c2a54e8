"""The task backbone end to end: HTTP → database → JetStream → worker → fake model → result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
import sqlalchemy as sa

from spine.platform.metering.usage import UsageLedger
from spine.platform.schema import ModelCallRow
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, run_platform, running_platform
from support.settings import make_settings
from support.task_feed import sse_events as read_feed

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    async with running_platform(services, pg_url, models) as running:
        yield running


async def submit(
    spine: RunningPlatform, prompt: str, *, model: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Submit a chat task; a named model has no fallback (the tests set no chain)."""
    chat: dict[str, Any] = {"prompt": prompt} | ({"model": model} if model else {})
    response = await spine.client.post("/v1/tasks", json={"agent": "chat", "input": chat, **extra})
    assert response.status_code == 202, response.text
    return dict(response.json())


async def sse_events(spine: RunningPlatform, task_id: str, **headers: str) -> list[dict[str, Any]]:
    return await read_feed(spine.client, task_id, **headers)


async def test_a_task_runs_and_its_result_and_progress_are_visible(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(containing="capital of France", reply="Paris."))
    task = await submit(spine, "What is the capital of France?")
    assert task["state"] == "queued"
    assert task["links"]["events"] == f"/v1/tasks/{task['id']}/events"

    events = await sse_events(spine, task["id"])
    done = await spine.wait_for(task["id"])

    assert done["state"] == "succeeded"
    assert done["result"]["text"] == "Paris."
    assert done["attempts"] == 1
    assert done["started_at"] and done["finished_at"]
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["type"] == "model_call" and e["model"] == "llama3.2" for e in events)
    assert models.count(containing="capital of France") == 1


async def test_an_answer_that_cannot_be_stored_is_mended_and_kept_once(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    # Sent escaped (the fake server writes ASCII JSON): PostgreSQL refuses the NUL, UTF-8 the
    # lone surrogate. Stored as it came, every attempt would fail at the result's commit.
    models.add(Rule(containing="odd answer", reply="a\x00b \udfffc"))
    task = await submit(spine, "an odd answer")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["text"] == "a\ufffdb \ufffdc"
    assert done["attempts"] == 1
    assert models.count(containing="odd answer") == 1


async def test_sse_resumes_after_last_event_id(spine: RunningPlatform) -> None:
    task = await submit(spine, "resume me")
    await spine.wait_for(task["id"])
    everything = await sse_events(spine, task["id"])
    rest = await sse_events(spine, task["id"], **{"Last-Event-ID": "2"})
    assert [e["seq"] for e in rest] == [e["seq"] for e in everything if e["seq"] > 2]


async def test_sse_follows_live_events_of_a_running_task(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(containing="slow", reply="done slowly", latency=1.0))
    task = await submit(spine, "slow one")
    events = await sse_events(spine, task["id"])
    assert events[-1]["state"] == "succeeded"


async def test_transient_errors_are_retried_with_backoff(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    # A named model with no fallback chain: the router has nothing else to try, the task
    # is retried.
    models.add(Rule(containing="flaky", status=500, times=2))
    task = await submit(spine, "flaky call", model="llama3.2")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 3
    # The failed attempts' errors are in the task's events, not on the task that succeeded.
    assert done["error"] is None
    retries = [e for e in await sse_events(spine, task["id"]) if e.get("state") == "queued"]
    assert [e["error"]["type"] for e in retries[-2:]] == ["transient_error"] * 2
    assert models.count(containing="flaky") == 3


async def test_a_retry_waits_as_long_as_the_providers_429_asked(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    # The backoff alone (a fraction of a second in tests) retried into the same rate limit.
    models.add(Rule(containing="limited", status=429, retry_after=1.5, times=1))
    task = await submit(spine, "limited call", model="llama3.2")
    done = await spine.wait_for(task["id"])
    assert (done["state"], done["attempts"]) == ("succeeded", 2)
    retries = [e for e in await sse_events(spine, task["id"]) if e.get("state") == "queued"]
    assert retries[-1]["retry_in"] == 1.5
    assert retries[-1]["error"]["cause"] == "RateLimitError"


async def test_a_task_is_seen_finished_only_with_the_usage_of_its_calls(
    spine: RunningPlatform,
) -> None:
    for worker in spine.workers:  # the writer behind would wait a minute: the end must write
        worker.metered.usage = UsageLedger(worker.db, flush_interval=60.0)
    task = await submit(spine, "count this call")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "succeeded"
    async with spine.platform.db.transaction() as conn:
        calls = (
            await conn.execute(
                sa.select(ModelCallRow.model, ModelCallRow.outcome).where(
                    ModelCallRow.task_id == task["id"]
                )
            )
        ).all()
    assert [tuple(c) for c in calls] == [(done["result"]["model"], "ok")]
    # Written by the task's end, not left to the writer behind to write a second time.
    assert [worker.metered.usage.pending for worker in spine.workers] == [0]


async def test_agents_share_the_router_and_fall_back_within_one_attempt(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(containing="wobbly", model="llama3.2", status=500))
    task = await submit(spine, "wobbly call")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"]["model"] == "gpt-4o-mini"
    events = await sse_events(spine, task["id"])
    call = next(e for e in events if e["type"] == "model_call")
    assert call["fallback_path"] == ["llama3.2"]
    assert call["strategy"] == "local_first"
    usage = await spine.client.get("/v1/usage", params={"group_by": "model"})
    assert usage.status_code == 200, usage.text
    assert "gpt-4o-mini" in usage.text


async def test_permanent_error_fails_the_task_and_copies_it_to_the_dlq(
    spine: RunningPlatform,
    models: FakeModelServer,
    services: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models.add(Rule(containing="too long", status=400))
    task = await submit(spine, "a prompt far too long")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["retryable"] is False
    dead = await dlq_messages(services)
    assert [d["task_id"] for d in dead] == [task["id"]]
    assert json.loads(dead[0]["payload"])["task_id"] == task["id"]
    line = dead_letter_line(caplog, task["id"])
    assert line.startswith(f"task {task['id']} failed: {done['error']['type']}"), line
    assert line.endswith("; its message is copied to TASKS_DLQ (spine.dlq.tasks)"), line
    assert "None" not in line and "too long" not in line, line


async def test_a_task_naming_an_unknown_model_fails_with_a_readable_dead_letter_line(
    spine: RunningPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    task = await submit(spine, "hello", model="no-such-model")
    done = await spine.wait_for(task["id"])
    assert done["state"] == "failed"
    line = dead_letter_line(caplog, task["id"])
    assert line == (
        f"task {task['id']} failed: {done['error']['type']}; "
        "its message is copied to TASKS_DLQ (spine.dlq.tasks)"
    ), line


def dead_letter_line(caplog: pytest.LogCaptureFixture, task_id: str) -> str:
    """The worker's log line about the task's dead letter."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "spine.agents.worker" and "copied to" in r.getMessage()
    ]
    found = [line for line in lines if line.startswith(f"task {task_id} ")]
    assert len(found) == 1, lines
    return found[0]


async def test_poison_task_is_dead_lettered_after_the_configured_attempts(
    spine: RunningPlatform,
    models: FakeModelServer,
    services: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models.add(Rule(containing="poison", status=503))
    poison = await submit(spine, "poison pill", model="llama3.2")
    healthy = [await submit(spine, f"healthy {i}") for i in range(5)]
    done = await spine.wait_for(poison["id"])
    assert done["state"] == "dead_lettered"
    assert done["attempts"] == spine.settings.worker.max_attempts
    assert models.count(containing="poison") == spine.settings.worker.max_attempts
    for task in healthy:
        assert (await spine.wait_for(task["id"]))["state"] == "succeeded"
    dead = await dlq_messages(services)
    assert [d["task_id"] for d in dead] == [poison["id"]]
    assert dead[0]["reason"]["reason"] == "too many attempts"
    line = dead_letter_line(caplog, poison["id"])
    assert f"dead_lettered: {done['error']['type']} (" in line, line
    assert "reason=too many attempts" in line and "None" not in line, line


async def test_cancel_a_running_task_stops_it(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(containing="forever", hang=True))
    task = await submit(spine, "think forever")
    await models_called(models, "forever")
    response = await spine.client.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status_code == 202
    done = await spine.wait_for(task["id"])
    assert done["state"] == "cancelled"
    again = await spine.client.post(f"/v1/tasks/{task['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "conflict"
    # The model call it abandoned is still on the books.
    usage = (await spine.client.get("/v1/usage", params={"group_by": "model"})).json()
    assert [(r["model"], r["calls"], r["errors"]) for r in usage["data"]] == [("llama3.2", 1, 1)]


async def test_provider_not_configured_fails_with_what_to_set(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with running_platform(services, pg_url, models, ollama_url=None) as spine:
        task = await submit(spine, "hello")
        done = await spine.wait_for(task["id"])
    assert done["state"] == "failed"
    assert done["error"]["type"] == "provider_not_configured"
    assert "GENAI_OLLAMA_URL" in done["error"]["message"]


async def test_unreachable_provider_is_retried_then_dead_lettered_naming_the_setting(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with running_platform(
        services, pg_url, models, ollama_url="http://127.0.0.1:9", worker={"max_attempts": 2}
    ) as spine:
        task = await submit(spine, "hello")
        done = await spine.wait_for(task["id"])
    assert done["state"] == "dead_lettered"
    assert "GENAI_OLLAMA_URL" in done["error"]["message"]


async def test_listing_filters_and_paginates_within_the_tenant(spine: RunningPlatform) -> None:
    ids = [(await submit(spine, f"list {i}"))["id"] for i in range(5)]
    for task_id in ids:
        await spine.wait_for(task_id)
    other = await spine.new_key("other-tenant")
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {other}"}
    ) as client:
        assert (await client.get("/v1/tasks")).json()["data"] == []
        assert (await client.get(f"/v1/tasks/{ids[0]}")).status_code == 404
        assert (await client.get(f"/v1/tasks/{ids[0]}/events")).status_code == 404
        assert (await client.post(f"/v1/tasks/{ids[0]}/cancel")).status_code == 404
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "state": "succeeded"}
        if cursor:
            params["cursor"] = cursor
        page = (await spine.client.get("/v1/tasks", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_idempotency_key_returns_the_same_task_or_409(spine: RunningPlatform) -> None:
    body = {"agent": "chat", "input": {"prompt": "once"}}
    headers = {"Idempotency-Key": "order-42"}
    first = await spine.client.post("/v1/tasks", json=body, headers=headers)
    second = await spine.client.post("/v1/tasks", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    other = await spine.client.post(
        "/v1/tasks", json={**body, "input": {"prompt": "twice"}}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"


async def test_a_submit_answers_the_task_as_fastapi_renders_it(spine: RunningPlatform) -> None:
    # A well-formed submit is answered directly (hot_routes); a read of it through FastAPI's
    # route shows the same task in the same shape.
    body = {"agent": "chat", "input": {"prompt": "naïve ☃"}, "metadata": {"k": "v", "x": 1e20}}
    created = await spine.client.post("/v1/tasks", json=body)
    assert created.status_code == 202, created.text
    read = await spine.client.get(created.headers["Location"])
    answered, rendered = created.json(), read.json()
    assert list(answered) == list(rendered)
    fixed = ("id", "tenant", "key_id", "agent", "input", "metadata", "priority", "created_at")
    assert {k: answered[k] for k in fixed} == {k: rendered[k] for k in fixed}
    assert answered["links"] == rendered["links"]
    assert (answered["input"], answered["metadata"]) == (body["input"], body["metadata"])


async def models_called(models: FakeModelServer, containing: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if models.count(containing=containing):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the model never saw {containing!r}")


async def dlq_messages(services: Any) -> list[dict[str, Any]]:
    nc = await nats.connect(services.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("spine.dlq.tasks", stream="TASKS_DLQ")
        try:
            messages = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            return []
        return [json.loads(m.data) for m in messages]
    finally:
        await nc.close()


async def test_long_work_is_kept_alive_past_ack_wait(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    ack_wait = spine.settings.worker.ack_wait
    models.add(Rule(containing="marathon", reply="finished", latency=ack_wait * 2))
    task = await submit(spine, "run a marathon")
    done = await spine.wait_for(task["id"], timeout=ack_wait * 6)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert models.count(containing="marathon") == 1


async def test_cancel_a_queued_task_ends_it_before_it_runs(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    settings = make_settings(services, pg_url, models)
    async with run_platform(settings, workers=0) as spine:
        task = await submit(spine, "never run me")
        response = await spine.client.post(f"/v1/tasks/{task['id']}/cancel")
        assert response.status_code == 202
        assert response.json()["state"] == "cancelled"
    async with run_platform(settings) as spine:
        await asyncio.sleep(1.0)  # a worker now receives the message and must not run it
        body = (await spine.client.get(f"/v1/tasks/{task['id']}")).json()
    assert body["state"] == "cancelled"
    assert body["attempts"] == 0
    assert models.count(containing="never run me") == 0


async def test_chat_reaches_an_openai_compatible_provider(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    models.add(Rule(model="gpt-4o-mini", reply="from openai"))
    async with running_platform(
        services,
        pg_url,
        models,
        default_provider="openai",
        openai_api_key="sk-test",
        openai_base_url=models.openai_url,
        ollama_url=None,  # else local_first would rightly answer from the local model
    ) as spine:
        task = await submit(spine, "hello openai")
        done = await spine.wait_for(task["id"])
    assert done["result"]["text"] == "from openai"
    assert done["result"]["provider"] == "openai"
    assert models.last_call.request.protocol == "openai"


async def test_high_priority_work_overtakes_a_low_priority_backlog(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    settings = make_settings(services, pg_url, models, worker={"concurrency": 2})
    models.add(Rule(containing="batch", latency=0.2))
    async with run_platform(settings, workers=0) as spine:
        backlog = [await submit(spine, f"batch {i}", priority="low") for i in range(8)]
        urgent = await submit(spine, "urgent", priority="high")
    async with run_platform(settings) as spine:
        done = await spine.wait_for(urgent["id"])
        finished_low = [
            (await spine.client.get(f"/v1/tasks/{t['id']}")).json()["state"] for t in backlog
        ]
    assert done["state"] == "succeeded"
    # Low-priority work may use half the slots: the urgent task is not stuck behind the backlog.
    assert finished_low.count("succeeded") < len(backlog)
