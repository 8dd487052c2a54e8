"""The registry: schemas, validation, timeouts, size caps, recording, allowlists, approval."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from spine.platform.errors import ServiceUnavailable
from spine.platform.inputs import text_problem
from spine.tools import (
    ArgumentRetryBudget,
    InMemoryToolRecorder,
    JsonSchemaArguments,
    ModelArguments,
    Tool,
    ToolContext,
    ToolFailure,
    ToolPolicy,
    ToolRegistry,
)


class Add(BaseModel):
    a: int = Field(description="first")
    b: int = Field(default=0, description="second")


async def add(args: Add, ctx: ToolContext) -> dict[str, int]:
    return {"sum": args.a + args.b}


def add_tool(**overrides: Any) -> Tool[Add]:
    fields: dict[str, Any] = {
        "name": "add",
        "description": "Add two integers.",
        "arguments": ModelArguments(Add),
        "handler": add,
    }
    return Tool(**(fields | overrides))


class Nothing(BaseModel):
    pass


def tool_running(handler: Any, **overrides: Any) -> Tool[Nothing]:
    fields: dict[str, Any] = {
        "name": "subject",
        "description": "A tool under test.",
        "arguments": ModelArguments(Nothing),
        "handler": handler,
    }
    return Tool(**(fields | overrides))


CTX = ToolContext(tenant="acme", agent="researcher", task_id="t1", step=3)


def error_of(content: str) -> dict[str, Any]:
    body = json.loads(content)
    assert set(body) == {"error"}
    return dict(body["error"])


async def test_the_model_sees_an_openai_tool_with_the_pydantic_schema() -> None:
    registry = ToolRegistry([add_tool()])
    [entry] = registry.openai_tools(tenant="acme")
    assert entry["type"] == "function"
    function = entry["function"]
    assert function["name"] == "add"
    assert function["description"] == "Add two integers."
    assert function["parameters"]["type"] == "object"
    assert function["parameters"]["required"] == ["a"]
    assert function["parameters"]["properties"]["a"] == {
        "description": "first",
        "title": "A",
        "type": "integer",
    }
    assert "title" not in function["parameters"]


async def test_a_call_runs_and_returns_json_text() -> None:
    result = await ToolRegistry([add_tool()]).call("add", '{"a": 2, "b": 3}', CTX)
    assert result.ok
    assert json.loads(result.content) == {"sum": 5}
    assert result.error is None
    assert not result.truncated
    assert result.duration_ms >= 0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ('{"a": "two"}', "a"),
        ("{}", "a"),
        ('{"a": 1, "b": [1]}', "b"),
        ("[1, 2]", "(arguments)"),
        ("{not json", "(arguments)"),
        ('"just a string"', "(arguments)"),
    ],
)
async def test_invalid_arguments_come_back_as_a_structured_result(
    arguments: str, field: str
) -> None:
    result = await ToolRegistry([add_tool()]).call("add", arguments, CTX)
    assert not result.ok
    assert result.error is not None
    assert result.error.type == "invalid_arguments"
    assert not result.error.retryable
    assert result.error.problems[0]["field"] == field
    body = error_of(result.content)
    assert body["type"] == "invalid_arguments"
    assert body["problems"][0]["field"] == field


async def test_the_caller_bounds_retries_of_invalid_arguments() -> None:
    registry = ToolRegistry([add_tool()])
    budget = ArgumentRetryBudget(limit=2)
    outcomes = []
    for _ in range(3):
        outcomes.append(budget.spend(await registry.call("add", '{"a": "x"}', CTX)))
    assert outcomes == [True, True, False]
    assert budget.exhausted
    assert budget.spend(await registry.call("add", '{"a": 1}', CTX)) is False  # stays spent


async def test_an_unknown_tool_is_an_error_result_naming_the_tools() -> None:
    result = await ToolRegistry([add_tool()]).call("delete_everything", "{}", CTX)
    assert result.error is not None
    assert result.error.type == "unknown_tool"
    assert "add" in result.error.message


async def test_a_hanging_tool_is_stopped_at_its_timeout() -> None:
    started = asyncio.Event()

    async def hang(args: Nothing, ctx: ToolContext) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    registry = ToolRegistry([tool_running(hang, timeout=0.05)])
    result = await asyncio.wait_for(registry.call("subject", None, CTX), 5)
    assert started.is_set()
    assert result.error is not None
    assert result.error.type == "timeout"
    assert result.error.retryable


async def test_a_timeout_inside_the_tool_is_a_tool_error_not_the_registry_timeout() -> None:
    async def inner_timeout(args: Nothing, ctx: ToolContext) -> str:
        raise TimeoutError("upstream took too long")

    result = await ToolRegistry([tool_running(inner_timeout, timeout=30)]).call(
        "subject", None, CTX
    )
    assert result.error is not None
    assert result.error.type == "tool_error"
    assert "upstream took too long" in result.error.message


@pytest.mark.parametrize(
    ("exc", "message", "retryable"),
    [
        (ToolFailure("no such page"), "no such page", False),
        (ToolFailure("busy", retryable=True), "busy", True),
        (ServiceUnavailable("NATS is down"), "NATS is down", True),
        (RuntimeError("boom"), "RuntimeError: boom", False),
        (KeyError("k"), "KeyError: 'k'", False),
    ],
)
async def test_a_tool_that_raises_gives_an_error_result(
    exc: Exception, message: str, retryable: bool
) -> None:
    async def fail(args: Nothing, ctx: ToolContext) -> str:
        raise exc

    result = await ToolRegistry([tool_running(fail)]).call("subject", None, CTX)
    assert result.error is not None
    assert result.error.type == "tool_error"
    assert result.error.message == message
    assert result.error.retryable is retryable


async def test_cancellation_is_not_swallowed() -> None:
    async def hang(args: Nothing, ctx: ToolContext) -> str:
        await asyncio.sleep(3600)
        return "never"

    registry = ToolRegistry([tool_running(hang)])
    call = asyncio.create_task(registry.call("subject", None, CTX))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_results_over_the_cap_are_truncated_and_marked() -> None:
    async def big(args: Nothing, ctx: ToolContext) -> str:
        return "x" * 10_000

    registry = ToolRegistry([tool_running(big)], max_result_chars=1000)
    result = await registry.call("subject", None, CTX)
    assert result.ok
    assert result.truncated
    assert len(result.content) <= 1000
    assert result.content.startswith("xxx")
    assert "[truncated: 10000 characters" in result.content

    capped = ToolRegistry([tool_running(big, max_result_chars=200)])
    small = await capped.call("subject", None, CTX)
    assert len(small.content) <= 200
    assert small.truncated


async def test_every_call_is_recorded_with_arguments_summary_duration_and_error() -> None:
    recorder = InMemoryToolRecorder()
    registry = ToolRegistry([add_tool()], recorder=recorder)
    await registry.call("add", '{"a": 1, "b": 2}', CTX, call_id="c1")
    await registry.call("add", '{"a": "x"}', CTX, call_id="c2")
    await registry.call("nope", "{bad", CTX, call_id="c3")

    ok, invalid, unknown = recorder.records
    assert ok.call_id == "c1"
    assert ok.tool == "add"
    assert ok.arguments == {"a": 1, "b": 2}
    assert ok.ok
    assert json.loads(ok.result_summary) == {"sum": 3}
    assert ok.error_type is None
    assert (ok.tenant, ok.agent, ok.task_id, ok.step) == ("acme", "researcher", "t1", 3)
    assert ok.duration_ms >= 0
    assert ok.started_at.tzinfo is not None

    assert invalid.arguments == {"a": "x"}
    assert not invalid.ok
    assert invalid.error_type == "invalid_arguments"
    assert invalid.error_message

    assert unknown.error_type == "unknown_tool"
    assert unknown.arguments == "{bad"  # what the model sent, as sent


async def test_a_recorder_given_to_the_call_replaces_the_registrys() -> None:
    default, journal = InMemoryToolRecorder(), InMemoryToolRecorder()
    registry = ToolRegistry([add_tool()], recorder=default)
    await registry.call("add", {"a": 1}, CTX, recorder=journal)
    assert default.records == []
    assert [r.tool for r in journal.records] == ["add"]


async def test_policy_allowlists_per_tenant_and_per_agent() -> None:
    async def noop(args: Nothing, ctx: ToolContext) -> str:
        return "ok"

    tools: list[Tool[Any]] = [
        add_tool(),
        tool_running(noop, name="github__search"),
        tool_running(noop, name="github__delete_repo"),
    ]
    policy = (
        ToolPolicy.of(default=["add"])
        .with_tenant("globex", ["add", "github__*"])
        .with_agent("reader", ["add", "github__search"])
    )
    registry = ToolRegistry(tools, policy=policy)

    def names(tenant: str, agent: str | None = None) -> list[str]:
        return [t.name for t in registry.available(tenant=tenant, agent=agent)]

    assert names("acme") == ["add"]
    assert names("globex") == ["add", "github__delete_repo", "github__search"]
    assert names("globex", "reader") == ["add", "github__search"]
    assert names("globex", "writer") == ["add", "github__delete_repo", "github__search"]

    refused = await registry.call("github__search", "{}", ToolContext(tenant="acme"))
    assert refused.error is not None
    assert refused.error.type == "not_allowed"
    assert "tenant 'acme'" in refused.error.message

    by_agent = await registry.call(
        "github__delete_repo", "{}", ToolContext(tenant="globex", agent="reader")
    )
    assert by_agent.error is not None
    assert by_agent.error.type == "not_allowed"
    assert "agent 'reader'" in by_agent.error.message

    allowed = await registry.call("github__search", "{}", ToolContext(tenant="globex"))
    assert allowed.ok


async def test_the_default_policy_allows_every_tool() -> None:
    registry = ToolRegistry([add_tool()])
    assert [t.name for t in registry.available(tenant="anyone", agent="any")] == ["add"]


async def test_a_tool_that_needs_approval_runs_only_when_approved() -> None:
    ran = []

    async def wire_money(args: Nothing, ctx: ToolContext) -> str:
        ran.append(ctx)
        return "sent"

    registry = ToolRegistry([tool_running(wire_money, needs_approval=True)])
    waiting = await registry.call("subject", None, CTX)
    assert waiting.error is not None
    assert waiting.error.type == "approval_required"
    assert ran == []
    approved = await registry.call("subject", None, CTX, approved=True)
    assert approved.ok
    assert len(ran) == 1


async def test_external_tools_get_an_idempotency_key_from_task_step_and_call() -> None:
    seen: list[str | None] = []

    async def send(args: Nothing, ctx: ToolContext) -> str:
        seen.append(ctx.idempotency_key)
        return "sent"

    registry = ToolRegistry(
        [
            tool_running(send, name="send", effect="external"),
            tool_running(send, name="look", effect="read"),
        ]
    )
    first = ToolContext(tenant="acme", task_id="task-9", step=4, call_index=1)
    result = await registry.call("send", None, first)
    await registry.call("send", None, first)  # the same step replayed: the same key
    await registry.call("send", None, ToolContext(tenant="acme", task_id="task-9", step=5))
    await registry.call("look", None, first)
    await registry.call("send", None, ToolContext(tenant="acme"))
    await registry.call("send", None, ToolContext(tenant="acme"))

    assert seen[:4] == ["task-9.4.1", "task-9.4.1", "task-9.5.0", None]
    assert result.idempotency_key == "task-9.4.1"
    adhoc = seen[4:]
    assert all(key and key.startswith("call-") for key in adhoc)
    assert adhoc[0] != adhoc[1]


async def test_registration_rejects_duplicates_and_names_openai_would_refuse() -> None:
    registry = ToolRegistry([add_tool()])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(add_tool())
    for bad in ("", "has space", "dotted.name", "x" * 65):
        with pytest.raises(ValueError, match="must match"):
            add_tool(name=bad)
    registry.unregister("add")
    assert "add" not in registry
    assert len(registry) == 0


async def test_json_schema_arguments_validate_like_the_schema_says() -> None:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "depth": {"type": "integer", "maximum": 3},
        },
        "required": ["path"],
        "additionalProperties": False,
    }

    async def echo(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return args

    registry = ToolRegistry(
        [Tool(name="ls", description="List.", arguments=JsonSchemaArguments(schema), handler=echo)]
    )
    assert registry.openai_tools(tenant="t")[0]["function"]["parameters"] == schema
    ok = await registry.call("ls", {"path": "/tmp", "depth": 2}, CTX)
    assert json.loads(ok.content) == {"path": "/tmp", "depth": 2}

    bad = await registry.call("ls", {"depth": 9, "extra": True}, CTX)
    assert bad.error is not None
    assert bad.error.type == "invalid_arguments"
    messages = " ".join(p["message"] for p in bad.error.problems)
    assert "'path' is a required property" in messages
    assert "9 is greater than the maximum of 3" in messages
    assert "Additional properties are not allowed" in messages
    assert {"field": "depth", "message": "9 is greater than the maximum of 3"} in (
        bad.error.problems
    )

    with pytest.raises(ValueError, match="not a valid JSON schema"):
        JsonSchemaArguments({"type": "object", "properties": {"x": {"type": "nonsense"}}})


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
async def test_arguments_that_cannot_be_stored_are_refused_and_recorded_as_sent(
    escape: str,
) -> None:
    recorder = InMemoryToolRecorder()
    registry = ToolRegistry([add_tool(), tool_running(add, name="echo")], recorder=recorder)
    sent = f'{{"a": 1, "note": "x{escape}"}}'  # valid JSON; the decoded text is not storable
    result = await registry.call("add", sent, CTX)
    assert result.error is not None and result.error.type == "invalid_arguments"
    assert result.error.problems[0]["field"] == "(arguments)"
    assert "note:" in result.error.message
    [record] = recorder.records
    assert record.arguments == sent  # the model's text, which is storable as it is


async def test_a_result_or_an_error_that_cannot_be_stored_is_mended() -> None:
    async def odd(args: Nothing, ctx: ToolContext) -> str:
        return "a\x00b\ud800c"

    async def failing(args: Nothing, ctx: ToolContext) -> str:
        raise ToolFailure("bad \x00 byte \udfff")

    recorder = InMemoryToolRecorder()
    registry = ToolRegistry(
        [tool_running(odd), tool_running(failing, name="failing")], recorder=recorder
    )
    result = await registry.call("subject", None, CTX)
    assert (result.ok, result.content) == (True, "a\ufffdb\ufffdc")
    failed = await registry.call("failing", None, CTX)
    assert failed.error is not None
    assert failed.error.message == "bad \ufffd byte \ufffd"
    assert "\x00" not in failed.content
    for record in recorder.records:  # what the journal keeps
        assert text_problem(record.result_summary) is None
        assert text_problem(record.error_message or "") is None
