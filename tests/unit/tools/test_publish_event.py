"""``publish_event`` builds its subject, envelope and message id from the call."""

from __future__ import annotations

import json
from typing import Any

from nats.js.api import PubAck

from spine.events.cloudevent import dedupe_id
from spine.tools import ToolContext, ToolRegistry
from spine.tools.builtin import publish_event_tool


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def publish_durable(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        self.sent.append(
            {"subject": subject, "event": json.loads(payload), "msg_id": msg_id, "headers": headers}
        )
        return PubAck(stream="EVENTS", seq=len(self.sent))


async def test_the_default_subject_is_under_spine_events_and_the_key_is_the_msg_id() -> None:
    publisher = FakePublisher()
    registry = ToolRegistry([publish_event_tool(publisher)])
    tool = registry.get("publish_event")
    assert tool is not None
    assert tool.effect == "external"
    ctx = ToolContext(tenant="acme", agent="ops", task_id="t-9", step=1, call_index=2)
    result = await registry.call(
        "publish_event", {"type": "deploy.finished", "data": {"ok": True}}, ctx
    )
    assert result.ok, result.content
    [sent] = publisher.sent
    assert sent["subject"] == "spine.events.acme.deploy.finished"
    assert sent["msg_id"] == dedupe_id("acme", "/spine/agents/ops", "t-9.1.2")
    assert sent["headers"]["Spine-Tenant"] == "acme"
    assert sent["event"]["id"] == "t-9.1.2"
    assert sent["event"]["data"] == {"ok": True}
    assert json.loads(result.content)["stream"] == "EVENTS"


async def test_an_approval_gated_publisher_waits_for_approval() -> None:
    publisher = FakePublisher()
    registry = ToolRegistry([publish_event_tool(publisher, needs_approval=True)])
    result = await registry.call(
        "publish_event", {"type": "x", "data": {}}, ToolContext(tenant="acme")
    )
    assert result.error is not None
    assert result.error.type == "approval_required"
    assert publisher.sent == []
