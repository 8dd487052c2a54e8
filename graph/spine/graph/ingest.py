"""Graph ingestion: a durable JetStream pull consumer from EVENTS into the graph.

It fetches events in batches, checks each (size, CloudEvent, tenant, schema), claims its row
in the event log, maps it, writes the batch in a few ``UNWIND`` statements, records each
event's status, and only then acks. Replaying or redelivering gives the same graph (see
:mod:`spine.graph.writer`). An event is marked ``mapped`` only after the server answered its
writes, and an answered write is durable (the embedded FalkorDB fsyncs its append-only file
before it answers).

- The first event with a key wins, as over HTTP: its row (recorded over HTTP, or here when
  the event is first seen on NATS) holds its envelope. A later message with the same key and
  another envelope is a duplicate: acked and counted, with no graph write, no row change and
  no dead letter. The same envelope again (a redelivery, a replay, a remap) is ingested as
  usual.
- No mapping for the type: stored, ``unmapped``, acked.
- Over ``max_event_bytes``, not a CloudEvent, tenant mismatch, schema broken, a mapped key
  missing: ``dead_lettered`` with the reason, copied to ``spine.dlq.events`` (stream
  EVENTS_DLQ), acked. When the subject names the tenant the row says why, even for a message
  that is not a CloudEvent (see :func:`spine.events.intake.read_event`).
- The batch's write refused (a value the server cannot store): its events are written one by
  one, so the rest go on; a failing one is nakked with backoff and dead-lettered after
  ``ingest_max_attempts`` deliveries.
- The graph server or the database is down: the batch is nakked with backoff; nothing is
  dead-lettered for an outage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext

from spine.events.bus import NatsBus, bind_durable, fetched
from spine.events.cloudevent import same_json
from spine.events.intake import RejectedEvent, read_event
from spine.events.log import EventLog, EventOutcome, EventStatus, ReceivedEvent
from spine.events.schemas import EventSchemas
from spine.events.streams import EVENTS_STREAM, INGEST_CONSUMER, StreamLayout
from spine.events.subjects import DLQ_EVENTS
from spine.graph.mapping import EventWrites, MappingError, MappingSet
from spine.graph.store import GraphError, GraphStore
from spine.graph.writer import GraphWriter
from spine.platform.errors import ServiceUnavailable
from spine.platform.settings import KnowledgeSettings

__all__ = ["GraphIngestor", "IngestStats"]

logger = logging.getLogger(__name__)

_LOST = (ConnectionClosedError, ServiceUnavailable, OSError)
_NO_GRAPH = "no graph server is configured (GENAI_FALKORDB_URL or GENAI_NEO4J_URI)"


@dataclass(slots=True, kw_only=True)
class IngestStats:
    """Counters for logs, tests and the benchmark."""

    batches: int = 0
    mapped: int = 0
    unmapped: int = 0
    dead_lettered: int = 0
    retried: int = 0
    duplicates: int = 0


@dataclass(slots=True, kw_only=True)
class _Item:
    msg: Msg
    attempt: int
    received: ReceivedEvent | None = None
    writes: EventWrites | None = None
    status: EventStatus | None = None
    reason: str | None = None
    retry: bool = False
    duplicate: bool = False


class GraphIngestor:
    """Consumes EVENTS into the graph until told to stop."""

    def __init__(
        self,
        *,
        bus: NatsBus,
        log: EventLog,
        schemas: EventSchemas,
        mappings: MappingSet,
        store: GraphStore | None,
        layout: StreamLayout,
        settings: KnowledgeSettings,
        consumer: str = INGEST_CONSUMER,
    ) -> None:
        self._bus = bus
        self._log = log
        self._schemas = schemas
        self._mappings = mappings
        self._store = store
        self._writer = GraphWriter(store) if store is not None else None
        self._layout = layout
        self._settings = settings
        self._consumer = consumer
        self.stats = IngestStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set; the batch in hand is finished first."""
        await self._layout.ensure_when_ready(self._bus)
        await self._schema_when_ready(stop)
        subscription = await self._bind(stop)
        logger.info("graph ingestion running (%d mappings)", len(self._mappings))
        try:
            await self._consume(subscription, stop)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _consume(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        async for messages in fetched(subscription, self._settings.ingest_batch, stop):
            try:
                await self.handle(messages)
            except _LOST as exc:
                # Unacked messages come back after ack_wait.
                logger.warning("left %d events for redelivery: %r", len(messages), exc)
            except Exception:
                logger.exception("unexpected error ingesting a batch; it will be redelivered")

    async def handle(self, messages: list[Msg]) -> None:
        """Ingest one batch of delivered messages and acknowledge each."""
        self.stats.batches += 1
        items = [self._read(msg) for msg in messages]
        try:
            await self._claim(items)
        except ServiceUnavailable as exc:
            await self._retry_all(items, f"the event log is unavailable: {exc.message}")
            return
        for item in items:
            if item.status is None and not item.duplicate:
                self._plan(item)
        try:
            await self._write(items)
        except ServiceUnavailable as exc:
            await self._retry_all(items, f"the graph is unavailable: {exc.message}")
            return
        for item in items:
            if item.status == "dead_lettered" and not item.duplicate:
                await self._dead_letter(item)
        outcomes = [
            EventOutcome(
                received=item.received,
                status=item.status or "pending",
                reason=item.reason,
                attempts=item.attempt,
            )
            for item in items
            if item.received is not None and not item.duplicate
        ]
        try:
            await self._log.settle(outcomes)
        except ServiceUnavailable as exc:
            await self._retry_all(items, f"the event log is unavailable: {exc.message}")
            return
        for item in items:
            if item.duplicate:
                self.stats.duplicates += 1
                await item.msg.ack()
            elif item.retry:
                self.stats.retried += 1
                await item.msg.nak(delay=self._settings.delay_before(item.attempt + 1))
            else:
                await item.msg.ack()
                if item.status == "mapped":
                    self.stats.mapped += 1
                elif item.status == "unmapped":
                    self.stats.unmapped += 1
                else:
                    self.stats.dead_lettered += 1

    def _read(self, msg: Msg) -> _Item:
        metadata = msg.metadata
        item = _Item(msg=msg, attempt=metadata.num_delivered)
        try:
            item.received = read_event(
                msg.subject,
                msg.data,
                msg.headers,
                stream_time=metadata.timestamp,
                schemas=self._schemas,
                sequence=metadata.sequence.stream,
                max_bytes=self._settings.max_event_bytes,
            )
        except RejectedEvent as exc:
            item.received = exc.received
            item.status, item.reason = "dead_lettered", exc.message
        return item

    async def _claim(self, items: list[_Item]) -> None:
        """Record the rows of events first seen here; mark each repeat with another envelope.

        The row is what decides, whoever recorded it first (over HTTP, or an earlier batch).
        """
        owners: dict[str, ReceivedEvent] = {}
        for item in items:
            if item.received is not None:
                owners.setdefault(item.received.key, item.received)
        fresh = await self._log.record(list(owners.values()))
        envelopes = {key: r.event.to_dict() for key, r in owners.items() if key in fresh}
        # The key hashes the tenant in: a row under it is this tenant's.
        envelopes.update(await self._log.envelopes([k for k in owners if k not in fresh]))
        for item in items:
            if item.received is None:
                continue
            envelope = envelopes.get(item.received.key)
            if envelope is not None and not same_json(item.received.event.to_dict(), envelope):
                item.duplicate = True
                logger.info(
                    "event #%d on %s has the key %s of an earlier event but other content: "
                    "a duplicate, left out",
                    item.msg.metadata.sequence.stream,
                    item.msg.subject,
                    item.received.key,
                )

    def _plan(self, item: _Item) -> None:
        assert item.received is not None  # only read events are planned
        event = item.received.event
        try:
            assert event.time is not None  # read_event fills it in
            writes = self._mappings.plan(item.received, time_ms=int(event.time.timestamp() * 1000))
        except MappingError as exc:
            item.status, item.reason = "dead_lettered", str(exc)
            return
        if writes is None:
            item.status, item.reason = "unmapped", f"no mapping for the event type {event.type!r}"
        elif self._writer is None:
            item.status, item.reason = "unmapped", _NO_GRAPH
        else:
            item.writes = writes

    async def _write(self, items: list[_Item]) -> None:
        pending = [item for item in items if item.writes is not None]
        if not pending or self._writer is None:
            return
        try:
            await self._writer.write([item.writes for item in pending if item.writes])
        except GraphError as exc:
            logger.warning(
                "a batch of %d events was refused (%s); writing them one by one",
                len(pending),
                exc.message,
            )
        else:
            for item in pending:
                item.status = "mapped"
            return
        for item in pending:
            assert item.writes is not None
            try:
                await self._writer.write([item.writes])
            except GraphError as exc:
                self._failed(item, exc.message)
            else:
                item.status = "mapped"

    def _failed(self, item: _Item, reason: str) -> None:
        if item.attempt >= self._settings.ingest_max_attempts:
            item.status = "dead_lettered"
            item.reason = f"{reason} (after {item.attempt} attempts)"
        else:
            item.status, item.reason, item.retry = "pending", f"retrying: {reason}", True

    async def _retry_all(self, items: list[_Item], reason: str) -> None:
        logger.warning("%d events left for a retry: %s", len(items), reason)
        for item in items:
            self.stats.retried += 1
            await item.msg.nak(delay=self._settings.delay_before(item.attempt + 1))

    async def _dead_letter(self, item: _Item) -> None:
        msg = item.msg
        sequence = msg.metadata.sequence.stream
        try:
            text: object = json.loads(msg.data)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
            text = {"data_base64": base64.b64encode(msg.data).decode()}
        body = {
            "reason": item.reason,
            "subject": msg.subject,
            "sequence": sequence,
            "tenant": item.received.tenant if item.received else None,
            "id": item.received.key if item.received else None,
            "consumer": self._consumer,
            "event": text,
        }
        await self._bus.publish_durable(
            DLQ_EVENTS,
            json.dumps(body, default=str).encode(),
            msg_id=f"dlq:{EVENTS_STREAM}:{sequence}",
            headers={"Spine-Reason": (item.reason or "")[:200].replace("\n", " ")},
        )
        logger.warning("dead-lettered event #%d on %s: %s", sequence, msg.subject, item.reason)

    async def _schema_when_ready(self, stop: asyncio.Event) -> None:
        if self._store is None:
            logger.warning("graph ingestion without a graph: %s", _NO_GRAPH)
            return
        while not stop.is_set():
            try:
                await self._store.ensure_schema(self._mappings.labels_and_keys())
                return
            except ServiceUnavailable as exc:
                logger.warning("graph schema not ready (%s); retrying", exc.message)
                await asyncio.sleep(1.0)

    async def _bind(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription:
        return await bind_durable(self._bus, self._consumer, EVENTS_STREAM, stop)
