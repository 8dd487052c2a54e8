"""``/metrics`` on a live platform: the families are there and move under a run.

The API's own counters (requests by route template, tasks submitted), what it reads on a
scrape (tasks not yet ended, queue depth and lag from JetStream), and the learner's (model calls
and task ends from the OUTCOMES stream, on its own port). No label value ever carries a task id.
A worker process's own port (the tasks it ran, its breakers) is scraped in ``test_tracing.py``,
beside its trace: one worker process start serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from spine.events.outcomes import TaskSignal
from spine.platform.app.learner import run_learner
from spine.platform.schema import utcnow
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform
from support.ports import free_port
from support.scraping import assert_no_ids, scrape, value

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]


async def submit(spine: RunningPlatform, prompt: str) -> str:
    response = await spine.client.post(
        "/v1/tasks", json={"agent": "chat", "input": {"prompt": prompt}}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@contextlib.asynccontextmanager
async def learner(spine: RunningPlatform, port: int) -> AsyncIterator[None]:
    settings = spine.settings.model_copy(
        update={"metrics": spine.settings.metrics.model_copy(update={"port": port, "port_span": 1})}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_learner(settings, stop))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the learner listens once it has started
            with contextlib.suppress(httpx.ConnectError):
                await scrape(f"http://127.0.0.1:{port}/metrics")
                break
            assert not task.done(), task.result()
            assert asyncio.get_running_loop().time() < deadline, "the learner never listened"
            await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def idle(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    """An API with no worker: what it accepts stays queued."""
    async with running_platform(
        services, pg_url, models, workers=0, metrics={"probe_seconds": 0}
    ) as running:
        yield running


async def test_queued_tasks_show_as_active_tasks_queue_depth_and_lag(
    idle: RunningPlatform,
) -> None:
    metrics = f"{idle.url}/metrics"
    before = await scrape(metrics)
    task_ids = [await submit(idle, f"wait {i}") for i in range(2)]
    await idle.client.get(f"/v1/tasks/{task_ids[0]}")
    await idle.client.get(f"/v1/nothing/{task_ids[0]}")
    after = await scrape(metrics)

    posted = {"method": "POST", "route": "/v1/tasks", "status": "202"}
    moved = value(after, "spine_http_requests_total", **posted)
    assert moved == value(before, "spine_http_requests_total", **posted) + 2
    read = {"method": "GET", "route": "/v1/tasks/{task_id}", "status": "200"}
    assert value(after, "spine_http_requests_total", **read) >= 1
    assert value(after, "spine_http_requests_total", route="unmatched", status="404") >= 1
    assert value(after, "spine_http_request_seconds_count", route="/v1/tasks") >= 2
    assert value(after, "spine_tasks_active", state="queued", agent="chat") == 2
    submitted = value(after, "spine_tasks_submitted_total", agent="chat")
    assert submitted == value(before, "spine_tasks_submitted_total", agent="chat") + 2
    assert value(after, "spine_jetstream_stream_messages", stream="TASKS") == 2
    lag = value(
        after, "spine_jetstream_consumer_pending", stream="TASKS", consumer="workers-normal"
    )
    assert lag == 2
    assert {"TASKS_DLQ", "OUTCOMES", "EVENTS", "EVENTS_DLQ"} <= {
        ls["stream"] for n, ls, _ in after if n == "spine_jetstream_stream_messages"
    }
    assert value(after, "spine_process_info", role="api") == 1
    assert_no_ids(after, *task_ids)


async def test_model_calls_and_task_ends_move_the_learners_metrics(
    idle: RunningPlatform, models: FakeModelServer
) -> None:
    """A gateway call and a task's end reach the learner through OUTCOMES and are counted.

    No worker: its model warm-up is what makes a task run slow on a loaded machine, and the
    learner counts the same events whichever process published them.
    """
    models.add(Rule(containing="metrics please", reply="Counted."))
    port = free_port()
    learned = f"http://127.0.0.1:{port}/metrics"
    task_id = await submit(idle, "a task to end")
    async with learner(idle, port):
        before = await scrape(learned)
        api_before = await scrape(f"{idle.url}/metrics")
        answer = await idle.client.post(
            "/v1/chat/completions",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "metrics please"}]},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        # What a worker announces when a task ends (TaskWorker._signal).
        idle.platform.outcomes.signal(
            TaskSignal(
                id=f"{task_id}:end",
                time=utcnow(),
                tenant=idle.tenant,
                task_id=task_id,
                agent="chat",
                kind="succeeded",
            )
        )

        ok = {"model": "llama3.2", "provider": "ollama", "outcome": "ok"}
        done = {"agent": "chat", "state": "succeeded"}
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            after = await scrape(learned)
            calls = value(after, "spine_model_calls_total", **ok)
            ended = value(after, "spine_tasks_finished_total", **done)
            if calls > value(before, "spine_model_calls_total", **ok) and ended > value(
                before, "spine_tasks_finished_total", **done
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, "the learner counted nothing"
            await asyncio.sleep(0.2)
        api_after = await scrape(f"{idle.url}/metrics")

    assert value(after, "spine_process_info", role="learner") == 1
    seconds = value(after, "spine_model_call_seconds_count", model="llama3.2")
    assert seconds > value(before, "spine_model_call_seconds_count", model="llama3.2")
    assert any(n == "spine_model_cost_usd_total" for n, _, _ in after)
    chat = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert value(api_after, "spine_http_requests_total", **chat) == (
        value(api_before, "spine_http_requests_total", **chat) + 1
    )
    assert value(api_after, "spine_jetstream_stream_messages", stream="OUTCOMES") >= 2
    assert_no_ids(after, task_id)
    assert_no_ids(api_after, task_id)


async def test_metrics_can_be_turned_off(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with running_platform(
        services, pg_url, models, workers=0, metrics={"enabled": False}
    ) as running:
        answer = await running.client.get("/metrics")
    assert answer.status_code == 404
