"""NATS subject names: the one place that spells them.

``spine.tasks.<lane>`` carry work (JetStream stream TASKS, one consumer per lane);
``spine.progress.<task_id>`` and ``spine.cancel.<task_id>`` are core NATS signals whose durable
record lives in the database; ``spine.dlq.tasks`` holds dead letters (stream TASKS_DLQ);
``spine.outcomes.<tenant>`` carry one outcome event per routed model call (stream OUTCOMES).
``spine.events.<tenant>.<type>`` carry CloudEvents from other systems (stream EVENTS; the tenant
is one token that names exactly one tenant, see :func:`tenant_token`; the type's dots make more
tokens); ``spine.dlq.events`` holds events that could not be ingested.
``spine.budget.threshold`` is a core NATS signal: a budget reached 80 % or 100 % of its limit
(its durable record is the database's ``budget_alerts`` row).
``spine.replay.<run>.>`` carry the learning events of one ``spine learn replay`` run (a stream of
its own, deleted when the run ends).
``spine_routing`` is the key-value bucket that announces routing weights (:mod:`.weights`).
"""

from __future__ import annotations

import re

__all__ = [
    "BUDGET_THRESHOLD",
    "CANCEL_ALL",
    "DLQ_EVENTS",
    "DLQ_TASKS",
    "EVENTS_ALL",
    "LANES",
    "OUTCOMES_ALL",
    "REPLAY_ALL",
    "TASKS_ALL",
    "WEIGHTS_BUCKET",
    "cancel_subject",
    "event_subject",
    "lane_subject",
    "outcome_subject",
    "progress_subject",
    "subject_token",
    "tenant_of_token",
    "tenant_token",
]

WEIGHTS_BUCKET = "spine_routing"

LANES: tuple[str, ...] = ("high", "normal", "low")
TASKS_ALL = "spine.tasks.>"
DLQ_TASKS = "spine.dlq.tasks"
CANCEL_ALL = "spine.cancel.*"
OUTCOMES_ALL = "spine.outcomes.>"
EVENTS_ALL = "spine.events.>"
REPLAY_ALL = "spine.replay.>"
DLQ_EVENTS = "spine.dlq.events"
BUDGET_THRESHOLD = "spine.budget.threshold"
_NOT_IN_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPED = re.compile(r"~([0-9A-F]{2})")


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


def subject_token(text: str) -> str:
    """Return ``text`` as one subject token: each character a token cannot hold becomes ``_``."""
    return _NOT_IN_A_TOKEN.sub("_", text) or "_"


def tenant_token(tenant: str) -> str:
    """Return the subject token of a tenant's events: one token per tenant, and one tenant per token.

    A publisher is granted ``spine.events.<token>.>`` and its events belong to the token's tenant,
    so two tenants must never share a token (``acme.eu`` and ``acme_eu`` did, when ``.`` became
    ``_``). Each UTF-8 byte of a character a token cannot hold is written ``~XX`` (hex):
    ``acme.eu`` is ``acme~2Eeu``.
    """
    return _NOT_IN_A_TOKEN.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), tenant)


def tenant_of_token(token: str) -> str | None:
    """Return the tenant whose :func:`tenant_token` is ``token``; None if no tenant's is."""
    try:
        tenant = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), token).encode("latin-1")
        name = tenant.decode()
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    return name if name and tenant_token(name) == token else None


def event_subject(tenant: str, event_type: str) -> str:
    """Return the subject a tenant's event of a type is published on (stream EVENTS).

    ``spine.events.<tenant>.<type>``: the tenant is one token (see :func:`tenant_token`), the
    type one token per dot-separated part. The envelope's ``type`` is the authoritative one.
    """
    parts = ".".join(subject_token(part) for part in event_type.split("."))
    return f"spine.events.{tenant_token(tenant)}.{parts}"
