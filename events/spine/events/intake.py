"""Events in: from HTTP onto the EVENTS stream, and from the stream back into checked events.

Both ways in end on ``spine.events.<tenant>.<type>`` as structured CloudEvents carrying their
tenant in the ``spinetenant`` extension, with ``Nats-Msg-Id`` = :func:`dedupe_id`.

Tenancy. Over HTTP the tenant is the API key's (an event naming another tenant is refused).
On NATS it is the subject's tenant token: NATS permissions work on subjects, so an operator
can let one tenant's systems publish on ``spine.events.<tenant>.>`` and nowhere else. An
event (or its ``Spine-Tenant`` header) may spell the tenant exactly, which tenants whose
names hold characters a token cannot (``.``, spaces) need; it must then agree with the
subject's token. An event that breaks the rule is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from spine.events.bus import NatsBus
from spine.events.cloudevent import (
    STRUCTURED_CONTENT_TYPE,
    TENANT_ATTRIBUTE,
    CloudEvent,
    InvalidEvent,
    dedupe_id,
    parse_structured,
)
from spine.events.log import EventLog, ReceivedEvent
from spine.events.schemas import EventSchemas
from spine.events.subjects import event_subject, tenant_of_token, tenant_token
from spine.platform.errors import PayloadTooLarge
from spine.platform.schema import utcnow

__all__ = [
    "REMAP_HEADER",
    "TENANT_HEADER",
    "AcceptedEvent",
    "EventIntake",
    "RejectedEvent",
    "read_event",
]

logger = logging.getLogger(__name__)

TENANT_HEADER = "Spine-Tenant"
REMAP_HEADER = "Spine-Remap"
"""Set on an event published again by :meth:`EventIntake.remap`: ingestion maps it, triggers
pass it by (a trigger applies only to events received after it was enabled)."""
_PREFIX = "spine.events."
_PUBLISH_AT_ONCE = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedEvent:
    """An event on the stream: its dedupe id, and whether it had been received before."""

    key: str
    event: CloudEvent
    duplicate: bool


class EventIntake:
    """Checks events from HTTP, records them and publishes them to the EVENTS stream."""

    def __init__(
        self,
        *,
        bus: NatsBus,
        log: EventLog,
        schemas: EventSchemas,
        max_event_bytes: int = 256 * 1024,
    ) -> None:
        self._bus = bus
        self._log = log
        self._schemas = schemas
        self._max_bytes = max_event_bytes

    async def accept(self, events: Sequence[CloudEvent], *, tenant: str) -> list[AcceptedEvent]:
        """Check every event first (all or none), then record and publish them.

        An event is a duplicate when its key (tenant, source, id) was received before: by an
        earlier request, straight on NATS, or earlier in the same batch. A batch's repeat is
        accepted as a duplicate of its first occurrence, which is the one recorded and
        published, as if the two had come in two requests.

        Raises:
            InvalidEvent: An event names another tenant or breaks its type's schema (400).
            PayloadTooLarge: An event is over ``max_event_bytes`` (413).
            ServiceUnavailable: The database or JetStream is down; the events that were
                recorded stay ``pending`` and a retry with the same ids publishes them.
        """
        batch = len(events) > 1
        received: list[ReceivedEvent] = []
        now = utcnow()
        for index, event in enumerate(events):
            where = f"[{index}]" if batch else ""
            received.append(self._prepare(event, tenant=tenant, now=now, where=where))
        first: dict[str, ReceivedEvent] = {}
        for r in received:
            first.setdefault(r.key, r)
        unique = list(first.values())
        fresh = await self._log.record(unique)
        duplicates: set[str] = set()
        for start in range(0, len(unique), _PUBLISH_AT_ONCE):
            chunk = unique[start : start + _PUBLISH_AT_ONCE]
            acks = await asyncio.gather(*(self._publish(r) for r in chunk))
            duplicates.update(r.key for r, dup in zip(chunk, acks, strict=True) if dup)
        return [
            AcceptedEvent(
                key=r.key,
                event=r.event,
                duplicate=first[r.key] is not r or r.key not in fresh or r.key in duplicates,
            )
            for r in received
        ]

    async def remap(self, *, tenant: str, type: str | None = None, limit: int = 1000) -> int:
        """Send a tenant's ``unmapped`` events to ingestion again; return how many.

        For mappings added after the events came: each goes back on the EVENTS stream as it
        was received (``pending`` again), with :data:`REMAP_HEADER` so that triggers pass it
        by. Ingestion is idempotent, so remapping twice changes nothing more.

        Raises:
            ServiceUnavailable: The database or JetStream is down; events not yet published
                are still ``unmapped`` or ``pending``, and another remap sends them.
        """
        events = await self._log.unmapped(tenant=tenant, type=type, limit=limit)
        if not events:
            return 0
        await self._log.mark_pending([e.key for e in events])
        # A msg id of its own: the original's is still in JetStream's dedupe window.
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        for start in range(0, len(events), _PUBLISH_AT_ONCE):
            chunk = events[start : start + _PUBLISH_AT_ONCE]
            await asyncio.gather(
                *(self._publish(r, msg_id=f"remap:{r.key}:{stamp}", remap=True) for r in chunk)
            )
        logger.info(
            "sent %d unmapped event(s) of tenant %s to ingestion again", len(events), tenant
        )
        return len(events)

    def _prepare(
        self, event: CloudEvent, *, tenant: str, now: datetime, where: str
    ) -> ReceivedEvent:
        claimed = event.tenant
        if claimed is not None and claimed != tenant:
            field = f"{where + '.' if where else ''}{TENANT_ATTRIBUTE}"
            raise InvalidEvent(
                f"{field}: the event names tenant {claimed!r}, but the key belongs to another",
                field=field,
            )
        self._schemas.check(event, where=where)
        changes: dict[str, object] = {TENANT_ATTRIBUTE: tenant}
        if event.time is None:
            changes["time"] = now
        stamped = event.with_attributes(**changes)
        size = len(stamped.to_json())
        if size > self._max_bytes:
            raise PayloadTooLarge(
                f"{where or 'the event'} is {size} bytes, over the limit of {self._max_bytes}",
                field=where or "body",
            )
        return ReceivedEvent(
            key=dedupe_id(tenant, event.source, event.id), tenant=tenant, event=stamped
        )

    async def _publish(
        self, received: ReceivedEvent, *, msg_id: str | None = None, remap: bool = False
    ) -> bool:
        headers = {TENANT_HEADER: received.tenant, "Content-Type": STRUCTURED_CONTENT_TYPE}
        if remap:
            headers[REMAP_HEADER] = "1"
        ack = await self._bus.publish_durable(
            event_subject(received.tenant, received.event.type),
            received.event.to_json(),
            msg_id=msg_id or received.key,
            headers=headers,
        )
        return bool(ack.duplicate)


class RejectedEvent(InvalidEvent):
    """An event on the stream that cannot be ingested; ``received`` is set when its tenant
    and envelope are known (so its row can say why), ``None`` when it is not a CloudEvent."""

    def __init__(self, message: str, *, field: str | None, received: ReceivedEvent | None) -> None:
        super().__init__(message, field=field)
        self.received = received


def read_event(
    subject: str,
    data: bytes,
    headers: Mapping[str, str] | None,
    *,
    stream_time: datetime,
    schemas: EventSchemas,
) -> ReceivedEvent:
    """Check an event taken from the EVENTS stream and find its tenant.

    An event without a ``time`` gets the time JetStream stored it, so a replay sees the same.

    Raises:
        RejectedEvent: The message is not a CloudEvent, its tenant does not agree with its
            subject, or its data breaks its type's schema; the message says which.
    """
    try:
        event = parse_structured(data)
    except InvalidEvent as exc:
        raise RejectedEvent(exc.message, field=exc.field, received=None) from exc
    if event.time is None:
        event = event.with_attributes(time=stream_time)
    try:
        tenant = _tenant_of(subject, event, headers or {})
    except InvalidEvent as exc:
        named = _tenant_named_by(subject)
        blamed = (
            ReceivedEvent(key=dedupe_id(named, event.source, event.id), tenant=named, event=event)
            if named
            else None
        )
        raise RejectedEvent(exc.message, field=exc.field, received=blamed) from exc
    if event.tenant != tenant:
        event = event.with_attributes(**{TENANT_ATTRIBUTE: tenant})
    received = ReceivedEvent(
        key=dedupe_id(tenant, event.source, event.id), tenant=tenant, event=event
    )
    try:
        schemas.check(event)
    except InvalidEvent as exc:
        raise RejectedEvent(exc.message, field=exc.field, received=received) from exc
    return received


def _tenant_named_by(subject: str) -> str | None:
    token, _, rest = subject.removeprefix(_PREFIX).partition(".")
    return tenant_of_token(token) if subject.startswith(_PREFIX) and token and rest else None


def _tenant_of(subject: str, event: CloudEvent, headers: Mapping[str, str]) -> str:
    if not subject.startswith(_PREFIX):
        raise InvalidEvent(f"{subject!r} is not an event subject", field="subject")
    token, _, type_tokens = subject.removeprefix(_PREFIX).partition(".")
    if not token or not type_tokens:
        raise InvalidEvent(
            f"the subject {subject!r} must be spine.events.<tenant>.<type>", field="subject"
        )
    in_event = event.tenant
    in_header = headers.get(TENANT_HEADER)
    if in_event is not None and in_header is not None and in_event != in_header:
        raise InvalidEvent(
            f"{TENANT_ATTRIBUTE} {in_event!r} and the {TENANT_HEADER} header {in_header!r} "
            "disagree",
            field=TENANT_ATTRIBUTE,
        )
    claimed = in_event if in_event is not None else in_header
    if claimed is None:
        tenant = tenant_of_token(token)
        if tenant is None:
            raise InvalidEvent(
                f"the subject {subject!r} names no tenant (its token {token!r} is not one "
                "that spine.events.<tenant>.> spells)",
                field="subject",
            )
        return tenant
    if tenant_token(claimed) != token:
        raise InvalidEvent(
            f"the event names tenant {claimed!r}, but it was published on {subject!r} "
            f"(tenant token {token!r})",
            field=TENANT_ATTRIBUTE,
        )
    return claimed
