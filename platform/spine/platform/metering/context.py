"""Who makes a metered call, and who is told of it once it ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from spine.platform.learning.experiments import Assignment
from spine.platform.metering.usage import ModelCallRecord

__all__ = ["ABANDONED", "EXPLICIT", "CacheStatus", "CallContext", "OutcomeHook"]

CacheStatus = Literal["hit", "miss", "bypass"]
EXPLICIT = "explicit"
"""The strategy reported for a call that named its model."""
ABANDONED = "abandoned"
"""The outcome of a call whose caller went away before it ended."""


@dataclass(slots=True, kw_only=True, frozen=True)
class CallContext:
    """Who makes a call, and whether it may be answered from the cache."""

    tenant: str
    key_id: str | None = None
    task_id: str | None = None
    task_category: str | None = None
    use_cache: bool = True
    completion_id: str | None = None
    """The id the gateway gives its answer (``chatcmpl-...``), by which a client may rate it."""
    assignment: Assignment | None = None
    """The experiment arm that routes this call, if an experiment covers it."""


class OutcomeHook(Protocol):
    """Told of every routed call once its usage row was queued (or failed to be).

    Called in the caller's task, so it must return at once (hand the work to a background
    task) and should not raise; an exception it raises is logged and otherwise ignored. The
    record carries the routing strategy (``"explicit"`` when the caller named a model), the
    decision of the ``learned`` strategy and the experiment arm, if any.
    """

    def __call__(self, record: ModelCallRecord) -> None:
        """Take note of one call."""
