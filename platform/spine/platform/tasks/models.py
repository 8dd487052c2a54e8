"""What a task is: the request that submits one, the task as clients see it, its progress events."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spine.platform.errors import SpineError
from spine.platform.inputs import StoredJson, StoredMoment, storable_json

__all__ = [
    "TERMINAL_STATES",
    "Claim",
    "NewTask",
    "Priority",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskPage",
    "TaskState",
    "TaskSubmission",
]

TaskState = Literal[
    "queued", "running", "waiting_approval", "succeeded", "failed", "cancelled", "dead_lettered"
]
Priority = Literal["high", "normal", "low"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "dead_lettered"})


def _object_or_prompt(schema: dict[str, Any]) -> None:
    # The document says what the validator below takes: an object, or a bare prompt.
    described = dict(schema)
    schema.clear()
    schema["anyOf"] = [described, {"type": "string", "minLength": 1}]
    schema["description"] = (
        'The agent\'s input, e.g. {"prompt": "..."} (chat and tool-using agents); a bare '
        'string is taken as {"prompt": <string>}.'
    )


class TaskSubmission(BaseModel):
    """The body of ``POST /v1/tasks``.

    ``input`` is the agent's input object; a bare string is taken as ``{"prompt": <string>}``,
    the shape of the ``chat`` agent and of every tool-using agent.
    """

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    input: Annotated[dict[str, Any], StoredJson] = Field(json_schema_extra=_object_or_prompt)
    metadata: Annotated[dict[str, Any], StoredJson] = Field(default_factory=dict, max_length=64)
    priority: Priority = "normal"
    deadline: StoredMoment | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _bare_prompt(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            return {"prompt": value}
        if not isinstance(value, dict):
            raise ValueError(
                'must be the agent\'s input object, e.g. {"prompt": "Say hello"}, or a '
                "non-empty string (taken as the prompt)"
            )
        return value

    def fingerprint(self) -> str:
        """Hash the request so a reused Idempotency-Key can be checked against it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TaskError(BaseModel):
    """Why a task, or one attempt of it, failed: the ``error`` clients see.

    ``type`` is an ``error_type`` of the error tree (or ``too_many_attempts``,
    ``deadline_exceeded``, ``cancelled``); details of the error (``field``, ``provider``,
    ``cause``, ``fallback_path``, ``attempts``, ``reason``, ...) come as further fields.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    retryable: bool = False

    @classmethod
    def of(cls, exc: SpineError) -> TaskError:
        """Describe a platform error raised while the task ran."""
        return cls.model_validate({**exc.to_dict(), "retryable": exc.retryable})

    def stored(self) -> dict[str, Any]:
        """Return the JSON the task row keeps (what cannot be stored mended: a message may
        quote a provider's or a tool's text)."""
        return cast("dict[str, Any]", storable_json(self.model_dump(mode="json")))


class Task(BaseModel):
    """A task as clients see it."""

    id: str
    tenant: str
    key_id: str | None = None
    agent: str
    state: TaskState
    input: dict[str, Any]
    metadata: dict[str, Any]
    priority: Priority
    deadline: datetime | None
    attempts: int
    result: dict[str, Any] | None
    error: TaskError | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    approval: dict[str, Any] | None = None
    approval_expires_at: datetime | None = None
    resumes: int = 0

    @property
    def failed_attempts(self) -> int:
        """Attempts that did not end in a pause for approval (what ``max_attempts`` limits)."""
        return self.attempts - self.resumes

    @property
    def is_terminal(self) -> bool:
        """Tell whether the task has reached an end state."""
        return self.state in TERMINAL_STATES


class TaskEvent(BaseModel):
    """A progress event; ``seq`` is its position in the task's feed, starting at 1."""

    task_id: str
    tenant: str
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime

    @property
    def is_final(self) -> bool:
        """Tell whether this event ends the task's feed."""
        return self.type == "state" and self.data.get("state") in TERMINAL_STATES


@dataclass(slots=True, kw_only=True)
class TaskPage:
    """One page of a task listing and the cursor to the next page."""

    tasks: list[Task]
    next_cursor: str | None


@dataclass(slots=True, kw_only=True)
class NewTask:
    """A task to insert with :meth:`TaskStore.insert_many`: its id, request and key."""

    id: str
    submission: TaskSubmission
    idempotency_key: str


@dataclass(slots=True, kw_only=True)
class Claim:
    """What a worker learned when it tried to claim a delivered task."""

    # throttled: its tenant runs as many tasks as it may (see spine.platform.limits.running).
    outcome: Literal["claimed", "finished", "busy", "paused", "missing", "throttled"]
    task: Task | None = None
    attempt: int = 0
    retry_in: float = 0.0
    events: list[TaskEvent] = field(default_factory=list)
