"""What the composition root shows on ``/metrics`` beyond what the code records as it runs.

- :func:`api_probes`: the API reads, on a scrape (cached for ``GENAI_METRICS__PROBE_SECONDS``),
  the queue depth and DLQ sizes (JetStream stream info), each durable consumer's lag and
  progress (consumer info: graph ingestion's rate is ``graph-ingest``'s), the tasks not yet
  ended by state and agent (one grouped count over the ``state`` index), and today's budgets.
- :func:`observe_learning_event`: the learner reads every routed model call, task end and
  rating from the OUTCOMES stream already, so it counts them (model calls by model, provider, strategy and
  outcome, with latency, tokens, cost, cache hits; tasks finished by agent and state): one
  process sees every call of every API and worker once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from spine.events.streams import (
    DLQ_STREAM,
    EVENTS_DLQ_STREAM,
    EVENTS_STREAM,
    OUTCOMES_STREAM,
    TASKS_STREAM,
)
from spine.platform.schema import TaskRow
from spine.platform.settings import Settings
from spine.platform.telemetry import (
    ConsumerState,
    ProbeSet,
    StreamState,
    TaskCount,
    record_feedback,
    record_model_call,
    record_task_finished,
    record_task_signal,
    set_active_tasks,
    set_budget,
    set_jetstream,
)

if TYPE_CHECKING:  # the learner imports this module too, and needs none of the platform
    from spine.platform.app.wiring import Platform

__all__ = ["STREAMS", "api_probes", "observe_learning_event"]

logger = logging.getLogger(__name__)

STREAMS = (TASKS_STREAM, DLQ_STREAM, OUTCOMES_STREAM, EVENTS_STREAM, EVENTS_DLQ_STREAM)
"""The streams whose depth and consumers a scrape of the API shows."""

_ACTIVE = ("queued", "running", "waiting_approval")
_ENDS = frozenset({"succeeded", "failed", "cancelled", "dead_lettered"})
_TASKS: sa.Table = TaskRow.__table__  # type: ignore[assignment]


def api_probes(platform: Platform, settings: Settings, probes: ProbeSet) -> ProbeSet:
    """Add the API's scrape-time reads to ``probes`` and return it."""
    probes.add("jetstream", lambda: _read_jetstream(platform))
    probes.add("tasks", lambda: _count_active_tasks(platform))
    probes.add("budgets", _budgets_reader(platform, settings))
    return probes


async def _read_jetstream(platform: Platform) -> None:
    if not platform.bus.connected:
        raise ConnectionError("NATS is not connected")
    js = platform.bus.js
    streams: list[StreamState] = []
    consumers: list[ConsumerState] = []
    for info in await js.streams_info():
        name = info.config.name
        if name not in STREAMS:
            continue
        streams.append(
            StreamState(stream=name, messages=info.state.messages, bytes=info.state.bytes)
        )
        for consumer in await js.consumers_info(name):
            # Durable consumers only: ephemeral ones (a replay, an SSE follower) come and go.
            if not consumer.config.durable_name:
                continue
            consumers.append(
                ConsumerState(
                    stream=name,
                    consumer=consumer.name,
                    pending=consumer.num_pending or 0,
                    ack_pending=consumer.num_ack_pending or 0,
                    redelivered=consumer.num_redelivered or 0,
                    acked=(consumer.ack_floor.stream_seq if consumer.ack_floor else 0) or 0,
                )
            )
    set_jetstream(streams, consumers)


async def _count_active_tasks(platform: Platform) -> None:
    query = (
        sa.select(_TASKS.c.state, _TASKS.c.agent, sa.func.count())
        .where(_TASKS.c.state.in_(_ACTIVE))
        .group_by(_TASKS.c.state, _TASKS.c.agent)
    )
    async with platform.db.transaction() as conn:
        rows = (await conn.execute(query)).all()
    set_active_tasks(TaskCount(state=r[0], agent=r[1], count=int(r[2])) for r in rows)


def _budgets_reader(platform: Platform, settings: Settings) -> Callable[[], Awaitable[None]]:
    from spine.platform.metering.budgets import GLOBAL

    scopes = [GLOBAL]
    if settings.metrics.tenant_label:
        scopes += [f"tenant:{name}" for name in settings.budgets.tenants]

    async def read() -> None:
        for scope in scopes:
            state = await platform.metered.budgets.state(scope)
            set_budget(
                scope,
                limit=_float(state.limit),
                spent=float(state.spent),
                remaining=_float(state.remaining),
            )

    return read


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def observe_learning_event(event: dict[str, Any]) -> None:
    """Record one OUTCOMES event (a ``model.outcome``, ``task.signal`` or ``feedback``)."""
    kind = event.get("type")
    if kind == "model.outcome":
        record_model_call(
            str(event.get("model", "")),
            str(event.get("provider", "")),
            str(event.get("strategy", "")),
            str(event.get("outcome", "")),
            float(event.get("latency_ms") or 0) / 1000,
            int(event.get("input_tokens") or 0),
            int(event.get("output_tokens") or 0),
            float(event.get("cost") or 0),
            cache_hit=bool(event.get("cache_hit")),
            fell_back=bool(event.get("fallback_path")),
            tenant=event.get("tenant"),
        )
    elif kind == "task.signal":
        agent, signal = str(event.get("agent", "")), str(event.get("kind", ""))
        if signal in _ENDS:
            record_task_finished(agent, signal, tenant=event.get("tenant"))
        else:
            record_task_signal(agent, signal)
    elif kind == "feedback":
        record_feedback(str(event.get("target_kind", "")))
