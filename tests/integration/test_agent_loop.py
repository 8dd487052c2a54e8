"""The agent loop end to end: HTTP → JetStream → worker → scripted fake model → tools → SSE.

The agents come from a definitions folder written by the test; the fake model is scripted with
rules that tell the first call (the prompt is last) from the follow-ups (a tool result is last).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from spine.tools.tool import ModelArguments, Tool, ToolContext
from support.fake_models import FakeModelServer, ModelRequest, Rule, ToolCall
from support.live_platform import RunningPlatform, running_platform
from support.task_feed import sse_events

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

AGENTS = {
    "math": "tools: [calculator]\nmax_steps: 4\n",
    "gated": "tools: [launch, calculator]\nmax_steps: 4\napproval_timeout: {timeout}\n",
    "sleepy": "tools: [nap]\nmax_steps: 2\n",
    "reader": "tools: [read]\nmax_steps: 3\n",
    "strict": (
        "tools: []\nmax_steps: 3\n"
        "output_schema: {type: object, required: [answer], properties: {answer: {type: integer}}}\n"
    ),
}


def after_tool(request: ModelRequest) -> bool:
    return request.last_role == "tool"


def first_call(request: ModelRequest) -> bool:
    return request.last_role != "tool"


def script_launch(models: FakeModelServer, *, answer: str | None = None) -> None:
    """The model asks to launch the moon; after the tool's result, ``answer: <result>``."""
    models.add(
        Rule(
            when=first_call,
            containing="launch it",
            tool_calls=[ToolCall(name="launch", arguments={"target": "moon"}, id="l1")],
        )
    )
    if answer is not None:
        models.add(Rule(when=after_tool, reply=lambda r: f"{answer}: {r.messages[-1]['content']}"))


class LaunchArguments(BaseModel):
    target: str


@pytest.fixture
def launches() -> list[str]:
    return []


def write_agents(folder: Path, *, approval_timeout: float) -> Path:
    """Write the test agents' definitions into ``folder`` and return it."""
    folder.mkdir()
    for name, body in AGENTS.items():
        (folder / f"{name}.yaml").write_text(
            f"name: {name}\ndescription: test agent {name}\n"
            f"instructions: You are {name}.\nmodel: {{models: [llama3.2]}}\n"
            + body.replace("{timeout}", str(approval_timeout))
        )
    return folder


def agent_tools(launches: list[str]) -> list[Tool[LaunchArguments]]:
    """A tool that needs approval (it records each launch), one that outlasts any test, and one
    whose result holds what cannot be stored (it records each read)."""

    async def launch(args: LaunchArguments, ctx: ToolContext) -> str:
        launches.append(args.target)
        return f"launched {args.target}"

    gated = Tool(
        name="launch",
        description="Launch something irreversible.",
        arguments=ModelArguments(LaunchArguments),
        handler=launch,
        effect="external",
        needs_approval=True,
    )

    async def nap(args: LaunchArguments, ctx: ToolContext) -> str:
        await asyncio.sleep(3600)
        return "rested"

    napping = Tool(
        name="nap",
        description="Sleep for an hour.",
        arguments=ModelArguments(LaunchArguments),
        handler=nap,
        timeout=3600,
    )

    async def read(args: LaunchArguments, ctx: ToolContext) -> str:
        launches.append(f"read {args.target}")
        return f"{args.target}: a\x00b\ud800c"  # a page as some servers send it

    reading = Tool(
        name="read",
        description="Read a page.",
        arguments=ModelArguments(LaunchArguments),
        handler=read,
    )
    return [gated, napping, reading]


@contextlib.asynccontextmanager
async def running(
    services: Any,
    pg_url: str,
    models: FakeModelServer,
    tmp_path: Path,
    launches: list[str],
    *,
    approval_timeout: float = 3600,
    **overrides: Any,
) -> AsyncIterator[RunningPlatform]:
    """A platform that runs the test agents, with the test tools on its workers."""
    agents = write_agents(tmp_path / "agents", approval_timeout=approval_timeout)
    async with running_platform(services, pg_url, models, agents_dir=agents, **overrides) as spine:
        tools = agent_tools(launches)
        for worker in spine.workers:
            for tool in tools:
                worker.tools.register(tool)
        yield spine


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path, launches: list[str]
) -> AsyncIterator[RunningPlatform]:
    async with running(services, pg_url, models, tmp_path, launches) as platform:
        yield platform


async def submit(spine: RunningPlatform, agent: str, prompt: str) -> str:
    response = await spine.client.post(
        "/v1/tasks", json={"agent": agent, "input": {"prompt": prompt}}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def wait_state(spine: RunningPlatform, task_id: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = (await spine.client.get(f"/v1/tasks/{task_id}")).json()
        if body["state"] == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never became {state}; it is {body['state']}")


async def test_a_multi_step_task_streams_every_step_to_its_feed(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            when=first_call,
            containing="add them",
            tool_calls=[ToolCall(name="calculator", arguments={"expression": "(2+3)*7"}, id="c1")],
        )
    )
    models.add(Rule(when=after_tool, reply="The result is 35."))
    task_id = await submit(spine, "math", "add them then multiply")
    done = await spine.wait_for(task_id)

    assert done["state"] == "succeeded", done
    assert done["result"]["text"] == "The result is 35."
    assert done["result"]["steps"] == 2
    assert done["result"]["usage"]["tool_calls"] == 1
    # The tool's result reached the model as a tool message, never as instructions.
    follow_up = models.last_call.request.messages
    assert (follow_up[0]["role"], follow_up[0]["content"]) == ("system", "You are math.")
    assert follow_up[-1]["role"] == "tool"
    # Ollama's protocol has no call ids; the one LiteLLM made up is kept across the steps.
    assert follow_up[-1]["tool_call_id"] == follow_up[-2]["tool_calls"][0]["id"]
    assert "35" in follow_up[-1]["content"]

    events = await sse_events(spine.client, task_id)
    kinds = [e["type"] if e["type"] != "state" else e["state"] for e in events]
    assert kinds[:3] == ["queued", "running", "delta"] or kinds[:3] == [
        "queued",
        "running",
        "model_call",
    ]
    steps = [k for k in kinds if k not in ("delta",)]
    assert steps == [
        "queued",
        "running",
        "model_call",
        "tool_call_started",
        "tool_call_finished",
        "model_call",
        "final",
        "succeeded",
    ]
    finished = next(e for e in events if e["type"] == "tool_call_finished")
    assert (finished["tool"], finished["ok"]) == ("calculator", True)
    assert json.loads(finished["result"])["result"] == 35
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == "The result is 35."


async def test_the_step_limit_ends_a_loop_that_never_answers(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            containing="forever",
            tool_calls=[ToolCall(name="calculator", arguments={"expression": "1+1"})],
        )
    )
    done = await spine.wait_for(await submit(spine, "math", "loop forever"))
    assert done["state"] == "failed"
    assert done["error"]["limit"] == "max_steps"
    assert "max_steps=4" in done["error"]["message"]
    assert models.count(containing="forever") == 4


async def test_invalid_tool_arguments_go_back_to_the_model_a_bounded_number_of_times(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            containing="garbled",
            tool_calls=[ToolCall(name="calculator", arguments={"expr": "1+1"})],
        )
    )
    done = await spine.wait_for(await submit(spine, "math", "garbled call"))
    assert done["state"] == "failed"
    assert done["error"]["limit"] in ("invalid_tool_arguments", "max_steps")
    # The model saw the validation error as the tool's result.
    shown = models.last_call.request.messages[-1]
    assert shown["role"] == "tool"
    assert "invalid_arguments" in shown["content"]


async def test_an_unlisted_tool_is_refused_even_when_the_model_asks_for_it(
    spine: RunningPlatform, models: FakeModelServer, launches: list[str]
) -> None:
    # "math" may only use the calculator: a request for launch is refused, nothing runs.
    models.add(
        Rule(
            when=first_call,
            containing="injected",
            tool_calls=[ToolCall(name="launch", arguments={"target": "moon"})],
        )
    )
    models.add(Rule(when=after_tool, reply="I may not do that."))
    done = await spine.wait_for(await submit(spine, "math", "injected instructions"))
    assert done["state"] == "succeeded"
    assert launches == []
    assert "not_allowed" in models.last_call.request.messages[-1]["content"]


async def test_a_final_answer_is_checked_against_the_output_schema(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(containing="json please", reply='{"answer": "many"}'))
    # The answer goes back once, saying what was wrong.
    models.add(Rule(containing="'many' is not of type 'integer'", reply='{"answer": 42}'))
    done = await spine.wait_for(await submit(spine, "strict", "json please"))
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["output"] == {"answer": 42}
    assert "does not match" in models.last_call.request.messages[-1]["content"]

    models.add(Rule(containing="never json", reply="plain words"))
    done = await spine.wait_for(await submit(spine, "strict", "never json"))
    assert (done["state"], done["error"]["limit"]) == ("failed", "output_schema")


async def test_an_approval_pauses_the_task_without_holding_a_worker(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path, launches: list[str]
) -> None:
    script_launch(models)
    # One worker slot: a paused task that held it would block the next task.
    async with running(
        services, pg_url, models, tmp_path, launches, worker={"concurrency": 1}
    ) as spine:
        task_id = await submit(spine, "gated", "launch it")
        paused = await wait_state(spine, task_id, "waiting_approval")
        assert paused["approval"]["tool"] == "launch"
        assert json.loads(paused["approval"]["arguments"]) == {"target": "moon"}
        assert launches == []
        events = await spine.client.get(f"/v1/tasks/{task_id}")
        assert events.json()["state"] == "waiting_approval"
        other = await spine.client.post(
            "/v1/tasks", json={"agent": "chat", "input": {"prompt": "meanwhile"}}
        )
        assert (await spine.wait_for(other.json()["id"]))["state"] == "succeeded"
        assert (await spine.client.get(f"/v1/tasks/{task_id}")).json()["state"] == (
            "waiting_approval"
        )


async def test_approve_runs_the_call_once_and_the_loop_goes_on(
    spine: RunningPlatform, models: FakeModelServer, launches: list[str]
) -> None:
    script_launch(models, answer="done")
    task_id = await submit(spine, "gated", "launch it")
    await wait_state(spine, task_id, "waiting_approval")
    approved = await spine.client.post(f"/v1/tasks/{task_id}/approve", json={})
    assert approved.status_code == 202, approved.text
    done = await spine.wait_for(task_id)
    assert done["state"] == "succeeded", done
    assert done["result"]["text"] == "done: launched moon"
    assert launches == ["moon"]
    # The first model call was journalled: the resumed loop did not make it again.
    assert models.count(containing="launch it") == 2
    again = await spine.client.post(f"/v1/tasks/{task_id}/approve", json={})
    assert again.status_code == 409


async def test_reject_tells_the_model_why_and_nothing_runs(
    spine: RunningPlatform, models: FakeModelServer, launches: list[str]
) -> None:
    script_launch(models, answer="ok")
    task_id = await submit(spine, "gated", "launch it")
    await wait_state(spine, task_id, "waiting_approval")
    rejected = await spine.client.post(
        f"/v1/tasks/{task_id}/reject", json={"reason": "not on a Friday"}
    )
    assert rejected.status_code == 202
    done = await spine.wait_for(task_id)
    assert done["state"] == "succeeded"
    assert launches == []
    assert "not on a Friday" in done["result"]["text"]
    assert "rejected" in done["result"]["text"]


async def test_an_approval_nobody_gives_in_time_counts_as_rejected(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path, launches: list[str]
) -> None:
    script_launch(models, answer="ok")
    async with running(services, pg_url, models, tmp_path, launches, approval_timeout=0.5) as spine:
        task_id = await submit(spine, "gated", "launch it")
        done = await spine.wait_for(task_id, timeout=30)
        assert done["state"] == "succeeded"
        assert launches == []
        assert "approval expired" in done["result"]["text"]


async def test_cancel_during_a_paused_approval_ends_the_task(
    spine: RunningPlatform, models: FakeModelServer, launches: list[str]
) -> None:
    script_launch(models)
    task_id = await submit(spine, "gated", "launch it")
    await wait_state(spine, task_id, "waiting_approval")
    assert (await spine.client.post(f"/v1/tasks/{task_id}/cancel")).status_code == 202
    done = await spine.wait_for(task_id)
    assert done["state"] == "cancelled"
    assert launches == []


async def test_agents_are_listed_with_their_tools_and_limits(spine: RunningPlatform) -> None:
    listed = (await spine.client.get("/v1/agents")).json()["data"]
    names = {a["name"] for a in listed}
    assert {"chat", "completion", "researcher", "coordinator", "math", "gated"} <= names
    one = (await spine.client.get("/v1/agents/math")).json()
    assert one["tools"] == ["calculator"]
    assert one["max_steps"] == 4
    missing = await spine.client.get("/v1/agents/nobody")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "agent"


async def test_cancel_during_a_tool_call_stops_the_task_promptly(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            containing="take a nap",
            tool_calls=[ToolCall(name="nap", arguments={"target": "sofa"})],
        )
    )
    task_id = await submit(spine, "sleepy", "take a nap")
    for _ in range(200):
        events = (await spine.client.get(f"/v1/tasks/{task_id}")).json()
        feed = await spine.platform.tasks.events(task_id, tenant=spine.tenant)
        if any(e.type == "tool_call_started" for e in feed):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the nap never started: {events}")
    started = asyncio.get_running_loop().time()
    assert (await spine.client.post(f"/v1/tasks/{task_id}/cancel")).status_code == 202
    done = await spine.wait_for(task_id, timeout=10)
    assert done["state"] == "cancelled"
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_tool_result_and_an_answer_that_cannot_be_stored_are_mended_not_retried(
    spine: RunningPlatform, models: FakeModelServer, launches: list[str]
) -> None:
    models.add(
        Rule(
            when=first_call,
            containing="read it",
            tool_calls=[ToolCall(name="read", arguments={"target": "page"}, id="r1")],
        )
    )
    models.add(Rule(when=after_tool, reply=lambda r: f"{r.messages[-1]['content']} \x00\udfff"))
    task_id = await submit(spine, "reader", "read it")
    done = await spine.wait_for(task_id)
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["text"] == "page: a\ufffdb\ufffdc \ufffd\ufffd"
    assert done["attempts"] == 1
    assert launches == ["read page"]  # the tool ran once: no attempt failed at the journal
    assert models.count(containing="read it") == 2


async def test_a_structured_answer_decoded_into_what_cannot_be_stored_is_mended(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    # The model's text is storable (the escapes are ASCII); the JSON decoded from it is not.
    text = '{"answer": 7, "note": "a\\u0000b\\ud800c"}'
    models.add(Rule(containing="json odd", reply=text))
    done = await spine.wait_for(await submit(spine, "strict", "json odd"))
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["output"] == {"answer": 7, "note": "a\ufffdb\ufffdc"}
    assert done["result"]["text"] == text
    assert done["attempts"] == 1
