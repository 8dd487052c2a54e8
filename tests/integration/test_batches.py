"""Batches end to end: OpenAI batch JSONL → line tasks on JetStream (low lane) → output files.

The API part drives the official ``openai`` client (files.create → batches.create →
batches.retrieve → files.content) against a running platform whose model is the fake server.
The store part runs :class:`Batches` on SQLite and PostgreSQL with a recording dispatcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai import AsyncOpenAI
from openai.types import Batch

from spine.platform.batches import Batches, line_key
from spine.platform.batches.files import FileStore
from spine.platform.batches.input import BatchCreate
from spine.platform.db import Database
from spine.platform.keys import Principal
from spine.platform.schema import FileRow
from spine.platform.tasks import NewTask, Task, TaskStore, TaskSubmission
from support.databases import create_database
from support.fake_models import FakeModelServer, Rule, ToolCall
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

ENDPOINT: Final = "/v1/chat/completions"  # Final: the client's types want this literal
MODEL = "llama3.2"
FINAL = {"completed", "failed", "cancelled", "expired"}


def request_line(custom_id: str, prompt: str, *, model: str = MODEL, **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}], **body},
        }
    )


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    async with running_platform(services, pg_url, models) as running:
        yield running


async def finished(client: AsyncOpenAI, batch_id: str, timeout: float = 30.0) -> Batch:
    """Retrieve a batch until it reaches a final status."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")
        await asyncio.sleep(0.1)


async def submit_file(client: AsyncOpenAI, content: bytes, **extra: Any) -> Batch:
    uploaded = await client.files.create(file=("requests.jsonl", content), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", **extra
    )


# -- the official client's flow ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_openai_client_flow_completes_the_good_lines_and_reports_the_bad_one(
    services: Any, models: FakeModelServer, tmp_path: Any, backend: str
) -> None:
    url = (
        f"sqlite:///{tmp_path}/genai.db"
        if backend == "sqlite"
        else create_database(services.database_url)
    )
    content = jsonl(
        request_line("r1", "first question"),
        request_line("r2", "second question", max_tokens=50),
        '{"custom_id": "r3", "method": "POST", "url": "/v1/chat/completions", "body": {',
        request_line("r4", "fourth question", model="auto"),
    )
    async with (
        running_platform(services, url, models) as spine,
        AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=spine.key, max_retries=0) as client,
    ):
        uploaded = await client.files.create(file=("requests.jsonl", content), purpose="batch")
        assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
            "batch",
            len(content),
            "requests.jsonl",
        )
        assert uploaded.id.startswith("file-")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert batch.status in {"in_progress", "completed"}  # workers may beat the reply
        assert batch.id.startswith("batch_")
        assert batch.request_counts is not None
        assert batch.request_counts.total == 4
        assert batch.input_file_id == uploaded.id

        done = await finished(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (4, 3)
        assert done.request_counts.failed == 1
        assert done.metadata == {"job": "nightly"}
        assert done.completed_at is not None and done.in_progress_at is not None
        assert done.usage is not None and done.usage.input_tokens > 0
        assert done.usage.output_tokens == 9  # "echo: <two words>" is 3 tokens, three times
        assert done.errors is not None and done.errors.data is not None
        assert (done.errors.data[0].line, done.errors.data[0].code) == (3, "invalid_json")

        assert done.output_file_id and done.error_file_id
        output = records((await client.files.content(done.output_file_id)).text)
        assert [r["custom_id"] for r in output] == ["r1", "r2", "r4"]
        for record, prompt in zip(output, ["first", "second", "fourth"], strict=True):
            assert record["error"] is None
            assert record["id"].startswith("batch_req_")
            assert record["response"]["status_code"] == 200
            body = record["response"]["body"]
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["content"] == f"echo: {prompt} question"
        errors = records((await client.files.content(done.error_file_id)).text)
        assert len(errors) == 1
        assert errors[0]["response"] is None
        assert errors[0]["error"]["code"] == "invalid_json"
        assert errors[0]["error"]["line"] == 3
        assert errors[0]["error"]["message"].startswith("line 3: ")

        output_file = await client.files.retrieve(done.output_file_id)
        assert output_file.purpose == "batch_output"
        assert [b.id async for b in client.batches.list()] == [batch.id]
        assert models.count() == 3

        # The lines ran as tasks of the completion agent, in the low-priority lane.
        tasks = (await spine.client.get("/v1/tasks", params={"agent": "completion"})).json()
        lines = {t["metadata"]["custom_id"]: t for t in tasks["data"]}
        assert set(lines) == {"r1", "r2", "r4"}
        assert {t["priority"] for t in lines.values()} == {"low"}
        assert {t["metadata"]["batch_id"] for t in lines.values()} == {batch.id}
        assert lines["r1"]["result"]["choices"][0]["message"]["content"] == "echo: first question"
        assert output[0]["response"]["request_id"] == lines["r1"]["id"]

        # Finalized once: reading again changes nothing.
        again = await client.batches.retrieve(batch.id)
        assert (again.output_file_id, again.error_file_id) == (
            done.output_file_id,
            done.error_file_id,
        )


async def test_lines_holding_what_cannot_be_stored_are_their_own_errors_not_a_500(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    # json.dumps escapes them: valid JSON a client may well write, text PostgreSQL refuses.
    models.add(Rule(containing="odd answer", reply="x\x00y\ud800z"))
    content = jsonl(
        request_line("nul\x00", "first"),
        request_line("half", "emoji \ud83d"),
        request_line("fine", "an odd answer"),
    )
    uploaded = await client.files.create(file=("odd.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
    )
    done = await finished(client, batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    assert done.error_file_id is not None and done.output_file_id is not None
    errors = records((await client.files.content(done.error_file_id)).text)
    by_line = {e["error"]["line"]: (e["custom_id"], e["error"]["param"]) for e in errors}
    assert by_line == {1: (None, "custom_id"), 2: ("half", "body.messages.0.content")}
    [output] = records((await client.files.content(done.output_file_id)).text)
    assert output["custom_id"] == "fine"
    answer = output["response"]["body"]["choices"][0]["message"]["content"]
    assert answer == "x\ufffdy\ufffdz"


async def test_a_line_in_the_deprecated_functions_api_is_answered_in_its_form(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(containing="weather", tool_calls=[ToolCall(name="get_weather", arguments={})]))
    functions = [{"name": "get_weather", "parameters": {"type": "object"}}]
    content = jsonl(
        request_line("legacy", "weather?", functions=functions, function_call="auto"),
        request_line("tools", "weather?", tools=[{"type": "function", "function": functions[0]}]),
    )
    done = await finished(client, (await submit_file(client, content)).id)
    assert done.output_file_id is not None
    output = records((await client.files.content(done.output_file_id)).text)
    choices = {r["custom_id"]: r["response"]["body"]["choices"][0] for r in output}
    assert choices["legacy"]["finish_reason"] == "function_call"
    assert choices["legacy"]["message"]["function_call"] == {
        "name": "get_weather",
        "arguments": "{}",
    }
    assert "tool_calls" not in choices["legacy"]["message"]
    assert choices["tools"]["finish_reason"] == "tool_calls"
    assert choices["tools"]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_jsonl_posted_directly_runs_as_a_batch(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    content = jsonl(request_line("a", "alpha"), request_line("b", "beta"), '"just a string"')
    for media in ("application/jsonl", "application/x-ndjson"):
        response = await spine.client.post(
            "/v1/batches", content=content, headers={"Content-Type": media}
        )
        assert response.status_code == 200, response.text
        batch = response.json()
        assert (batch["object"], batch["endpoint"]) == ("batch", ENDPOINT)
        # The second batch is answered from the cache and may finish before the reply is built.
        assert batch["status"] in {"in_progress", "completed"}
        source = (await spine.client.get(f"/v1/files/{batch['input_file_id']}/content")).content
        assert source == content
        for _ in range(300):
            batch = (await spine.client.get(f"/v1/batches/{batch['id']}")).json()
            if batch["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        output = await spine.client.get(f"/v1/batches/{batch['id']}/output")
        assert output.headers["content-type"].startswith("application/jsonl")
        answers = records(output.text)
        assert [a["response"]["body"]["choices"][0]["message"]["content"] for a in answers] == [
            "echo: alpha",
            "echo: beta",
        ]
        errors = records((await spine.client.get(f"/v1/batches/{batch['id']}/errors")).text)
        assert [(e["error"]["line"], e["error"]["code"]) for e in errors] == [
            (3, "invalid_request")
        ]
    assert models.count() == 2  # the second batch's lines were answered from the cache


async def test_a_bad_batch_request_is_a_4xx_naming_the_field(
    spine: RunningPlatform, client: AsyncOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.batches.create(
            input_file_id="file-x",
            endpoint="/v1/embeddings",
            completion_window="24h",
        )
    assert caught.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.batches.create(
            input_file_id="file-nope", endpoint=ENDPOINT, completion_window="24h"
        )
    assert missing.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError) as long_key:  # OpenAI's keys: 64 characters
        await client.batches.create(
            input_file_id="file-x",
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"k" * 65: "v"},
        )
    assert long_key.value.param == "metadata"
    assert f"invalid key '{'k' * 65}' in 'metadata'" in long_key.value.message

    response = await spine.client.post("/v1/batches", json={"endpoint": ENDPOINT})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["field"]) == ("input_file_id", "input_file_id")
    assert {"message", "type", "param", "code"} <= set(error)

    response = await spine.client.post(
        "/v1/batches", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["error"]["param"] == "Content-Type"

    response = await spine.client.post(
        "/v1/batches", content=b"\n\n", headers={"Content-Type": "application/jsonl"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body"
    response = await spine.client.post(
        "/v1/batches",
        params={"completion_window": "1h"},
        content=jsonl(request_line("a", "b")),
        headers={"Content-Type": "application/jsonl"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "completion_window"
    assert "'1h'" in response.json()["error"]["message"]

    with pytest.raises(openai.BadRequestError) as purpose:
        await client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert purpose.value.param == "purpose"
    response = await spine.client.post("/v1/files", data={"purpose": "batch"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"

    user_file = await client.files.create(file=("notes.txt", b"hi"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.batches.create(
            input_file_id=user_file.id, endpoint=ENDPOINT, completion_window="24h"
        )
    assert wrong.value.param == "input_file_id"
    assert "purpose 'batch'" in wrong.value.message


async def test_a_line_whose_model_call_fails_lands_in_the_error_file(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    # 400 from the model: the prompt is too long for it, a permanent failure (no retry).
    models.add(Rule(containing="too long", status=400))
    batch = await submit_file(
        client,
        jsonl(
            request_line("ok", "fine question"),
            request_line("long", "far too long a question"),
            request_line("nomodel", "who answers?", model="no-such-model"),
        ),
    )
    done = await finished(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    assert done.output_file_id and done.error_file_id
    output = records((await client.files.content(done.output_file_id)).text)
    assert [r["custom_id"] for r in output] == ["ok"]
    errors = {
        r["custom_id"]: r for r in records((await client.files.content(done.error_file_id)).text)
    }
    assert set(errors) == {"long", "nomodel"}
    long = errors["long"]["response"]
    assert long["status_code"] == 400
    assert long["body"]["error"]["code"] == "context_length_exceeded"
    assert long["request_id"]
    missing = errors["nomodel"]["response"]
    assert missing["status_code"] == 404
    assert missing["body"]["error"]["code"] == "model_not_found"
    assert missing["body"]["error"]["param"] == "model"
    assert models.count(containing="too long") == 1  # permanent: tried once


async def test_another_tenants_batch_and_files_are_not_found(
    spine: RunningPlatform, client: AsyncOpenAI
) -> None:
    batch = await submit_file(client, jsonl(request_line("r1", "mine")))
    done = await finished(client, batch.id)
    assert done.output_file_id is not None
    other_key = await spine.new_key("globex")
    async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=other_key, max_retries=0) as other:
        for attempt in (
            other.batches.retrieve(batch.id),
            other.batches.cancel(batch.id),
            other.files.retrieve(done.input_file_id),
            other.files.content(done.output_file_id),
            other.files.delete(done.output_file_id),
            other.batches.create(
                input_file_id=done.input_file_id, endpoint=ENDPOINT, completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                await attempt
        assert [b.id async for b in other.batches.list()] == []
        assert [f.id async for f in other.files.list()] == []
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {other_key}"}
    ) as raw:
        assert (await raw.get(f"/v1/batches/{batch.id}/output")).status_code == 404
    # The owner still has everything.
    assert (await client.files.content(done.output_file_id)).text
    listed = [f.id async for f in client.files.list(purpose="batch")]
    assert listed == [done.input_file_id]


async def test_cancel_stops_unfinished_lines_and_keeps_what_finished(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(containing="wait", hang=True))
    prompts = ["quick one"] + [f"wait {i}" for i in range(6)]
    batch = await submit_file(
        client, jsonl(*(request_line(f"r{i}", p) for i, p in enumerate(prompts)))
    )
    # The quick line finishes; the others hang (4 running in the low lane's slots, 2 queued).
    for _ in range(200):
        progress = await client.batches.retrieve(batch.id)
        assert progress.request_counts is not None
        if progress.request_counts.completed == 1 and models.count(containing="wait") == 4:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the quick line never finished")
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    done = await finished(client, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None and done.cancelling_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (7, 1)
    assert done.request_counts.failed == 6
    assert done.output_file_id and done.error_file_id
    output = records((await client.files.content(done.output_file_id)).text)
    assert [r["custom_id"] for r in output] == ["r0"]
    errors = records((await client.files.content(done.error_file_id)).text)
    assert [r["custom_id"] for r in errors] == [f"r{i}" for i in range(1, 7)]
    assert {r["error"]["code"] for r in errors} == {"batch_cancelled"}
    assert models.count(containing="wait") == 4  # the queued lines never ran

    again = await client.batches.cancel(batch.id)
    assert again.status == "cancelled"
    finished_batch = await finished(
        client, (await submit_file(client, jsonl(request_line("x", "y")))).id
    )
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(finished_batch.id)
    tasks = (await spine.client.get("/v1/tasks", params={"state": "cancelled"})).json()
    assert len(tasks["data"]) == 6


async def test_over_the_limits_is_413(spine: RunningPlatform, client: AsyncOpenAI) -> None:
    limits = spine.platform.files.limits
    assert spine.platform.batches.limits is limits
    limits.max_file_bytes, limits.max_lines = 2048, 3
    big = jsonl(*(request_line(f"r{i}", "x" * 200) for i in range(10)))
    assert len(big) > 2048
    with pytest.raises(openai.APIStatusError) as upload:
        await client.files.create(file=("big.jsonl", big), purpose="batch")
    assert upload.value.status_code == 413
    assert upload.value.body["param"] == "file"  # type: ignore[index]
    response = await spine.client.post(
        "/v1/batches", content=big, headers={"Content-Type": "application/jsonl"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body"

    four = jsonl(*(request_line(f"r{i}", "hi") for i in range(4)))
    uploaded = await client.files.create(file=("four.jsonl", four), purpose="batch")
    with pytest.raises(openai.APIStatusError) as lines:
        await client.batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
        )
    assert lines.value.status_code == 413
    assert lines.value.body["param"] == "input_file_id"  # type: ignore[index]
    assert "4 requests" in lines.value.message
    assert [b async for b in client.batches.list()] == []


async def test_a_line_resubmitted_with_its_key_is_the_same_task(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    line = json.loads(request_line("r1", "only once"))
    batch = await submit_file(client, jsonl(json.dumps(line)))
    done = await finished(client, batch.id)
    assert done.output_file_id is not None
    [answer] = records((await client.files.content(done.output_file_id)).text)
    resubmitted = await spine.client.post(
        "/v1/tasks",
        json={
            "agent": "completion",
            "input": line["body"],
            "metadata": {"batch_id": batch.id, "custom_id": "r1", "line": 1},
            "priority": "low",
        },
        headers={"Idempotency-Key": line_key(batch.id, "r1")},
    )
    assert resubmitted.status_code == 202
    assert resubmitted.headers["Idempotent-Replayed"] == "true"
    assert resubmitted.json()["id"] == answer["response"]["request_id"]
    assert models.count(containing="only once") == 1


# -- the store on both databases ---------------------------------------------------------------


@dataclass
class RecordingDispatcher:
    """Publishes nothing; records what would go to JetStream, and cancels in the store."""

    store: TaskStore
    published: list[str] = field(default_factory=list)
    nats_down: bool = False

    async def publish(self, tasks: list[Task], *, stalled: bool = False) -> int:
        if self.nats_down:
            return 0  # as TaskDispatcher.publish: nothing acknowledged, all left to the sweeper
        self.published.extend(task.id for task in tasks)
        return len(tasks)

    async def cancel(self, task_id: str, *, principal: Principal) -> Task:
        task, _ = await self.store.cancel(task_id, tenant=principal.tenant)
        return task


ACME = Principal(key_id="k1", tenant="acme", role="member")


@pytest.fixture
def tasks(db: Database) -> TaskStore:
    return TaskStore(db)


@pytest.fixture
def dispatcher(tasks: TaskStore) -> RecordingDispatcher:
    return RecordingDispatcher(tasks)


@pytest.fixture
def batches(db: Database, tasks: TaskStore, dispatcher: RecordingDispatcher) -> Batches:
    return Batches(db, tasks=tasks, files=FileStore(db), dispatcher=dispatcher)


async def create(batches: Batches, content: bytes) -> str:
    batch = await batches.create_from_jsonl(content, principal=ACME)
    return batch.id


async def answer_all(tasks: TaskStore, task_ids: list[str]) -> None:
    for task_id in task_ids:
        claim = await tasks.claim(task_id, lease=30)
        await tasks.finish(
            task_id,
            attempt=claim.attempt,
            state="succeeded",
            result={"object": "chat.completion", "usage": {"prompt_tokens": 2}},
        )


async def test_a_batch_and_its_line_tasks_are_committed_together_then_published(
    db: Database, batches: Batches, tasks: TaskStore, dispatcher: RecordingDispatcher
) -> None:
    content = jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(2500)), "{bad")
    batch_id = await create(batches, content)
    batch = await batches.get(batch_id, principal=ACME)
    assert batch.status == "in_progress"
    assert batch.request_counts.model_dump() == {"total": 2501, "completed": 0, "failed": 1}
    assert len(dispatcher.published) == len(set(dispatcher.published)) == 2500
    page = await tasks.list_page(tenant="acme", agent="completion", limit=5)
    assert {t.priority for t in page.tasks} == {"low"}
    assert all(t.metadata["batch_id"] == batch_id for t in page.tasks)

    # Inserting the same lines again (a retry after a crash) creates no task.
    again = [
        NewTask(
            id=f"00000000-0000-0000-0000-{i:012d}",
            submission=TaskSubmission(
                agent="completion",
                input=json.loads(request_line(f"r{i}", f"q{i}"))["body"],
                priority="low",
            ),
            idempotency_key=line_key(batch_id, f"r{i}"),
        )
        for i in range(2500)
    ]
    async with db.transaction() as conn:
        assert await tasks.insert_many(conn, again, tenant="acme") == []
    async with db.transaction() as conn:
        count = await conn.execute(sa.text("SELECT count(*) FROM tasks"))
        assert count.scalar() == 2500


async def test_concurrent_reads_finalize_a_batch_once(
    db: Database, batches: Batches, tasks: TaskStore, dispatcher: RecordingDispatcher
) -> None:
    batch_id = await create(batches, jsonl(request_line("a", "1"), "[]", request_line("b", "2")))
    await answer_all(tasks, dispatcher.published)
    seen = await asyncio.gather(*(batches.get(batch_id, principal=ACME) for _ in range(6)))
    assert {b.status for b in seen} == {"completed"}
    assert len({(b.output_file_id, b.error_file_id) for b in seen}) == 1
    assert seen[0].request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert seen[0].usage is not None and seen[0].usage["input_tokens"] == 4
    async with db.transaction() as conn:
        purposes = await conn.execute(
            sa.select(FileRow.purpose, sa.func.count()).group_by(FileRow.purpose)
        )
        assert dict(purposes.all()) == {"batch": 1, "batch_output": 2}
    output = await batches.result_file(batch_id, principal=ACME, kind="output")
    assert [r["custom_id"] for r in records(output.decode())] == ["a", "b"]


async def test_a_batch_with_no_runnable_line_fails_with_its_error_file(
    batches: Batches, dispatcher: RecordingDispatcher
) -> None:
    batch = await batches.create_from_jsonl(jsonl("{", "[]"), principal=ACME)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 0, "failed": 2}
    assert dispatcher.published == []
    errors = await batches.result_file(batch.id, principal=ACME, kind="error")
    assert [r["error"]["line"] for r in records(errors.decode())] == [1, 2]


async def test_a_batch_of_an_uploaded_file_names_it_and_lists_newest_first(
    db: Database, batches: Batches
) -> None:
    files = FileStore(db)
    stored = await files.upload(
        tenant="acme", purpose="batch", filename="in.jsonl", content=jsonl(request_line("a", "1"))
    )
    request = BatchCreate(input_file_id=stored.id, endpoint=ENDPOINT, completion_window="24h")
    first = await batches.create(request, principal=ACME)
    second = await batches.create(request, principal=ACME)
    assert first.input_file_id == second.input_file_id == stored.id
    listed, more = await batches.list_page(principal=ACME, limit=1)
    assert ([b.id for b in listed], more) == ([second.id], True)
    listed, more = await batches.list_page(principal=ACME, limit=1, after=second.id)
    assert ([b.id for b in listed], more) == ([first.id], False)


async def test_lines_not_published_are_left_for_the_sweeper(
    batches: Batches, tasks: TaskStore, dispatcher: RecordingDispatcher
) -> None:
    dispatcher.nats_down = True
    batch = await batches.create_from_jsonl(
        jsonl(request_line("a", "1"), request_line("b", "2")), principal=ACME
    )
    assert batch.status == "in_progress"
    waiting = await tasks.unpublished(grace=0, limit=10)
    assert sorted(t.metadata["custom_id"] for t in waiting) == ["a", "b"]
    assert {t.metadata["batch_id"] for t in waiting} == {batch.id}


async def test_files_are_listed_described_and_deleted(
    spine: RunningPlatform, client: AsyncOpenAI
) -> None:
    first = await client.files.create(file=("one.jsonl", b"{}\n"), purpose="batch")
    second = await client.files.create(file=("two.txt", b"notes"), purpose="user_data")
    assert [f.id async for f in client.files.list()] == [second.id, first.id]
    assert [f.id async for f in client.files.list(order="asc")] == [first.id, second.id]
    assert [f.id async for f in client.files.list(purpose="user_data")] == [second.id]
    page = (await spine.client.get("/v1/files", params={"limit": 1})).json()
    assert ([f["id"] for f in page["data"]], page["has_more"]) == ([second.id], True)
    rest = (await spine.client.get("/v1/files", params={"limit": 1, "after": second.id})).json()
    assert ([f["id"] for f in rest["data"]], rest["has_more"]) == ([first.id], False)
    described = await client.files.retrieve(first.id)
    assert (described.filename, described.bytes, described.object) == ("one.jsonl", 3, "file")
    assert (await client.files.content(second.id)).content == b"notes"
    deleted = await client.files.delete(first.id)
    assert (deleted.id, deleted.deleted) == (first.id, True)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(first.id)
    bad = await spine.client.get("/v1/files", params={"limit": "0"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "limit")


async def test_a_file_name_that_cannot_be_stored_is_mended(spine: RunningPlatform) -> None:
    # A NUL in the multipart header's file name (which clients percent-encode; this one does
    # not): the name is a label, so it is kept mended rather than refused.
    raw = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n{}\r\n--B--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=B"}
    answer = await spine.client.post("/v1/files", content=raw, headers=headers)
    assert answer.status_code == 200, answer.text
    stored = await spine.client.get(f"/v1/files/{answer.json()['id']}")
    assert stored.json()["filename"] == "a\ufffdb.jsonl"


async def test_a_batch_nobody_reads_is_finalized_in_the_background(
    spine: RunningPlatform,
) -> None:
    content = jsonl(request_line("a", "unread alpha"), request_line("b", "unread beta"))
    response = await spine.client.post(
        "/v1/batches", content=content, headers={"Content-Type": "application/jsonl"}
    )
    assert response.status_code == 200, response.text
    batch_id = response.json()["id"]
    query = sa.text("SELECT status, output_file_id FROM batches WHERE id = :id")
    for _ in range(300):  # read the row itself: a GET would finalize it
        async with spine.platform.db.transaction() as conn:
            status, output = (await conn.execute(query, {"id": batch_id})).one()
        if status == "completed":
            break
        await asyncio.sleep(0.1)
    assert (status, output is not None) == ("completed", True)
