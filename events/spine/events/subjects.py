"""NATS subject names: the one place that spells them.

``spine.tasks.<lane>`` carry work (JetStream stream TASKS, one consumer per lane);
``spine.progress.<task_id>`` and ``spine.cancel.<task_id>`` are core NATS signals whose durable
record lives in the database; ``spine.dlq.tasks`` holds dead letters (stream TASKS_DLQ);
``spine.outcomes.<tenant>`` carry one outcome event per routed model call (stream OUTCOMES).
"""

from __future__ import annotations

import re

__all__ = [
    "CANCEL_ALL",
    "DLQ_TASKS",
    "LANES",
    "OUTCOMES_ALL",
    "TASKS_ALL",
    "cancel_subject",
    "lane_subject",
    "outcome_subject",
    "progress_subject",
]

LANES: tuple[str, ...] = ("high", "normal", "low")
TASKS_ALL = "spine.tasks.>"
DLQ_TASKS = "spine.dlq.tasks"
CANCEL_ALL = "spine.cancel.*"
OUTCOMES_ALL = "spine.outcomes.>"
_NOT_IN_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def lane_subject(lane: str) -> str:
    """Return the work subject of a priority lane."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}")
    return f"spine.tasks.{lane}"


def progress_subject(task_id: str) -> str:
    """Return the subject that carries a task's live progress events."""
    return f"spine.progress.{task_id}"


def cancel_subject(task_id: str) -> str:
    """Return the subject that tells a worker to stop a task."""
    return f"spine.cancel.{task_id}"


def outcome_subject(tenant: str) -> str:
    """Return the subject of a tenant's model-call outcomes.

    A tenant name may hold characters a subject token cannot (``.``, ``*``, ``>``, spaces);
    each becomes ``_``, so two tenants can share a subject. The event names its exact tenant.
    """
    return f"spine.outcomes.{_NOT_IN_A_TOKEN.sub('_', tenant) or '_'}"
