"""What a tool call gives back, and the record kept of it.

A call never raises for the model's mistakes or the tool's failures: it answers a
:class:`ToolResult`, whose ``content`` is the text the model reads as the tool message (for an
error, a small JSON object naming the error). Every call is also described by a
:class:`ToolCallRecord` handed to a :class:`ToolCallRecorder` (the agent loop's journal later;
:class:`InMemoryToolRecorder` in tests).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, Protocol, TypeAlias

from pydantic import BaseModel, Field

__all__ = [
    "InMemoryToolRecorder",
    "ToolCallRecord",
    "ToolCallRecorder",
    "ToolError",
    "ToolErrorType",
    "ToolResult",
    "truncate",
]

ToolErrorType: TypeAlias = Literal[
    "unknown_tool",
    "not_allowed",
    "invalid_arguments",
    "approval_required",
    "rejected",
    "timeout",
    "tool_error",
]

_SUMMARY_CHARS = 500


class ToolError(BaseModel):
    """Why a call did not succeed.

    ``retryable`` is true when the same call may work later (a timeout, a service that is
    down); ``problems`` name each invalid argument.
    """

    type: ToolErrorType
    message: str
    retryable: bool = False
    problems: list[dict[str, str]] = Field(default_factory=list)


class ToolResult(BaseModel):
    """The outcome of one tool call; ``content`` is what the model is shown."""

    call_id: str
    tool: str
    ok: bool
    content: str
    error: ToolError | None = None
    truncated: bool = False
    duration_ms: float = 0.0
    idempotency_key: str | None = None

    @classmethod
    def failure(
        cls, *, call_id: str, tool: str, error: ToolError, duration_ms: float = 0.0
    ) -> ToolResult:
        """Build the result of a failed call; its content is the error as JSON for the model."""
        body: dict[str, Any] = {"type": error.type, "message": error.message}
        if error.problems:
            body["problems"] = error.problems
        return cls(
            call_id=call_id,
            tool=tool,
            ok=False,
            content=json.dumps({"error": body}, ensure_ascii=False),
            error=error,
            duration_ms=duration_ms,
        )

    def summary(self, limit: int = _SUMMARY_CHARS) -> str:
        """Return the start of the content, for records and progress events."""
        text, _ = truncate(self.content, limit)
        return text


class ToolCallRecord(BaseModel):
    """One call as recorded: who asked, with what, and what came of it."""

    call_id: str
    tool: str
    tenant: str
    agent: str | None = None
    task_id: str | None = None
    step: int = 0
    call_index: int = 0
    arguments: Any = None
    ok: bool
    error_type: ToolErrorType | None = None
    error_message: str | None = None
    result_summary: str
    truncated: bool = False
    duration_ms: float
    started_at: datetime
    idempotency_key: str | None = None


class ToolCallRecorder(Protocol):
    """Where the registry reports every call; an error here reaches the caller."""

    async def record(self, record: ToolCallRecord) -> None:
        """Keep the record."""
        ...


class InMemoryToolRecorder:
    """Keep records in a list (tests, and processes with no journal)."""

    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        """Append the record."""
        self.records.append(record)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """Cap ``text`` at ``limit`` characters, marking the cut; tell whether it was cut."""
    if len(text) <= limit:
        return text, False
    marker = f"\n[truncated: {len(text)} characters, first {{kept}} shown]"
    kept = max(0, limit - len(marker.format(kept=limit)))
    return text[:kept] + marker.format(kept=kept), True
