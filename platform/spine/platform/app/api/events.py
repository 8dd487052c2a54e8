"""``/v1/events``: CloudEvents in (structured, batch, binary), and the tenant's recent events.

``POST /v1/events`` takes one event in structured mode (``application/cloudevents+json``), a
batch (``application/cloudevents-batch+json``), or one event in binary mode (``ce-*``
headers, the data in the body). Every event is checked before any is accepted: a malformed
one, or one breaking its type's schema, is a 400 naming the attribute. Accepted events are
recorded (``pending``) and published to the EVENTS stream; 202 lists them, with
``duplicate: true`` for an event (same source and id) received before. Ids and sources hold
no control characters, and binary mode's ``ce-*`` headers must be valid percent-encoded UTF-8:
either could make two events one.

One naming on every events route: ``key`` is the platform's id of a received event (what
``GET /v1/events/{key}`` takes), ``event_id`` the CloudEvents ``id``. Each route also keeps
the ``id`` it answered before (here the CloudEvents id, in the list the key), deprecated.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from spine.events.cloudevent import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    parse_batch,
    parse_binary,
    parse_structured,
)
from spine.events.log import EventEntry, EventPage, EventStatus
from spine.platform.app.api.auth import Caller, platform_of

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["events"])


class AcceptedEventInfo(BaseModel):
    """One accepted event."""

    key: str = Field(description="The received event's key: GET /v1/events/{key} finds it.")
    event_id: str = Field(description="The CloudEvents id its producer gave it.")
    id: str = Field(
        description="Deprecated: the same as event_id (kept for existing clients).",
        json_schema_extra={"deprecated": True},
    )
    source: str
    type: str
    duplicate: bool = Field(
        description=(
            "True when this event (same source and id) was received before: its row was there, "
            "or the stream held it already; the first one received is the one kept."
        )
    )


class EventsAccepted(BaseModel):
    """The answer to ``POST /v1/events``."""

    accepted: int
    events: list[AcceptedEventInfo]


@router.post("/events", status_code=202, response_model=EventsAccepted)
async def publish_events(request: Request, caller: Caller) -> EventsAccepted:
    """Accept CloudEvents for the caller's tenant."""
    body = await request.body()
    events = _parse(request, body, platform_of(request).settings.api.max_json_depth)
    accepted = await platform_of(request).knowledge.intake.accept(events, tenant=caller.tenant)
    return EventsAccepted(
        accepted=len(accepted),
        events=[
            AcceptedEventInfo(
                event_id=a.event.id,
                id=a.event.id,
                source=a.event.source,
                type=a.event.type,
                key=a.key,
                duplicate=a.duplicate,
            )
            for a in accepted
        ],
    )


class RemapRequest(BaseModel):
    """The body of ``POST /v1/events/remap``."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(None, max_length=255, description="Only events of this type.")
    limit: int = Field(1000, ge=1, le=10000, description="At most this many, oldest first.")


class Remapped(BaseModel):
    """The answer to ``POST /v1/events/remap``."""

    remapped: int = Field(description="Unmapped events sent to ingestion again (now pending).")


@router.post("/events/remap", status_code=202, response_model=Remapped)
async def remap_events(body: RemapRequest, request: Request, caller: Caller) -> Remapped:
    """Send the caller's ``unmapped`` events to ingestion again (after adding mappings).

    They are mapped by the mappings in force now; triggers do not fire on them (a trigger
    applies only to events received after it was enabled).
    """
    intake = platform_of(request).knowledge.intake
    count = await intake.remap(tenant=caller.tenant, type=body.type, limit=body.limit)
    return Remapped(remapped=count)


@router.get("/events", response_model=EventPage)
async def list_events(
    request: Request,
    caller: Caller,
    status: EventStatus | None = None,
    type: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> EventPage:
    """List the caller's events, newest first, with their status."""
    return await platform_of(request).knowledge.log.list_page(
        tenant=caller.tenant, status=status, type=type, limit=limit, cursor=cursor
    )


@router.get("/events/{key}", response_model=EventEntry)
async def get_event(key: str, request: Request, caller: Caller) -> EventEntry:
    """Return one of the caller's events by the ``key`` ``POST /v1/events`` answered."""
    return await platform_of(request).knowledge.log.get(key, tenant=caller.tenant)


def _parse(request: Request, body: bytes, max_depth: int) -> list[CloudEvent]:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == BATCH_CONTENT_TYPE:
        return parse_batch(body, max_depth=max_depth)
    if media == STRUCTURED_CONTENT_TYPE:
        return [parse_structured(body, max_depth=max_depth)]
    if "ce-specversion" in request.headers:
        return [parse_binary(dict(request.headers), body, max_depth=max_depth)]
    if media in ("application/json", ""):
        # Lenient: a structured event or a batch sent as plain JSON.
        stripped = body.lstrip()
        if stripped.startswith(b"["):
            return parse_batch(body, max_depth=max_depth)
        return [parse_structured(body, max_depth=max_depth)]
    raise InvalidEvent(
        f"unsupported content type {media!r}: send {STRUCTURED_CONTENT_TYPE}, "
        f"{BATCH_CONTENT_TYPE}, or binary mode with ce-* headers",
        field="Content-Type",
    )
