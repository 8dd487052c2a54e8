"""``/v1/tasks``: submit, read, list, cancel, and follow a task's progress over SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from spine.platform.app.api.audit import record
from spine.platform.app.api.auth import Caller, authenticate, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.app.api.hot_routes import FastJSONResponse
from spine.platform.app.api.input_guard import checked_json
from spine.platform.errors import BadRequest
from spine.platform.keys import Principal
from spine.platform.tasks import Task, TaskState, TaskSubmission

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tasks"])

_MAX_KEY = 255  # characters of an Idempotency-Key
MAX_SEQ = 2**31 - 1
"""The largest event number a task's feed can hold (its column is a 32-bit integer)."""


class TaskLinks(BaseModel):
    """Where to look at a task next."""

    self: str
    events: str
    cancel: str


class TaskResponse(Task):
    """A task with its links."""

    links: TaskLinks

    @classmethod
    def of(cls, task: Task) -> TaskResponse:
        """Attach the links to a task."""
        base = f"/v1/tasks/{task.id}"
        return cls(
            **task.model_dump(),
            links=TaskLinks(self=base, events=f"{base}/events", cancel=f"{base}/cancel"),
        )


class TaskList(BaseModel):
    """A page of tasks."""

    data: list[TaskResponse]
    next_cursor: str | None


@router.post("/tasks", status_code=202, response_model=TaskResponse, responses=documented(409))
async def submit_task(
    submission: TaskSubmission,
    request: Request,
    response: Response,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=_MAX_KEY)] = None,
) -> TaskResponse:
    """Accept a task: it is committed, then queued for a worker."""
    accepted, headers = await _accept(request, submission, caller, idempotency_key)
    response.headers.update(headers)
    return accepted


async def submit_task_fast(request: Request) -> Response | None:
    """Answer a well-formed ``POST /v1/tasks`` as :func:`submit_task` does, without FastAPI
    building its arguments (:mod:`~spine.platform.app.api.hot_routes`); decline (None) anything
    else, for FastAPI's route to answer in its own words.

    Well-formed: a JSON content type, at most one ``Idempotency-Key`` of at most 255
    characters, and a body that is a valid :class:`TaskSubmission`, decoded and validated as
    FastAPI would. Nothing happens before that is known; then the caller is authenticated.
    """
    keys = request.headers.getlist("idempotency-key")
    if not _is_json(request.headers.get("content-type", "")) or len(keys) > 1:
        return None
    if keys and len(keys[0]) > _MAX_KEY:
        return None
    body = checked_json(request.scope)  # decoded by the input guard, unless it was not JSON
    try:
        if body is None:
            body = json.loads(await request.body())
        submission = TaskSubmission.model_validate(body)
    except (ValueError, ValidationError):  # not JSON (nor UTF-8), or not a submission
        return None
    caller = await authenticate(request)
    accepted, headers = await _accept(request, submission, caller, keys[0] if keys else None)
    return FastJSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


async def _accept(
    request: Request, submission: TaskSubmission, caller: Principal, idempotency_key: str | None
) -> tuple[TaskResponse, dict[str, str]]:
    """Submit the task; return the answer and its headers."""
    task, created = await platform_of(request).dispatcher.submit(
        submission, principal=caller, idempotency_key=idempotency_key
    )
    headers = {"Location": f"/v1/tasks/{task.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return TaskResponse.of(task), headers


def _is_json(content_type: str) -> bool:
    # The types FastAPI decodes as JSON for a body parameter.
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


@router.get("/tasks", response_model=TaskList)
async def list_tasks(
    request: Request,
    caller: Caller,
    state: TaskState | None = None,
    agent: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> TaskList:
    """List the caller's tasks, newest first."""
    page = await platform_of(request).tasks.list_page(
        tenant=caller.tenant, state=state, agent=agent, limit=limit, cursor=cursor
    )
    return TaskList(data=[TaskResponse.of(t) for t in page.tasks], next_cursor=page.next_cursor)


@router.get("/tasks/{task_id}", response_model=TaskResponse)
async def get_task(task_id: str, request: Request, caller: Caller) -> TaskResponse:
    """Return one of the caller's tasks."""
    return TaskResponse.of(await platform_of(request).tasks.get(task_id, tenant=caller.tenant))


@router.post(
    "/tasks/{task_id}/cancel",
    status_code=202,
    response_model=TaskResponse,
    responses=documented(409),
)
async def cancel_task(task_id: str, request: Request, caller: Caller) -> TaskResponse:
    """Cancel a queued task now, or a running one at its next step."""
    task = await platform_of(request).dispatcher.cancel(task_id, principal=caller)
    return TaskResponse.of(task)


class Decision(BaseModel):
    """The body of an approval or a rejection; a rejection's reason reaches the model."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


@router.post(
    "/tasks/{task_id}/approve",
    status_code=202,
    response_model=TaskResponse,
    responses=documented(409),
)
async def approve_task(
    task_id: str, request: Request, caller: Caller, body: Decision | None = None
) -> TaskResponse:
    """Let a paused task make the call it proposed; it is queued to go on."""
    task = await platform_of(request).dispatcher.decide(
        task_id, principal=caller, approved=True, reason=body.reason if body else None
    )
    reason = body.reason if body else None
    await record(request, caller, "task.approve", target=task_id, details={"reason": reason})
    return TaskResponse.of(task)


@router.post(
    "/tasks/{task_id}/reject",
    status_code=202,
    response_model=TaskResponse,
    responses=documented(409),
)
async def reject_task(
    task_id: str, request: Request, caller: Caller, body: Decision | None = None
) -> TaskResponse:
    """Refuse a paused task's proposed call; the model is told, with the reason."""
    task = await platform_of(request).dispatcher.decide(
        task_id, principal=caller, approved=False, reason=body.reason if body else None
    )
    reason = body.reason if body else None
    await record(request, caller, "task.reject", target=task_id, details={"reason": reason})
    return TaskResponse.of(task)


@router.get(
    "/tasks/{task_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The task's progress"},
        **documented(400),
    },
)
async def task_events(
    task_id: str,
    request: Request,
    caller: Caller,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEQ, description="The last event seen; the stream starts after it."),
    ] = None,
) -> EventSourceResponse:
    """Stream the task's progress: stored events first, then live ones, until it ends.

    A stream resumed after the final event (``after`` or ``Last-Event-ID`` at it) sends that
    event again and ends at once; resuming after an event the task does not have is a 400.
    """
    platform = platform_of(request)
    await platform.tasks.get(task_id, tenant=caller.tenant)  # 404 for other tenants
    if after is not None:
        start, field = after, "after"
    else:
        start, field = _parse_last_event_id(last_event_id), "Last-Event-ID"
    if start and await platform.feed.event_at(task_id, tenant=caller.tenant, seq=start) is None:
        raise BadRequest(
            f"{field}: task {task_id} has no event {start}; its feed ends before it", field=field
        )

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in platform.feed.follow(task_id, tenant=caller.tenant, after_seq=start):
            payload: dict[str, Any] = {
                "seq": event.seq,
                "type": event.type,
                **event.data,
                "at": event.created_at.isoformat(),
            }
            yield ServerSentEvent(id=str(event.seq), event=event.type, data=json.dumps(payload))

    return EventSourceResponse(stream(), ping=15, send_timeout=30)


def _parse_last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    text = value.strip()
    # str.isdigit() is true of "²", which int() refuses: only ASCII digits are a number here.
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        raise BadRequest("Last-Event-ID must be an event sequence number", field="Last-Event-ID")
    return int(text)
