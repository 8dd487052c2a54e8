"""``publish_event``: publish a JSON event to JetStream on ``spine.events.<tenant>.<type>``.

The event is a CloudEvents 1.0 envelope (structured JSON) whose ``id`` is the call's idempotency
key; its ``Nats-Msg-Id`` is the platform's dedupe id of (tenant, source, id), as for events sent
over HTTP: a step replayed after a crash publishes nothing new within JetStream's duplicate
window. The tenant travels in the subject, in the envelope (``spinetenant``) and in a
``Spine-Tenant`` header, the way the EVENTS stream's consumers read it
(:mod:`spine.events.intake`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from nats.js.api import PubAck
from pydantic import BaseModel, ConfigDict, Field

from spine.events.cloudevent import TENANT_ATTRIBUTE, dedupe_id
from spine.events.subjects import tenant_token
from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = ["EVENT_PREFIX", "DurablePublisher", "PublishEventArguments", "publish_event_tool"]

EVENT_PREFIX = "spine.events"
MAX_EVENT_BYTES = 64 * 1024


class DurablePublisher(Protocol):
    """What publishing needs of :class:`~spine.events.bus.NatsBus`."""

    async def publish_durable(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish to JetStream and wait for the acknowledgement."""
        ...


class PublishEventArguments(BaseModel):
    """What the model passes to ``publish_event``."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,7}$",
        description="The event type, dot-separated words, e.g. 'order.shipped'.",
    )
    data: dict[str, Any] = Field(description="The event's payload, a JSON object.")


def publish_event_tool(
    publisher: DurablePublisher, *, prefix: str = EVENT_PREFIX, needs_approval: bool = False
) -> Tool[PublishEventArguments]:
    """Return the ``publish_event`` tool, publishing through ``publisher``."""

    async def run(args: PublishEventArguments, ctx: ToolContext) -> dict[str, Any]:
        key = ctx.idempotency_key or ctx.derived_idempotency_key()
        source = f"/spine/agents/{ctx.agent or 'none'}"
        envelope = {
            "specversion": "1.0",
            "id": key,
            "source": source,
            "type": args.type,
            "time": datetime.now(UTC).isoformat(),
            "datacontenttype": "application/json",
            TENANT_ATTRIBUTE: ctx.tenant,
            **({"spinetask": ctx.task_id} if ctx.task_id else {}),
            "data": args.data,
        }
        payload = json.dumps(envelope, ensure_ascii=False, default=str).encode()
        if len(payload) > MAX_EVENT_BYTES:
            raise ToolFailure(f"the event is over {MAX_EVENT_BYTES} bytes")
        subject = f"{prefix}.{tenant_token(ctx.tenant)}.{args.type}"
        ack = await publisher.publish_durable(
            subject,
            payload,
            msg_id=dedupe_id(ctx.tenant, source, key),
            headers={"Spine-Tenant": ctx.tenant, "Content-Type": "application/cloudevents+json"},
        )
        return {
            "published": True,
            "subject": subject,
            "id": key,
            "stream": ack.stream,
            "sequence": ack.seq,
            "duplicate": bool(ack.duplicate),
        }

    return Tool(
        name="publish_event",
        description=(
            "Publish an event (a type and a JSON object) for other systems to react to. "
            "It is delivered once even if this step is retried."
        ),
        arguments=ModelArguments(PublishEventArguments),
        handler=run,
        timeout=10.0,
        effect="external",
        needs_approval=needs_approval,
    )
