"""Logging for entry points: one format; the task being worked on, and the trace, in every line.

A line written while a span is current (tracing on: :mod:`spine.platform.telemetry.tracing`)
carries ``trace=<trace id> span=<span id>``, the ids a trace viewer searches by.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from opentelemetry import trace

__all__ = ["configure_logging", "current_task"]

current_task: ContextVar[str | None] = ContextVar("current_task", default=None)


class _TaskContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task_id = current_task.get()
        record.task = f" task={task_id}" if task_id else ""
        span = trace.get_current_span().get_span_context()
        record.trace = (
            f" trace={span.trace_id:032x} span={span.span_id:016x}" if span.is_valid else ""
        )
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send logs to stderr with the task and trace of the current context; entry points only."""
    handler = logging.StreamHandler()
    handler.addFilter(_TaskContext())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(task)s%(trace)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These libraries log every request (alembic: every plugin and step of each migration run)
    # at INFO; one line per call of ours is enough (the database logs a migration it applied).
    for noisy in ("httpx", "LiteLLM", "litellm", "uvicorn.access", "neo4j", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
