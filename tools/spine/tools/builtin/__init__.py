"""The built-in tools: ``http_fetch``, ``calculator``, ``current_time``, ``publish_event``,
``vector_search``."""

from __future__ import annotations

from typing import Any

from spine.tools.builtin.calculator import CalculatorArguments, calculator_tool, evaluate
from spine.tools.builtin.clock import CurrentTimeArguments, current_time_tool
from spine.tools.builtin.http_fetch import FetchArguments, FetchLimits, FetchResult, HttpFetcher
from spine.tools.builtin.publish_event import (
    EVENT_PREFIX,
    DurablePublisher,
    PublishEventArguments,
    publish_event_tool,
)
from spine.tools.builtin.vector_search import (
    VectorSearchArguments,
    VectorSearcher,
    vector_search_tool,
)
from spine.tools.tool import Tool

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "EVENT_PREFIX",
    "CalculatorArguments",
    "CurrentTimeArguments",
    "DurablePublisher",
    "FetchArguments",
    "FetchLimits",
    "FetchResult",
    "HttpFetcher",
    "PublishEventArguments",
    "VectorSearchArguments",
    "VectorSearcher",
    "builtin_tools",
    "calculator_tool",
    "current_time_tool",
    "evaluate",
    "publish_event_tool",
    "vector_search_tool",
]

BUILTIN_TOOL_NAMES = ("calculator", "current_time", "http_fetch", "publish_event", "vector_search")


def builtin_tools(
    *,
    publisher: DurablePublisher | None = None,
    fetcher: HttpFetcher | None = None,
    searcher: VectorSearcher | None = None,
) -> list[Tool[Any]]:
    """Return the built-in tools; ``publish_event`` only with a publisher, ``vector_search``
    only with a searcher."""
    tools: list[Tool[Any]] = [
        calculator_tool(),
        current_time_tool(),
        (fetcher or HttpFetcher()).tool(),
    ]
    if publisher is not None:
        tools.append(publish_event_tool(publisher))
    if searcher is not None:
        tools.append(vector_search_tool(searcher))
    return tools
