"""Events in: from HTTP onto the EVENTS stream, and from the stream back into checked events.

Both ways in end on ``spine.events.<tenant>.<type>`` as structured CloudEvents carrying their
tenant in the ``spinetenant`` extension, with ``Nats-Msg-Id`` = :func:`dedupe_id`.

Duplicates. The event's row is what says an event was received before, not JetStream: any
NATS publisher may set any ``Nats-Msg-Id``, and the key of another tenant's event is public
(a hash of tenant, source and id). So when JetStream answers that it holds a message under an
event's key, the message is read back; unless it is this tenant's event with that key, the
event is published again under a msg id of its own that no one can guess.

Tenancy. Over HTTP the tenant is the API key's (an event naming another tenant is refused).
On NATS it is the subject's tenant token: NATS permissions work on subjects, so an operator
can let one tenant's systems publish on ``spine.events.<tenant>.>`` and nowhere else. An
event (or its ``Spine-Tenant`` header) may spell the tenant exactly, which tenants whose
names hold characters a token cannot (``.``, spaces) need; it must then agree with the
subject's token. An event that breaks the rule is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from spine.events.bus import NatsBus
from spine.events.cloudevent import (
    STRUCTURED_CONTENT_TYPE,
    TENANT_ATTRIBUTE,
    CloudEvent,
    InvalidEvent,
    dedupe_id,
    parse_binary,
    parse_structured,
    same_json,
)
from spine.events.log import EventEntry, EventLog, ReceivedEvent
from spine.events.schemas import EventSchemas
from spine.events.subjects import event_subject, tenant_of_token, tenant_token
from spine.platform.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from spine.platform.inputs import text_problem
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
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_READ_BACK_ERRORS = (
    NatsTimeout,
    TimeoutError,
    NoRespondersError,
    ConnectionClosedError,
    APIError,
    OSError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outgoing:
    """An event on its way to the stream, as the JSON to publish."""

    key: str
    tenant: str
    type: str
    payload: bytes


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

        An event is a duplicate when its key (tenant, source, id) was received before: its row
        was there (an earlier request, or ingestion of the same event from NATS), JetStream
        holds this tenant's event under the key (published straight on NATS, not ingested
        yet), or it came earlier in the same batch. A batch's repeat is accepted as a
        duplicate of its first occurrence, which is the one recorded and published, as if the
        two had come in two requests. A new row's event is always published; a repeat is
        published again only while its row is ``pending`` (a retry after a failure between
        recording and publishing), and then as it was recorded, so it is the same event.

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
        on_stream = await self._publish_all(await self._outgoing(unique, fresh))
        return [
            AcceptedEvent(
                key=r.key,
                event=r.event,
                duplicate=first[r.key] is not r or r.key not in fresh or r.key in on_stream,
            )
            for r in received
        ]

    async def _outgoing(self, unique: Sequence[ReceivedEvent], fresh: set[str]) -> list[_Outgoing]:
        """Return the events to publish: the new ones, and the repeats still ``pending``."""
        outgoing = [_outgoing(r) for r in unique if r.key in fresh]
        repeats = [r for r in unique if r.key not in fresh]
        for start in range(0, len(repeats), _PUBLISH_AT_ONCE):
            chunk = repeats[start : start + _PUBLISH_AT_ONCE]
            stored = await asyncio.gather(*(self._stored(r) for r in chunk))
            outgoing += [
                _as_recorded(entry, tenant=r.tenant)
                for r, entry in zip(chunk, stored, strict=True)
                if entry is not None and entry.status == "pending"
            ]
        return outgoing

    async def _publish_all(self, outgoing: Sequence[_Outgoing]) -> set[str]:
        """Publish events; return the keys of those the stream held already."""
        on_stream: set[str] = set()
        for start in range(0, len(outgoing), _PUBLISH_AT_ONCE):
            chunk = outgoing[start : start + _PUBLISH_AT_ONCE]
            held = await asyncio.gather(*(self._publish_once(o) for o in chunk))
            on_stream.update(o.key for o, dup in zip(chunk, held, strict=True) if dup)
        return on_stream

    async def _stored(self, received: ReceivedEvent) -> EventEntry | None:
        try:
            return await self._log.get(received.key, tenant=received.tenant)
        except NotFound:
            return None

    async def _publish_once(self, outgoing: _Outgoing) -> bool:
        """Publish an event under its key; return whether the stream held it already.

        JetStream's ``duplicate`` only says that some message had this ``Nats-Msg-Id``: one
        that is not this tenant's event with this key blocks nothing, the event goes again
        under a msg id of its own (ingestion is idempotent per key, so it cannot count twice).
        """
        ack = await self._publish(outgoing, msg_id=outgoing.key)
        if not ack.duplicate or await self._holds(ack, outgoing):
            return bool(ack.duplicate)
        logger.warning(
            "%s #%d holds another message under the msg id of event %s of tenant %s; "
            "publishing it under a msg id of its own",
            ack.stream,
            ack.seq,
            outgoing.key,
            outgoing.tenant,
        )
        await self._publish(outgoing, msg_id=f"{outgoing.key}:{secrets.token_hex(16)}")
        return False

    async def _holds(self, ack: PubAck, outgoing: _Outgoing) -> bool:
        """Tell whether the stream's message ``ack`` names is this event, as ingestion reads it."""
        try:
            held = await self._bus.js.get_msg(ack.stream, ack.seq)
        except NotFoundError:
            return False  # aged out or deleted: publishing again is safe
        except _READ_BACK_ERRORS as exc:
            raise ServiceUnavailable(
                f"JetStream did not return {ack.stream} #{ack.seq}: {exc!r}"
            ) from exc
        try:
            # The key is the subject tenant's: only this tenant's publishers write there.
            found = read_event(
                held.subject or "",
                held.data or b"",
                held.headers,
                stream_time=held.time or utcnow(),
                schemas=self._schemas,
            )
        except RejectedEvent:
            return False
        # The same key with other content would be left out by ingestion as a duplicate
        # of this event's row: then this event must go too.
        return found.key == outgoing.key and same_json(
            found.event.to_dict(), json.loads(outgoing.payload)
        )

    async def resend_pending(self, *, older_than: float, limit: int = 200) -> int:
        """Publish again the events recorded but not seen by ingestion ``older_than`` seconds
        later; return how many were sent.

        Their publish failed after the row was committed (NATS was down: the client got a 503)
        and the client never retried, or JetStream stored them after a timeout. Each goes again
        as recorded, under its key: JetStream drops it if it holds it already (within its
        duplicate window), and ingestion is idempotent per key otherwise.
        """
        stale = await self._log.stale_pending(older_than=older_than, limit=limit)
        if not stale or not self._bus.connected:
            return 0
        await self._publish_all([_as_recorded(entry, tenant=tenant) for tenant, entry in stale])
        return len(stale)

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
                *(
                    self._publish(_outgoing(r), msg_id=f"remap:{r.key}:{stamp}", remap=True)
                    for r in chunk
                )
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

    async def _publish(self, outgoing: _Outgoing, *, msg_id: str, remap: bool = False) -> PubAck:
        headers = {TENANT_HEADER: outgoing.tenant, "Content-Type": STRUCTURED_CONTENT_TYPE}
        if remap:
            headers[REMAP_HEADER] = "1"
        return await self._bus.publish_durable(
            event_subject(outgoing.tenant, outgoing.type),
            outgoing.payload,
            msg_id=msg_id,
            headers=headers,
        )


def _outgoing(received: ReceivedEvent) -> _Outgoing:
    return _Outgoing(
        key=received.key,
        tenant=received.tenant,
        type=received.event.type,
        payload=received.event.to_json(),
    )


def _as_recorded(entry: EventEntry, *, tenant: str) -> _Outgoing:
    # The stored envelope, not this request's copy: a missing time was filled in differently.
    payload = json.dumps(entry.event, ensure_ascii=False, separators=(",", ":")).encode()
    return _Outgoing(key=entry.key, tenant=tenant, type=entry.type, payload=payload)


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
    sequence: int | None = None,
    max_bytes: int | None = None,
) -> ReceivedEvent:
    """Check an event taken from the EVENTS stream and find its tenant.

    An event without a ``time`` gets the time JetStream stored it, so a replay sees the same.
    A message over ``max_bytes`` is refused as ``POST /v1/events`` refuses it (413).

    Raises:
        RejectedEvent: The message is too large or not a CloudEvent, its tenant does not
            agree with its subject, or its data breaks its type's schema; the message says
            which. When the subject names a tenant, ``received`` is set so its row can say
            why (see :func:`_unreadable` for a message that is not a CloudEvent).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise RejectedEvent(
            f"the event is {len(data)} bytes, over the limit of {max_bytes}",
            field="body",
            received=_unreadable(subject, data, stream_time=stream_time, sequence=sequence),
        )
    try:
        event = _parsed(data, headers or {})
    except InvalidEvent as exc:
        blamed = _unreadable(subject, data, stream_time=stream_time, sequence=sequence)
        raise RejectedEvent(exc.message, field=exc.field, received=blamed) from exc
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


def _parsed(data: bytes, headers: Mapping[str, str]) -> CloudEvent:
    """The event of a message: structured JSON, or binary mode (the CloudEvents NATS binding
    on NATS 2.2+: attributes in ``ce-*`` headers, the data in the body, as the Go SDK and
    others publish it). A CloudEvents content type means structured whatever the headers say.
    """
    named = {k.lower(): v for k, v in headers.items()}
    structured = named.get("content-type", "").lower().startswith("application/cloudevents")
    if "ce-specversion" in named and not structured:
        return parse_binary(headers, data)
    return parse_structured(data)


def _unreadable(
    subject: str, data: bytes, *, stream_time: datetime, sequence: int | None
) -> ReceivedEvent | None:
    """Make a row for a message that cannot be ingested, so its tenant sees why.

    The row holds what could be read (``id``, ``source``, ``type``), never the message itself
    (it may hold what cannot be stored, or be too large). With a usable ``id`` and ``source``
    its key is the event's; without, one derived from its place in the stream, which no
    CloudEvent's key can be (its source holds a NUL).
    """
    tenant = _tenant_named_by(subject)
    if tenant is None:
        return None
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8 JSON, or nested past the parser's stack
        raw = None
    if not isinstance(raw, dict):
        raw = {}
    event_id, source = _readable(raw.get("id"), 500), _readable(raw.get("source"), 1000)
    event_type = _readable(raw.get("type"), 255) or subject.split(".", 3)[-1][:255]
    if event_id and source:
        key = dedupe_id(tenant, source, event_id)
    elif sequence is not None:
        key = dedupe_id(tenant, "\x00nats", f"{sequence}@{stream_time.isoformat()}")
    else:
        return None
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or "",
        "source": source or "",
        "type": event_type,
        "time": stream_time,
        TENANT_ATTRIBUTE: tenant,
    }
    envelope = CloudEvent.model_construct(**attributes)  # what could be read, unchecked
    return ReceivedEvent(key=key, tenant=tenant, event=envelope)


def _readable(value: object, limit: int) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        return None
    return None if text_problem(value) or _CONTROL.search(value) else value


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
