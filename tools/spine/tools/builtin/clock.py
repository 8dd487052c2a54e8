"""``current_time``: the time now, in UTC and optionally in an IANA time zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = ["CurrentTimeArguments", "current_time_tool"]


class CurrentTimeArguments(BaseModel):
    """What the model passes to ``current_time``."""

    model_config = ConfigDict(extra="forbid")

    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="An IANA time zone such as 'Europe/Paris'; only UTC when omitted.",
    )


def current_time_tool(clock: Callable[[], datetime] | None = None) -> Tool[CurrentTimeArguments]:
    """Return the ``current_time`` tool; ``clock`` (aware, UTC) is for tests."""
    now = clock or (lambda: datetime.now(UTC))

    async def run(args: CurrentTimeArguments, ctx: ToolContext) -> dict[str, Any]:
        utc = now().astimezone(UTC)
        answer: dict[str, Any] = {
            "utc": utc.isoformat(timespec="seconds"),
            "unix": int(utc.timestamp()),
            "weekday": utc.strftime("%A"),
        }
        if args.timezone:
            try:
                zone = ZoneInfo(args.timezone)
            except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
                raise ToolFailure(f"unknown time zone {args.timezone!r}") from exc
            local = utc.astimezone(zone)
            answer |= {
                "timezone": args.timezone,
                "local": local.isoformat(timespec="seconds"),
                "local_weekday": local.strftime("%A"),
                "utc_offset": local.strftime("%z"),
                "abbreviation": local.tzname(),
            }
        return answer

    return Tool(
        name="current_time",
        description="Tell the current date and time in UTC, and in a time zone if one is given.",
        arguments=ModelArguments(CurrentTimeArguments),
        handler=run,
        timeout=2.0,
        effect="read",
    )
