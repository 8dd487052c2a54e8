"""``current_time`` answers UTC and, when asked, the time in an IANA zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from spine.tools import ToolContext, ToolRegistry
from spine.tools.builtin import current_time_tool

NOW = datetime(2025, 7, 14, 10, 30, 5, tzinfo=UTC)
CTX = ToolContext(tenant="acme")


async def test_utc_by_default() -> None:
    registry = ToolRegistry([current_time_tool(lambda: NOW)])
    answer = json.loads((await registry.call("current_time", {}, CTX)).content)
    assert answer == {"utc": "2025-07-14T10:30:05+00:00", "unix": 1752489005, "weekday": "Monday"}


async def test_a_time_zone_adds_local_time_and_offset() -> None:
    registry = ToolRegistry([current_time_tool(lambda: NOW)])
    result = await registry.call("current_time", {"timezone": "Asia/Tokyo"}, CTX)
    answer = json.loads(result.content)
    assert answer["local"] == "2025-07-14T19:30:05+09:00"
    assert answer["utc_offset"] == "+0900"
    assert answer["abbreviation"] == "JST"
    paris = json.loads(
        (await registry.call("current_time", {"timezone": "Europe/Paris"}, CTX)).content
    )
    assert paris["utc_offset"] == "+0200"  # summer time


async def test_an_unknown_or_hostile_zone_is_an_error_result() -> None:
    registry = ToolRegistry([current_time_tool()])
    for zone in ("Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe"):
        result = await registry.call("current_time", {"timezone": zone}, CTX)
        assert result.error is not None, zone
        assert result.error.type == "tool_error"
        assert "unknown time zone" in result.error.message
