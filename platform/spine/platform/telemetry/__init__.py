"""Telemetry: Prometheus metrics (one registry per process, ``/metrics``) and OpenTelemetry traces.

The definitions and the functions that record them are in
:mod:`~spine.platform.telemetry.metrics`; label values are bounded by
:mod:`~spine.platform.telemetry.labels`; values read on a scrape (queue depth, task counts,
budgets) by :mod:`~spine.platform.telemetry.probes`, the JetStream and breaker snapshots shown
then by :mod:`~spine.platform.telemetry.snapshots`; a worker's or the learner's own
``/metrics`` port by :mod:`~spine.platform.telemetry.exposition`. Traces (OpenTelemetry) by
:mod:`~spine.platform.telemetry.tracing`.
"""

from __future__ import annotations

from spine.platform.settings import MetricsSettings
from spine.platform.telemetry.exposition import MetricsServer, render
from spine.platform.telemetry.labels import OTHER, LabelGuard, looks_like_id
from spine.platform.telemetry.metrics import (
    GUARD,
    REGISTRY,
    TaskCount,
    describe_process,
    http_in_flight,
    record_budget_alert,
    record_feedback,
    record_http_request,
    record_model_call,
    record_task_ended,
    record_task_finished,
    record_task_signal,
    record_task_started,
    record_task_submitted,
    record_tool_call,
    set_active_tasks,
    set_budget,
)
from spine.platform.telemetry.probes import Probe, ProbeSet
from spine.platform.telemetry.snapshots import (
    BreakerSource,
    ConsumerState,
    StreamState,
    observe_breakers,
    set_jetstream,
)
from spine.platform.telemetry.tracing import (
    ModelCallSpan,
    annotate,
    http_telemetry,
    model_call,
    setup_tracing,
    shutdown_tracing,
    start_model_call,
    task_delivered,
    task_published,
    tool_call,
    tracing_active,
)

__all__ = [
    "GUARD",
    "OTHER",
    "REGISTRY",
    "BreakerSource",
    "ConsumerState",
    "LabelGuard",
    "MetricsServer",
    "ModelCallSpan",
    "Probe",
    "ProbeSet",
    "StreamState",
    "TaskCount",
    "annotate",
    "configure",
    "describe_process",
    "http_in_flight",
    "http_telemetry",
    "looks_like_id",
    "model_call",
    "observe_breakers",
    "process_server",
    "record_budget_alert",
    "record_feedback",
    "record_http_request",
    "record_model_call",
    "record_task_ended",
    "record_task_finished",
    "record_task_signal",
    "record_task_started",
    "record_task_submitted",
    "record_tool_call",
    "render",
    "set_active_tasks",
    "set_budget",
    "set_jetstream",
    "setup_tracing",
    "shutdown_tracing",
    "start_model_call",
    "task_delivered",
    "task_published",
    "tool_call",
    "tracing_active",
]


def configure(settings: MetricsSettings, *, role: str) -> ProbeSet:
    """Apply the settings to this process's metrics and return its (empty) probe set."""
    GUARD.configure(max_values=settings.max_label_values, tenant_label=settings.tenant_label)
    describe_process(role)
    return ProbeSet(max_age=settings.probe_seconds, timeout=settings.probe_timeout)


def process_server(settings: MetricsSettings, *, role: str) -> MetricsServer:
    """Build the ``/metrics`` server of a worker or the learner (start it; port 0 or
    ``enabled=false``: it never listens)."""
    probes = configure(settings, role=role)
    port = settings.port if settings.enabled else 0
    return MetricsServer(host=settings.host, port=port, port_span=settings.port_span, probes=probes)
