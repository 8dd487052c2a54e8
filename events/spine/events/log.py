"""The event log: a durable row per event received, and what ingestion made of it.

The EVENTS stream carries events and may age them out; this table is what ``GET /v1/events``
reads. An event sent over HTTP gets its row (``pending``) before it is published; one published
straight to NATS gets it when ingestion first sees it. Ingestion then settles it as ``mapped``,
``unmapped`` (no mapping for its type: stored, not in the graph) or ``dead_lettered`` with the
reason. Rows are keyed by the dedupe id, so a repeat of an event is one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite

from spine.events.cloudevent import CloudEvent, InvalidEvent
from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.schema import EventRow, utcnow

__all__ = ["EventEntry", "EventLog", "EventOutcome", "EventPage", "EventStatus", "ReceivedEvent"]

EventStatus = Literal["pending", "mapped", "unmapped", "dead_lettered"]

_EVENTS = EventRow.__table__


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedEvent:
    """An event accepted for a tenant, with its dedupe id."""

    key: str
    tenant: str
    event: CloudEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class EventOutcome:
    """What ingestion made of one event."""

    received: ReceivedEvent
    status: EventStatus
    reason: str | None = None
    attempts: int = 1


class EventEntry(BaseModel):
    """An event as ``GET /v1/events`` shows it.

    The names are those of every events route: ``key`` is the platform's id of a received
    event (what ``GET /v1/events/{key}`` takes, one per tenant, source and CloudEvents id),
    ``event_id`` the CloudEvents ``id`` its producer gave it (as in the graph's provenance).
    """

    key: str = Field(description="The received event's key: GET /v1/events/{key} finds it.")
    id: str = Field(
        description="Deprecated: the same as key (kept for existing clients).",
        json_schema_extra={"deprecated": True},
    )
    event_id: str = Field(description="The CloudEvents id its producer gave it.")
    source: str
    type: str
    subject: str | None
    time: datetime | None
    status: EventStatus
    reason: str | None
    attempts: int
    received_at: datetime
    updated_at: datetime
    event: dict[str, Any]


class EventPage(BaseModel):
    """A page of events, newest first."""

    data: list[EventEntry]
    next_cursor: str | None


class EventLog:
    """Rows of the ``events`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, events: Sequence[ReceivedEvent]) -> set[str]:
        """Store events as ``pending`` unless already there; return the keys that were new."""
        if not events:
            return set()
        now = utcnow()
        rows = {e.key: _row(e, status="pending", reason=None, attempts=0, now=now) for e in events}
        # One statement decides which rows are new: two processes recording one new key at the
        # same instant cannot both take it as theirs (a read before the insert let them).
        insert = self._insert().on_conflict_do_nothing().returning(_EVENTS.c.id)
        async with self._db.transaction() as conn:
            return set((await conn.execute(insert, list(rows.values()))).scalars())

    async def settle(self, outcomes: Sequence[EventOutcome]) -> None:
        """Record each event's status, creating the rows of events first seen on NATS."""
        if not outcomes:
            return
        now = utcnow()
        latest = {o.received.key: o for o in outcomes}  # a batch may repeat an event
        rows = [
            _row(o.received, status=o.status, reason=o.reason, attempts=o.attempts, now=now)
            for o in latest.values()
        ]
        statement = self._insert()
        statement = statement.on_conflict_do_update(
            index_elements=[_EVENTS.c.id],
            set_={
                "status": statement.excluded.status,
                "reason": statement.excluded.reason,
                "attempts": statement.excluded.attempts,
                "updated_at": statement.excluded.updated_at,
            },
        )
        async with self._db.transaction() as conn:
            await conn.execute(statement, rows)

    async def unmapped(
        self, *, tenant: str, type: str | None = None, limit: int = 1000
    ) -> list[ReceivedEvent]:
        """Return up to ``limit`` of a tenant's ``unmapped`` events, oldest first, as received."""
        query = sa.select(_EVENTS).where(_EVENTS.c.tenant == tenant, _EVENTS.c.status == "unmapped")
        if type is not None:
            query = query.where(_EVENTS.c.type == type)
        query = query.order_by(_EVENTS.c.received_at, _EVENTS.c.id).limit(limit)
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        found: list[ReceivedEvent] = []
        unreadable: dict[str, str] = {}
        for row in rows:
            try:
                event = CloudEvent.model_validate(row["envelope"])
            except (ValueError, InvalidEvent) as exc:  # pydantic's ValidationError is a ValueError
                # Stored before a check it fails was added (a control character in its id):
                # sent again it would fail the same way, so it is settled saying why.
                unreadable[row["id"]] = f"no longer a valid CloudEvent: {str(exc)[:300]}"
                continue
            found.append(ReceivedEvent(key=row["id"], tenant=row["tenant"], event=event))
        if unreadable:
            async with self._db.transaction() as conn:
                for key, reason in unreadable.items():
                    await conn.execute(
                        sa.update(EventRow)
                        .where(_EVENTS.c.id == key)
                        .values(status="dead_lettered", reason=reason, updated_at=utcnow())
                    )
        return found

    async def mark_pending(self, keys: Sequence[str]) -> None:
        """Set events back to ``pending`` (they are on their way to ingestion again)."""
        if not keys:
            return
        statement = (
            sa.update(EventRow)
            .where(_EVENTS.c.id.in_(list(keys)))
            .values(status="pending", reason=None, updated_at=utcnow())
        )
        async with self._db.transaction() as conn:
            await conn.execute(statement)

    async def stale_pending(self, *, older_than: float, limit: int) -> list[tuple[str, EventEntry]]:
        """Return ``(tenant, event)`` of events ``pending`` for over ``older_than`` seconds that
        ingestion never saw (no attempt): their publish may never have reached JetStream."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        query = (
            sa.select(_EVENTS)
            .where(
                _EVENTS.c.status == "pending",
                _EVENTS.c.attempts == 0,
                _EVENTS.c.received_at < cutoff,
            )
            .order_by(_EVENTS.c.received_at)
            .limit(limit)
        )
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        return [(row["tenant"], _entry(row)) for row in rows]

    async def envelopes(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Return the stored envelope of each of ``keys`` that has a row (one query)."""
        if not keys:
            return {}
        query = sa.select(_EVENTS.c.id, _EVENTS.c.envelope).where(_EVENTS.c.id.in_(list(keys)))
        async with self._db.transaction() as conn:
            return {row.id: row.envelope for row in (await conn.execute(query)).all()}

    async def get(self, key: str, *, tenant: str) -> EventEntry:
        """Return one of a tenant's events by its dedupe id."""
        query = sa.select(_EVENTS).where(_EVENTS.c.id == key, _EVENTS.c.tenant == tenant)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"no event {key!r}", field="id")
        return _entry(row)

    async def list_page(
        self,
        *,
        tenant: str,
        status: EventStatus | None = None,
        type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EventPage:
        """List a tenant's events, newest first."""
        query = sa.select(_EVENTS).where(_EVENTS.c.tenant == tenant)
        if status is not None:
            query = query.where(_EVENTS.c.status == status)
        if type is not None:
            query = query.where(_EVENTS.c.type == type)
        if cursor is not None:
            received_at, last = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    _EVENTS.c.received_at < received_at,
                    sa.and_(_EVENTS.c.received_at == received_at, _EVENTS.c.id < last),
                )
            )
        query = query.order_by(_EVENTS.c.received_at.desc(), _EVENTS.c.id.desc()).limit(limit + 1)
        async with self._db.transaction() as conn:
            rows = list((await conn.execute(query)).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (
            encode_cursor(rows[-1]["received_at"], rows[-1]["id"]) if more and rows else None
        )
        return EventPage(data=[_entry(r) for r in rows], next_cursor=next_cursor)

    def _insert(self) -> Any:
        dialect = sqlite if self._db.is_sqlite else postgresql
        return dialect.insert(_EVENTS)


def _row(
    received: ReceivedEvent, *, status: str, reason: str | None, attempts: int, now: datetime
) -> dict[str, Any]:
    event = received.event
    return {
        "id": received.key,
        "tenant": received.tenant,
        "source": event.source,
        "event_id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": event.time,
        "envelope": event.to_dict(),
        "status": status,
        "reason": reason[:2000] if reason else None,
        "attempts": attempts,
        "received_at": now,
        "updated_at": now,
    }


def _entry(row: Any) -> EventEntry:
    return EventEntry(
        key=row["id"],
        id=row["id"],
        event_id=row["event_id"],
        source=row["source"],
        type=row["type"],
        subject=row["subject"],
        time=row["time"],
        status=row["status"],
        reason=row["reason"],
        attempts=row["attempts"],
        received_at=row["received_at"],
        updated_at=row["updated_at"],
        event=row["envelope"],
    )
