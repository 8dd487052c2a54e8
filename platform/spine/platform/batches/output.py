"""What a batch shows: OpenAI's ``batch`` object, and the lines of its output and error files.

A line of either file reads ``{"id", "custom_id", "response", "error"}``: an answer is
``response: {"status_code": 200, "request_id": <task id>, "body": <chat.completion>}``; a
request the model (or the router) refused carries its HTTP status and OpenAI error body there
instead; a line that never got that far (rejected when the batch was made, cancelled, out of
attempts) has ``response: null`` and ``error: {"code", "message"}`` (rejected lines also name
their ``line`` and ``param``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from spine.platform.models.openai_errors import GatewayError, error_body
from spine.platform.tasks import TERMINAL_STATES

__all__ = [
    "FINAL_STATUSES",
    "Batch",
    "BatchStatus",
    "RequestCounts",
    "batch_of",
    "line_request_id",
    "render_line",
]

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})


class RequestCounts(BaseModel):
    """How many requests a batch holds, answered and not."""

    total: int
    completed: int
    failed: int


class Batch(BaseModel):
    """A batch as its owner sees it."""

    id: str
    tenant: str
    endpoint: str
    completion_window: str
    status: BatchStatus
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    model: str | None
    request_counts: RequestCounts
    errors: list[dict[str, Any]] | None
    usage: dict[str, Any] | None
    metadata: dict[str, str] | None
    created_at: datetime
    in_progress_at: datetime | None
    expires_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None

    @property
    def is_final(self) -> bool:
        """Tell whether the batch's files are written (it will not change again)."""
        return self.status in FINAL_STATUSES

    def openai(self) -> dict[str, Any]:
        """Render as OpenAI's ``batch`` object."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": _epoch(self.created_at),
            "in_progress_at": _epoch(self.in_progress_at),
            "expires_at": _epoch(self.expires_at),
            "finalizing_at": _epoch(self.finalizing_at),
            "completed_at": _epoch(self.completed_at),
            "failed_at": _epoch(self.failed_at),
            "expired_at": None,
            "cancelling_at": _epoch(self.cancelling_at),
            "cancelled_at": _epoch(self.cancelled_at),
            "request_counts": self.request_counts.model_dump(),
            "metadata": self.metadata,
            "model": self.model,
            "usage": self.usage,
        }


def line_request_id(batch_id: str, line: int) -> str:
    """Return the ``batch_req_`` id of a line in the output files (the same on every run)."""
    return f"batch_req_{uuid.uuid5(uuid.NAMESPACE_URL, f'{batch_id}#{line}').hex}"


def render_line(
    batch_id: str, line: Mapping[Any, Any], *, cancelling: bool
) -> tuple[bytes, dict[str, Any] | None]:
    """Render a line of the output or error file, and the answer when the line has one."""
    record: dict[str, Any] = {
        "id": line_request_id(batch_id, line["line"]),
        "custom_id": line["custom_id"],
        "response": None,
        "error": None,
    }
    task_id = line["task_id"]
    state = line["state"]
    answer: dict[str, Any] | None = None
    if task_id is None:
        record["error"] = line["error"]
    elif state == "succeeded":
        answer = line["result"] or {}
        record["response"] = {"status_code": 200, "request_id": task_id, "body": answer}
    elif state == "cancelled":
        code = "batch_cancelled" if cancelling else "request_cancelled"
        record["error"] = {"code": code, "message": "the request was cancelled before it ended"}
    else:
        error = line["task_error"] or {}
        answered = GatewayError.of_task_error(error)
        if answered is not None:
            record["response"] = {
                "status_code": answered.status,
                "request_id": task_id,
                "body": error_body(answered),
            }
        else:
            record["error"] = {
                "code": str(error.get("type") or state or "missing_task"),
                "message": str(error.get("message") or f"the request ended as {state}"),
            }
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    return text.encode(), answer


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def batch_of(row: Mapping[Any, Any], states: Mapping[str, int] | None = None) -> Batch:
    """Return the batch as clients see it; ``states`` counts its line tasks by state."""
    if states is None:
        counts = RequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"])
    else:
        ended_badly = sum(
            count
            for state, count in states.items()
            if state in TERMINAL_STATES and state != "succeeded"
        )
        counts = RequestCounts(
            total=row["total"],
            completed=states.get("succeeded", 0),
            failed=row["invalid"] + ended_badly,
        )
    return Batch(
        id=row["id"],
        tenant=row["tenant"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        status=row["status"],
        input_file_id=row["input_file_id"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        model=row["model"],
        request_counts=counts,
        errors=row["errors"],
        usage=row["usage"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        in_progress_at=row["in_progress_at"],
        expires_at=row["expires_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
    )
