"""The tool registry: one place that knows every tool, checks every call and records it.

A call goes: look the tool up → check the policy → parse and validate the arguments → check
approval → run under the tool's timeout → render and cap the result → record (the call's row,
``spine_tool_calls_total``, and a span when tracing is on). Arguments the platform could not
keep (a NUL or a lone surrogate, spelled as a JSON escape) are refused like invalid ones; a
result or error message holding them is mended (U+FFFD): either would otherwise fail the
journal's write and, with it, every attempt of the task. Each way it can go wrong ends in a
:class:`~spine.tools.result.ToolResult` with an error the model can read, never an exception;
only cancellation (and a failing recorder) propagate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from spine.platform.errors import SpineError
from spine.platform.inputs import json_problem, storable_text
from spine.platform.telemetry import record_tool_call, tool_call
from spine.tools.policy import ToolPolicy
from spine.tools.result import (
    ToolCallRecord,
    ToolCallRecorder,
    ToolError,
    ToolErrorType,
    ToolResult,
    truncate,
)
from spine.tools.tool import ArgumentsInvalid, Tool, ToolContext, ToolFailure, ToolOutput

__all__ = ["ArgumentRetryBudget", "ToolRegistry"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESULT_CHARS = 16_000
_LISTED = 30  # tool names an unknown-tool error lists


class ToolRegistry:
    """Every tool a process can run, with the policy that says who may run which."""

    def __init__(
        self,
        tools: Iterable[Tool[Any]] = (),
        *,
        policy: ToolPolicy | None = None,
        recorder: ToolCallRecorder | None = None,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self.policy = policy or ToolPolicy()
        self.recorder = recorder
        self.max_result_chars = max_result_chars
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        """Add a tool; a second tool with the same name is a mistake."""
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def unregister(self, name: str) -> None:
        """Remove a tool, if it is there."""
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool[Any] | None:
        """Return the tool of that name, if any."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Return the names of every tool, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def available(self, *, tenant: str, agent: str | None = None) -> list[Tool[Any]]:
        """Return the tools the tenant (and the agent, when given) may use, sorted by name."""
        return [
            self._tools[name]
            for name in self.names()
            if self.policy.allows(name, tenant=tenant, agent=agent)
        ]

    def openai_tools(self, *, tenant: str, agent: str | None = None) -> list[dict[str, Any]]:
        """Render the tools the caller may use as OpenAI's ``tools`` list."""
        return [tool.openai_schema() for tool in self.available(tenant=tenant, agent=agent)]

    async def call(
        self,
        name: str,
        arguments: str | Mapping[str, Any] | None,
        ctx: ToolContext,
        *,
        call_id: str | None = None,
        approved: bool = False,
        recorder: ToolCallRecorder | None = None,
    ) -> ToolResult:
        """Run one tool call as the model asked for it, and record it.

        ``arguments`` is the model's JSON text or an already parsed object. ``approved`` says
        that a person approved this call, for tools that need approval. ``recorder`` replaces
        the registry's own for this call.
        """
        call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
        with tool_call(name, call_id) as traced:
            result = await self._call(name, arguments, ctx, call_id, approved, recorder)
            traced(result.error.type if result.error else None)
        return result

    async def _call(
        self,
        name: str,
        arguments: str | Mapping[str, Any] | None,
        ctx: ToolContext,
        call_id: str,
        approved: bool,
        recorder: ToolCallRecorder | None,
    ) -> ToolResult:
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        parsed, raw_problem = _parse(arguments)
        tool = self._tools.get(name)
        result: ToolResult
        if tool is None:
            allowed = [t.name for t in self.available(tenant=ctx.tenant, agent=ctx.agent)]
            listed = ", ".join(allowed[:_LISTED]) + (", ..." if len(allowed) > _LISTED else "")
            result = _failed(
                call_id,
                name,
                "unknown_tool",
                f"there is no tool named {name!r}; the tools are: {listed or 'none'}",
            )
        elif (refusal := self.policy.refusal(name, tenant=ctx.tenant, agent=ctx.agent)) is not None:
            result = _failed(call_id, name, "not_allowed", refusal)
        else:
            if tool.effect == "external" and ctx.idempotency_key is None:
                ctx = dataclasses.replace(ctx, idempotency_key=ctx.derived_idempotency_key())
            result = await self._run(tool, parsed, raw_problem, ctx, call_id, approved)
        seconds = time.perf_counter() - started
        result.duration_ms = round(seconds * 1000, 3)
        result.idempotency_key = ctx.idempotency_key
        # An unknown name is the model's free text: it never becomes a label.
        record_tool_call(
            name if tool is not None else "unknown",
            None if result.ok else (result.error.type if result.error else "failed"),
            seconds,
        )
        logger.info(
            "tool %s %s in %.1f ms",
            name,
            "ok" if result.ok else (result.error.type if result.error else "failed"),
            result.duration_ms,
        )
        active = recorder or self.recorder
        if active is not None:
            raw = parsed if raw_problem is None else _as_given(arguments)
            await active.record(_record(result, ctx, raw, started_at))
        return result

    async def _run(
        self,
        tool: Tool[Any],
        parsed: Mapping[str, Any],
        raw_problem: str | None,
        ctx: ToolContext,
        call_id: str,
        approved: bool,
    ) -> ToolResult:
        if raw_problem is not None:
            return _failed(
                call_id,
                tool.name,
                "invalid_arguments",
                f"the arguments are not a JSON object the tool can take: {raw_problem}",
                problems=[{"field": "(arguments)", "message": raw_problem}],
            )
        try:
            args = tool.arguments.validate(parsed)
        except ArgumentsInvalid as exc:
            return _failed(
                call_id,
                tool.name,
                "invalid_arguments",
                f"invalid arguments for {tool.name}: {exc}",
                problems=[{"field": p.field, "message": p.message} for p in exc.problems],
            )
        if tool.needs_approval and not approved:
            return _failed(
                call_id,
                tool.name,
                "approval_required",
                f"{tool.name} needs a person's approval before it runs",
            )
        deadline = asyncio.timeout(tool.timeout)
        try:
            async with deadline:
                output = await tool.handler(args, ctx)
        except TimeoutError as exc:
            if not deadline.expired():
                return _failed(call_id, tool.name, "tool_error", _describe(exc), retryable=True)
            return _failed(
                call_id,
                tool.name,
                "timeout",
                f"{tool.name} did not finish within {tool.timeout:g} s",
                retryable=True,
            )
        except ToolFailure as exc:
            return _failed(call_id, tool.name, "tool_error", exc.message, retryable=exc.retryable)
        except SpineError as exc:
            return _failed(call_id, tool.name, "tool_error", exc.message, retryable=exc.retryable)
        except Exception as exc:
            logger.warning("tool %s raised", tool.name, exc_info=True)
            return _failed(call_id, tool.name, "tool_error", _describe(exc))
        content, truncated = truncate(
            storable_text(_render(output)), tool.max_result_chars or self.max_result_chars
        )
        return ToolResult(
            call_id=call_id,
            tool=tool.name,
            ok=True,
            content=content,
            truncated=truncated,
        )


@dataclass(slots=True, kw_only=True)
class ArgumentRetryBudget:
    """How many calls with invalid arguments one task may make before the loop gives up."""

    limit: int = 3
    used: int = 0

    def spend(self, result: ToolResult) -> bool:
        """Count the result if its arguments were invalid; tell whether the budget still holds."""
        if result.error is not None and result.error.type == "invalid_arguments":
            self.used += 1
        return self.used <= self.limit

    @property
    def exhausted(self) -> bool:
        """Tell whether more invalid calls were made than allowed."""
        return self.used > self.limit


def _parse(arguments: str | Mapping[str, Any] | None) -> tuple[Mapping[str, Any], str | None]:
    if arguments is None:
        return {}, None
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}, None
        try:
            value = json.loads(arguments)
        except ValueError as exc:
            return {}, f"not valid JSON ({exc})"
    else:
        value = arguments
    if not isinstance(value, Mapping):
        return {}, f"expected an object, got {type(value).__name__}"
    problem = json_problem(value)
    if problem is not None:
        return {}, problem.message()
    return value, None


def _as_given(arguments: str | Mapping[str, Any] | None) -> str | None:
    # Refused arguments are recorded as the model wrote them: text, mended if need be (an
    # object holding what cannot be kept is not recorded at all).
    return storable_text(arguments) if isinstance(arguments, str) else None


def _render(output: ToolOutput) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, BaseModel):
        return output.model_dump_json()
    return json.dumps(output, ensure_ascii=False, default=str)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(
    call_id: str,
    tool: str,
    kind: ToolErrorType,
    message: str,
    *,
    retryable: bool = False,
    problems: list[dict[str, str]] | None = None,
) -> ToolResult:
    mended = [{k: storable_text(v) for k, v in p.items()} for p in problems or []]
    error = ToolError(
        type=kind, message=storable_text(message), retryable=retryable, problems=mended
    )
    return ToolResult.failure(call_id=call_id, tool=tool, error=error)


def _record(
    result: ToolResult, ctx: ToolContext, arguments: Any, started_at: datetime
) -> ToolCallRecord:
    return ToolCallRecord(
        call_id=result.call_id,
        tool=result.tool,
        tenant=ctx.tenant,
        agent=ctx.agent,
        task_id=ctx.task_id,
        step=ctx.step,
        call_index=ctx.call_index,
        arguments=dict(arguments) if isinstance(arguments, Mapping) else arguments,
        ok=result.ok,
        error_type=result.error.type if result.error else None,
        error_message=result.error.message if result.error else None,
        result_summary=result.summary(),
        truncated=result.truncated,
        duration_ms=result.duration_ms,
        started_at=started_at,
        idempotency_key=ctx.idempotency_key,
    )
