"""A batch's lines as tasks: one ``completion`` task per runnable line, idempotent per line."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from spine.platform.batches.input import BatchInput
from spine.platform.tasks import NewTask, TaskSubmission

__all__ = ["LINE_AGENT", "line_key", "line_rows"]

LINE_AGENT = "completion"
"""The agent that runs one line."""
_MAX_KEY = 255


def line_key(batch_id: str, custom_id: str) -> str:
    """Return the idempotency key of a batch line's task (hashed if it would be too long)."""
    key = f"batch:{batch_id}:{custom_id}"
    if len(key) <= _MAX_KEY:
        return key
    return f"batch:{batch_id}:sha256:{hashlib.sha256(custom_id.encode()).hexdigest()}"


def line_rows(batch_id: str, parsed: BatchInput) -> tuple[list[NewTask], list[dict[str, Any]]]:
    """Return the tasks of a batch's runnable lines and the rows of all its lines."""
    new: list[NewTask] = []
    lines: list[dict[str, Any]] = []
    for request in parsed.requests:
        task = NewTask(
            id=str(uuid.uuid4()),
            submission=TaskSubmission(
                agent=LINE_AGENT,
                input=request.body,
                metadata={
                    "batch_id": batch_id,
                    "custom_id": request.custom_id,
                    "line": request.line,
                },
                priority="low",
            ),
            idempotency_key=line_key(batch_id, request.custom_id),
        )
        new.append(task)
        lines.append(
            {
                "batch_id": batch_id,
                "line": request.line,
                "custom_id": request.custom_id,
                "task_id": task.id,
                "error": None,
            }
        )
    lines.extend(
        {
            "batch_id": batch_id,
            "line": error.line,
            "custom_id": error.custom_id,
            "task_id": None,
            "error": error.openai(),
        }
        for error in parsed.errors
    )
    return new, lines
