"""``publish_event`` against the session's real nats-server: once per step, as a CloudEvent."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js.api import StreamConfig

from spine.events.bus import NatsBus
from spine.events.cloudevent import dedupe_id
from spine.tools import ToolContext, ToolRegistry
from spine.tools.builtin import publish_event_tool

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(services: Any) -> AsyncIterator[NatsBus]:
    bus = NatsBus(services.nats_url, name="test-tools-publish")
    await bus.wait_connected(10)
    yield bus
    await bus.close()


@pytest.fixture
async def stream(bus: NatsBus) -> AsyncIterator[tuple[str, str]]:
    """A stream of its own under a unique prefix, so no other test's stream overlaps it."""
    prefix = f"spine.testevents.{uuid.uuid4().hex[:8]}"
    name = f"TOOLS_{prefix.rsplit('.', 1)[1]}"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], duplicate_window=60))
    yield name, prefix
    await bus.js.delete_stream(name)


async def test_an_event_is_published_once_per_step_as_a_cloudevent(
    bus: NatsBus, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    registry = ToolRegistry([publish_event_tool(bus, prefix=prefix)])
    ctx = ToolContext(tenant="acme", agent="notifier", task_id="task-1", step=3)
    arguments = {"type": "order.shipped", "data": {"order": 42, "note": "héllo"}}

    first = await registry.call("publish_event", arguments, ctx)
    replay = await registry.call("publish_event", arguments, ctx)  # the step after a crash
    later = await registry.call("publish_event", arguments, ToolContext(tenant="acme", step=4))

    assert first.ok, first.content
    one = json.loads(first.content)
    assert one["subject"] == f"{prefix}.acme.order.shipped"
    assert one["id"] == "task-1.3.0"
    assert (one["stream"], one["sequence"], one["duplicate"]) == (name, 1, False)
    assert json.loads(replay.content)["duplicate"] is True
    assert json.loads(later.content)["sequence"] == 2
    assert (await bus.js.stream_info(name)).state.messages == 2

    message = await bus.js.get_msg(name, 1)
    assert message.subject == f"{prefix}.acme.order.shipped"
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == dedupe_id(
        "acme", "/spine/agents/notifier", "task-1.3.0"
    )
    assert message.headers["Spine-Tenant"] == "acme"
    assert message.data is not None
    event = json.loads(message.data)
    assert event["specversion"] == "1.0"
    assert event["id"] == "task-1.3.0"
    assert event["type"] == "order.shipped"
    assert event["source"] == "/spine/agents/notifier"
    assert event["spinetenant"] == "acme"
    assert event["spinetask"] == "task-1"
    assert event["data"] == {"order": 42, "note": "héllo"}


async def test_with_no_stream_to_take_it_the_result_is_a_retryable_error(bus: NatsBus) -> None:
    registry = ToolRegistry([publish_event_tool(bus, prefix="spine.nostream")])
    result = await registry.call(
        "publish_event", {"type": "x", "data": {}}, ToolContext(tenant="acme")
    )
    assert result.error is not None
    assert result.error.type == "tool_error"
    assert result.error.retryable
    assert "did not acknowledge" in result.error.message


async def test_bad_event_types_and_oversized_events_are_refused(
    bus: NatsBus, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    registry = ToolRegistry([publish_event_tool(bus, prefix=prefix)])
    ctx = ToolContext(tenant="acme")
    for bad in ("order.*", "order.>", "a b", "", "a..b", ".a"):
        result = await registry.call("publish_event", {"type": bad, "data": {}}, ctx)
        assert result.error is not None, bad
        assert result.error.type == "invalid_arguments"
    huge = await registry.call("publish_event", {"type": "big", "data": {"x": "y" * 70_000}}, ctx)
    assert huge.error is not None
    assert "over 65536 bytes" in huge.error.message
    assert (await bus.js.stream_info(name)).state.messages == 0
