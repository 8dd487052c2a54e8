"""The agent loop: model call → tool calls → results fed back, until a final answer.

One :class:`ToolAgent` runs one :class:`~spine.agents.definitions.AgentDefinition`. Each step

1. streams a model answer through the shared router with the tools the agent may use, sending
   the text to the task's feed as it comes (``delta`` events, a few a second);
2. journals the answer before anything else happens;
3. runs the tool calls it asked for, concurrently, through the registry (which checks the
   allowlists, validates arguments, applies timeouts and caps results), journalling each result;
4. feeds the results back as ``tool`` messages — fetched or tool-made text never becomes
   instructions — and goes on, until the model answers without tool calls.

A redelivered task replays its journalled steps instead of calling the model or a tool again.
A tool that needs approval pauses the task before any tool of that step runs; the person's
decision is journalled, and the resumed loop runs the call or tells the model it was refused.
Limits: steps, cost, time from the task's start, cancel, and a bounded number of calls with
invalid arguments; each ends the task with an error that says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, model_validator

from spine.agents.base import AwaitingApproval, RunContext
from spine.agents.definitions import AgentDefinition
from spine.platform.errors import PermanentFailure
from spine.platform.schema import utcnow
from spine.tools.registry import ArgumentRetryBudget
from spine.tools.result import ToolError, ToolResult
from spine.tools.tool import ToolContext

__all__ = ["AgentInput", "ToolAgent"]

_DELTA_INTERVAL = 0.25  # seconds between token batches sent to the feed
_SCHEMA_RETRIES = 1  # times a final answer that misses the output schema is sent back


class AgentInput(BaseModel):
    """The input of a tool-using agent's task: a prompt, or a conversation."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> AgentInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        for message in self.messages or []:
            if message.get("role") not in ("user", "assistant"):
                raise ValueError("messages may only have the roles 'user' and 'assistant'")
        return self


@dataclass(slots=True)
class _Run:
    """What one attempt of the loop has spent so far."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    tool_calls: int = 0
    schema_retries: int = 0
    invalid_arguments: ArgumentRetryBudget = field(default_factory=ArgumentRetryBudget)

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": str(self.cost),
            "tool_calls": self.tool_calls,
        }


class ToolAgent:
    """Runs a declarative agent's loop for one task."""

    input_model: type[BaseModel] = AgentInput

    def __init__(self, definition: AgentDefinition) -> None:
        self.definition = definition

    @property
    def name(self) -> str:
        """The agent's name."""
        return self.definition.name

    @property
    def description(self) -> str:
        """What the agent does."""
        return self.definition.description

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Loop until a final answer or a limit; return the answer with the usage."""
        assert isinstance(request, AgentInput)
        spec = self.definition
        messages = self._opening(request)
        tools = ctx.tools.openai_tools(tenant=ctx.task.tenant, agent=spec.name)
        run = _Run()
        try:
            return await self._loop(ctx, messages, tools, run)
        except Exception:
            # Tool results still being committed belong to the feed of this attempt's end.
            with contextlib.suppress(Exception):
                await ctx.journal.settle()
            raise

    async def _loop(
        self,
        ctx: RunContext,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        run: _Run,
    ) -> dict[str, Any]:
        spec = self.definition
        for step in range(1, spec.max_steps + 1):
            self._check_time(ctx)
            await ctx.checkpoint()
            answer = await self._model_step(ctx, step, messages, tools, run)
            messages.append(_assistant_message(answer))
            calls = answer["tool_calls"]
            if not calls:
                final = self._final(ctx, answer["text"], run, messages)
                if final is not None:
                    await ctx.journal.settle()
                    ctx.emit_at_end("final", {"step": step, **final, "usage": run.usage()})
                    return {**final, "steps": step, "usage": run.usage()}
                continue
            await self._await_approvals(ctx, step, calls)
            results = await ctx.step(self._tool_step(ctx, step, calls, run))
            messages.extend(
                {"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in results
            )
        raise PermanentFailure(
            f"agent {spec.name} gave no final answer within max_steps={spec.max_steps}",
            limit="max_steps",
            usage=run.usage(),
        )

    # -- steps --------------------------------------------------------------------------------

    def _opening(self, request: AgentInput) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.definition.instructions}
        ]
        if request.messages is not None:
            messages.extend(request.messages)
        else:
            messages.append({"role": "user", "content": request.prompt})
        return messages

    async def _model_step(
        self,
        ctx: RunContext,
        step: int,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        run: _Run,
    ) -> dict[str, Any]:
        key = f"s{step}.model"
        recorded = (await ctx.journal.load()).get(key)
        if recorded is not None:
            answer = recorded.data
        else:
            answer, rest = await ctx.step(self._call_model(ctx, step, messages, tools))
            # One commit: the answer, the text not yet sent, the call, the tools it starts.
            events: list[tuple[str, dict[str, Any]]] = []
            if rest:
                events.append(("delta", {"step": step, "text": rest}))
            events.append(
                (
                    "model_call",
                    {
                        "step": step,
                        "model": answer["model"],
                        "provider": answer["provider"],
                        "input_tokens": answer["input_tokens"],
                        "output_tokens": answer["output_tokens"],
                        "cost_usd": answer["cost"],
                        "tool_calls": [c["function"]["name"] for c in answer["tool_calls"]],
                    },
                )
            )
            events.extend(
                ("tool_call_started", _started(step, call))
                for call in answer["tool_calls"]
                if not self._gated(ctx, call)
            )
            if answer["tool_calls"] and all(self._may_repeat(ctx, c) for c in answer["tool_calls"]):
                # Only read-only tools follow: the commit overlaps them (see record_behind).
                await ctx.journal.record_behind(key, "model", answer, events)
            else:
                await ctx.journal.record(key, "model", answer, events)
        run.input_tokens += answer["input_tokens"]
        run.output_tokens += answer["output_tokens"]
        run.cost += Decimal(answer["cost"])
        limit = self.definition.max_cost
        if limit is not None and run.cost > limit:
            raise PermanentFailure(
                f"agent {self.name} spent {run.cost} USD, over its max_cost of {limit}",
                limit="max_cost",
                usage=run.usage(),
            )
        return answer

    async def _call_model(
        self,
        ctx: RunContext,
        step: int,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """Stream one answer, sending text a few times a second; return it and the text unsent."""
        policy = self.definition.model
        params = policy.params()
        if tools:
            params["tools"] = tools
        if self.definition.output_schema is not None and not tools:
            params["response_format"] = {"type": "json_object"}
        model = policy.models[0] if policy.models else None
        stream = await ctx.models.stream(messages, model=model, **params)
        pending: list[str] = []
        sent_at = time.monotonic()
        async for delta in stream:
            if delta.text:
                pending.append(delta.text)
            if pending and time.monotonic() - sent_at >= _DELTA_INTERVAL:
                await ctx.journal.settle()  # the last step's tool results come first
                await ctx.emit("delta", {"step": step, "text": "".join(pending)})
                pending.clear()
                sent_at = time.monotonic()
        answer = {
            "text": "".join(stream.texts),
            "tool_calls": [
                _normalised_call(stream.tool_calls[i], step, i) for i in sorted(stream.tool_calls)
            ],
            "model": stream.model,
            "provider": stream.provider,
            "input_tokens": stream.input_tokens,
            "output_tokens": stream.output_tokens,
            "cost": str(stream.cost or 0),
        }
        return answer, "".join(pending)

    async def _await_approvals(
        self, ctx: RunContext, step: int, calls: list[dict[str, Any]]
    ) -> None:
        # Before any tool of the step runs: a pause then repeats nothing on resume.
        entries = await ctx.journal.load()
        for call in calls:
            tool = ctx.tools.get(call["function"]["name"])
            key = _approval_key(step, call["id"])
            if tool is None or not tool.needs_approval or key in entries:
                continue
            if f"s{step}.tool.{call['id']}" in entries:
                continue
            allowed = ctx.tools.policy.allows(tool.name, tenant=ctx.task.tenant, agent=self.name)
            if not allowed:
                continue  # the registry refuses it; no person needs to be asked
            until = utcnow() + timedelta(seconds=self.definition.approval_timeout)
            proposal = {
                "key": key,
                "step": step,
                "call_id": call["id"],
                "tool": tool.name,
                "arguments": call["function"]["arguments"],
            }
            await ctx.emit("approval_requested", {**proposal, "expires_at": until.isoformat()})
            raise AwaitingApproval(proposal, until=until)

    async def _tool_step(
        self, ctx: RunContext, step: int, calls: list[dict[str, Any]], run: _Run
    ) -> list[ToolResult]:
        entries = await ctx.journal.load()
        results = await asyncio.gather(
            *(self._tool_call(ctx, step, index, call, entries) for index, call in enumerate(calls))
        )
        for result in results:
            run.tool_calls += 1
            if result.error is not None and result.error.type == "invalid_arguments":
                ctx.signal("tool_args_rejected")
            if not run.invalid_arguments.spend(result):
                raise PermanentFailure(
                    f"the model sent invalid tool arguments more than "
                    f"{run.invalid_arguments.limit} times; last: {result.content[:300]}",
                    limit="invalid_tool_arguments",
                )
        return list(results)

    async def _tool_call(
        self,
        ctx: RunContext,
        step: int,
        index: int,
        call: dict[str, Any],
        entries: dict[str, Any],
    ) -> ToolResult:
        key = f"s{step}.tool.{call['id']}"
        recorded = entries.get(key)
        if recorded is not None:
            return ToolResult.model_validate(recorded.data)
        name = call["function"]["name"]
        arguments = call["function"]["arguments"]
        decision = entries.get(_approval_key(step, call["id"]))
        if self._gated(ctx, call):  # its start was not announced with the model's answer
            await ctx.emit("tool_call_started", _started(step, call))
        if decision is not None and not decision.data.get("approved"):
            ctx.signal("approval_rejected")
            reason = decision.data.get("reason") or "no reason given"
            result = ToolResult.failure(
                call_id=call["id"],
                tool=name,
                error=ToolError(type="rejected", message=f"a person refused this call: {reason}"),
            )
        else:
            tool_ctx = ToolContext(
                tenant=ctx.task.tenant,
                agent=self.name,
                task_id=ctx.task.id,
                step=step,
                call_index=index,
            )
            result = await ctx.tools.call(
                name, arguments, tool_ctx, call_id=call["id"], approved=decision is not None
            )
        finished = {
            "step": step,
            "call_id": call["id"],
            "tool": name,
            "ok": result.ok,
            "error": result.error.type if result.error else None,
            "result": result.summary(),
            "truncated": result.truncated,
            "duration_ms": result.duration_ms,
        }
        tool = ctx.tools.get(name)
        if tool is not None and tool.effect == "read" and decision is None:
            # A read may run again: its commit overlaps the next model call.
            await ctx.journal.record_behind(
                key, "tool", result.model_dump(mode="json"), [("tool_call_finished", finished)]
            )
        else:
            await ctx.journal.record(
                key, "tool", result.model_dump(mode="json"), [("tool_call_finished", finished)]
            )
        return result

    def _may_repeat(self, ctx: RunContext, call: dict[str, Any]) -> bool:
        """Whether running ``call`` again on a replay harms nothing: a read-only tool, asking
        no person first."""
        tool = ctx.tools.get(call["function"]["name"])
        return tool is not None and tool.effect == "read" and not tool.needs_approval

    def _gated(self, ctx: RunContext, call: dict[str, Any]) -> bool:
        tool = ctx.tools.get(call["function"]["name"])
        return tool is not None and tool.needs_approval

    # -- the end --------------------------------------------------------------------------------

    def _final(
        self, ctx: RunContext, text: str, run: _Run, messages: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Return the result, or None when the answer goes back for another try."""
        schema = self.definition.output_schema
        if schema is None:
            return {"text": text}
        problem: str | None
        try:
            output = json.loads(text)
            errors = sorted(Draft202012Validator(schema).iter_errors(output), key=str)
            problem = errors[0].message if errors else None
        except ValueError as exc:
            output, problem = None, f"not JSON ({exc}): {text[:200]!r}"
        if problem is None:
            return {"text": text, "output": output}
        ctx.signal("schema_failed")  # a quality signal on the model call that answered
        if run.schema_retries >= _SCHEMA_RETRIES:
            raise PermanentFailure(
                f"agent {self.name}'s final answer does not match its output schema: {problem}",
                limit="output_schema",
            )
        run.schema_retries += 1
        messages.append(
            {
                "role": "user",
                "content": f"Your answer does not match the required JSON schema: {problem}. "
                "Answer again with JSON only.",
            }
        )
        return None

    def _check_time(self, ctx: RunContext) -> None:
        timeout = self.definition.timeout
        started = ctx.task.started_at
        if timeout is None or started is None:
            return
        if (utcnow() - started).total_seconds() > timeout:
            raise PermanentFailure(
                f"agent {self.name} ran past its timeout of {timeout:g} s", limit="timeout"
            )


def _started(step: int, call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    return {
        "step": step,
        "call_id": call["id"],
        "tool": function["name"],
        "arguments": function["arguments"],
    }


def _approval_key(step: int, call_id: str) -> str:
    return f"s{step}.approval.{call_id}"


def _normalised_call(call: dict[str, Any], step: int, index: int) -> dict[str, Any]:
    # Some models send no id: the step and position make one that replays the same.
    function = call.get("function") or {}
    return {
        "id": call.get("id") or f"call_s{step}_{index}",
        "type": "function",
        "function": {
            "name": str(function.get("name") or ""),
            "arguments": str(function.get("arguments") or ""),
        },
    }


def _assistant_message(answer: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer["text"] or None}
    if answer["tool_calls"]:
        message["tool_calls"] = answer["tool_calls"]
    return message
