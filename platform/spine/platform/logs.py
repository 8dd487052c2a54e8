"""Logging for entry points: one format, and the task being worked on in every line."""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["configure_logging", "current_task"]

current_task: ContextVar[str | None] = ContextVar("current_task", default=None)


class _TaskContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task_id = current_task.get()
        record.task = f" task={task_id}" if task_id else ""
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send logs to stderr with the task id of the current context; entry points only."""
    handler = logging.StreamHandler()
    handler.addFilter(_TaskContext())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(task)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These libraries log every request at INFO; one line per call of ours is enough.
    for noisy in ("httpx", "LiteLLM", "litellm", "uvicorn.access", "neo4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
