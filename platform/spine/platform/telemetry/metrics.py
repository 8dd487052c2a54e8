"""Every metric the platform exposes, and the typed functions that record them.

One registry per process (:data:`REGISTRY`), served as ``GET /metrics`` by the API and by the
small server of a worker or the learner (:mod:`~spine.platform.telemetry.exposition`). The
metrics are process-wide by nature, like the logger: code anywhere records through the
functions below, never through a metric object, so every label value passes the
:class:`~spine.platform.telemetry.labels.LabelGuard` (no task ids, no prompts, no secrets, a cap
on distinct values; the tenant only when ``GENAI_METRICS__TENANT_LABEL`` allows it).

Where each family comes from:

- ``spine_http_*``: the API's middleware (route templates, never raw paths).
- ``spine_tasks_active``, ``spine_budget_*``, ``spine_jetstream_*``: read on a scrape of the API
  (short cache; see :class:`~spine.platform.telemetry.probes.ProbeSet`).
- ``spine_model_*``, ``spine_tasks_finished_total``, ``spine_task_signals_total``,
  ``spine_feedback_total``: the learner, from the OUTCOMES stream (every routed call of every
  process is there once).
- ``spine_tasks_submitted_total``, ``spine_tasks_running``, ``spine_task_run_seconds``,
  ``spine_tool_*``, ``spine_model_breaker_state``: the process that does the work.
- ``process_*``, ``python_*``: the standard process collectors.

The collectors that read a snapshot on a scrape (JetStream, circuit breakers) are in
:mod:`~spine.platform.telemetry.snapshots`, on the same registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from spine.platform.telemetry.labels import LabelGuard

__all__ = [
    "GUARD",
    "REGISTRY",
    "TaskCount",
    "describe_process",
    "http_in_flight",
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
    "set_active_tasks",
    "set_budget",
]

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry ``/metrics`` serves (not prometheus_client's global one: libraries may fill that)."""

GUARD = LabelGuard()
"""Bounds every label value; :func:`~spine.platform.telemetry.configure` applies the settings."""

ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Seconds: an API answer, a tool call, a model call, a task's run.
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TASK = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_PROCESS = Info(
    "spine_process", "What this process is: its role in the platform.", ["role"], registry=REGISTRY
)

# -- HTTP (the API) -------------------------------------------------------------------------

_HTTP_REQUESTS = Counter(
    "spine_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
_HTTP_SECONDS = Histogram(
    "spine_http_request_seconds",
    "Seconds until a response's headers were sent (a streamed answer's first byte).",
    ["method", "route"],
    buckets=_FAST,
    registry=REGISTRY,
)
_HTTP_IN_FLIGHT = Gauge(
    "spine_http_requests_in_flight", "HTTP requests being answered.", registry=REGISTRY
)

# -- tasks ----------------------------------------------------------------------------------

_TASKS_SUBMITTED = Counter(
    "spine_tasks_submitted",
    "Tasks committed (new ones; an idempotent repeat is not counted), by agent.",
    ["agent", "tenant"],
    registry=REGISTRY,
)
_TASKS_FINISHED = Counter(
    "spine_tasks_finished",
    "Tasks that ended (succeeded, failed, cancelled, dead_lettered), from the learner.",
    ["agent", "state", "tenant"],
    registry=REGISTRY,
)
_TASK_SIGNALS = Counter(
    "spine_task_signals",
    "Other task signals on OUTCOMES (schema_failed, tool_args_rejected, approval_rejected).",
    ["agent", "kind"],
    registry=REGISTRY,
)
_TASKS_RUNNING = Gauge(
    "spine_tasks_running",
    "Tasks this worker process runs now, by agent.",
    ["agent"],
    registry=REGISTRY,
)
_TASK_RUN_SECONDS = Histogram(
    "spine_task_run_seconds",
    "Seconds one attempt of a task ran in a worker, by agent (how tasks ended: the learner's).",
    ["agent"],
    buckets=_TASK,
    registry=REGISTRY,
)
_TASKS_ACTIVE = Gauge(
    "spine_tasks_active",
    "Tasks not yet ended (queued, running, waiting_approval), from the database.",
    ["state", "agent"],
    registry=REGISTRY,
)

# -- model calls (the learner, from OUTCOMES) -------------------------------------------------

_MODEL_CALLS = Counter(
    "spine_model_calls",
    "Routed model calls, by model, provider, strategy and outcome ('ok' or the error class).",
    ["model", "provider", "strategy", "outcome", "tenant"],
    registry=REGISTRY,
)
_MODEL_SECONDS = Histogram(
    "spine_model_call_seconds",
    "Seconds a routed model call took, by model and provider.",
    ["model", "provider"],
    buckets=_SLOW,
    registry=REGISTRY,
)
_MODEL_TOKENS = Counter(
    "spine_model_tokens",
    "Tokens of routed model calls, by model, provider and direction (input, output).",
    ["model", "provider", "direction", "tenant"],
    registry=REGISTRY,
)
_MODEL_COST = Counter(
    "spine_model_cost_usd",
    "What routed model calls cost, in US dollars, by model and provider.",
    ["model", "provider", "tenant"],
    registry=REGISTRY,
)
_MODEL_CACHE_HITS = Counter(
    "spine_model_cache_hits",
    "Model calls answered from the response cache, by model.",
    ["model"],
    registry=REGISTRY,
)
_MODEL_FALLBACKS = Counter(
    "spine_model_fallbacks",
    "Model calls answered (or failed) after falling back past other models, by model.",
    ["model", "provider"],
    registry=REGISTRY,
)
_FEEDBACK = Counter(
    "spine_feedback",
    "Ratings clients gave, by what they rated (call, task, completion).",
    ["target"],
    registry=REGISTRY,
)

# -- tools ----------------------------------------------------------------------------------

_TOOL_CALLS = Counter(
    "spine_tool_calls",
    "Tool calls, by tool and outcome ('ok' or the error type).",
    ["tool", "outcome"],
    registry=REGISTRY,
)
_TOOL_SECONDS = Histogram(
    "spine_tool_call_seconds",
    "Seconds a tool call took, by tool.",
    ["tool"],
    buckets=_FAST,
    registry=REGISTRY,
)

# -- budgets (the API, from the database) ---------------------------------------------------

_BUDGET_LIMIT = Gauge(
    "spine_budget_limit_usd",
    "Today's spending limit of a budget scope.",
    ["scope"],
    registry=REGISTRY,
)
_BUDGET_SPENT = Gauge(
    "spine_budget_spent_usd",
    "What a budget scope spent today (settled).",
    ["scope"],
    registry=REGISTRY,
)
_BUDGET_REMAINING = Gauge(
    "spine_budget_remaining_usd",
    "What a budget scope can still reserve today (limited scopes only).",
    ["scope"],
    registry=REGISTRY,
)
_BUDGET_ALERTS = Counter(
    "spine_budget_alerts",
    "Budget thresholds (80, 100 percent) reached and announced by this process, by period.",
    ["period", "threshold"],
    registry=REGISTRY,
)


def describe_process(role: str) -> None:
    """Say which role this process plays (``api``, ``worker``, ``learner``)."""
    _PROCESS.labels(role=role).info({})


def http_in_flight() -> Gauge:
    """Return the gauge of requests in flight (the middleware raises and lowers it)."""
    return _HTTP_IN_FLIGHT


def record_http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request; ``route`` is a template (``/v1/tasks/{task_id}``)."""
    children = _HTTP_CHILDREN.get((method, route, status))
    if children is None:
        children = _http_children(method, route, status)
    children[0].inc()
    children[1].observe(seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Every request is counted: its two labelled series are looked up once per (method, route,
# status), not through ``labels()`` each time (5.3 µs a request against 1.2).
_HTTP_CHILDREN: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_MAX_HTTP_CHILDREN = 4096


def _http_children(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    label_method = method if method in _METHODS else "other"
    label_route = GUARD.value("route", route)
    children = (
        _HTTP_REQUESTS.labels(label_method, label_route, str(status)),
        _HTTP_SECONDS.labels(label_method, label_route),
    )
    # Only a route the guard admitted as itself (it stays admitted); the key's own values are
    # bounded too, as a client's method is any token it likes.
    if label_route == route and len(_HTTP_CHILDREN) < _MAX_HTTP_CHILDREN:
        _HTTP_CHILDREN[method, route, status] = children
    return children


def record_task_submitted(agent: str, *, tenant: str | None = None) -> None:
    """Count a task committed by this process."""
    _TASKS_SUBMITTED.labels(agent=GUARD.value("agent", agent), tenant=GUARD.tenant(tenant)).inc()


def record_task_started(agent: str) -> None:
    """Count a task this worker began running (pair it with :func:`record_task_ended`)."""
    _TASKS_RUNNING.labels(agent=GUARD.value("agent", agent)).inc()


def record_task_ended(agent: str, seconds: float) -> None:
    """Record that an attempt this worker ran is over, and how long it ran."""
    agent = GUARD.value("agent", agent)
    _TASKS_RUNNING.labels(agent=agent).dec()
    _TASK_RUN_SECONDS.labels(agent=agent).observe(max(seconds, 0.0))


def record_task_finished(agent: str, state: str, *, tenant: str | None = None) -> None:
    """Count a task that ended in ``state``."""
    _TASKS_FINISHED.labels(
        agent=GUARD.value("agent", agent),
        state=GUARD.value("state", state),
        tenant=GUARD.tenant(tenant),
    ).inc()


def record_task_signal(agent: str, kind: str) -> None:
    """Count a task signal that is not an end (a schema failure, a rejected approval...)."""
    _TASK_SIGNALS.labels(agent=GUARD.value("agent", agent), kind=GUARD.value("kind", kind)).inc()


def record_model_call(
    model: str,
    provider: str,
    strategy: str,
    outcome: str,
    seconds: float,
    tokens_in: int,
    tokens_out: int,
    cost: float,
    *,
    cache_hit: bool = False,
    fell_back: bool = False,
    tenant: str | None = None,
) -> None:
    """Count one routed model call with its latency, tokens and cost."""
    model = GUARD.value("model", model)
    provider = GUARD.value("provider", provider)
    tenant = GUARD.tenant(tenant)
    _MODEL_CALLS.labels(
        model=model,
        provider=provider,
        strategy=GUARD.value("strategy", strategy or "explicit"),
        outcome=GUARD.value("outcome", outcome),
        tenant=tenant,
    ).inc()
    _MODEL_SECONDS.labels(model=model, provider=provider).observe(max(seconds, 0.0))
    if tokens_in:
        _MODEL_TOKENS.labels(model, provider, "input", tenant).inc(max(tokens_in, 0))
    if tokens_out:
        _MODEL_TOKENS.labels(model, provider, "output", tenant).inc(max(tokens_out, 0))
    _MODEL_COST.labels(model=model, provider=provider, tenant=tenant).inc(max(cost, 0.0))
    if cache_hit:
        _MODEL_CACHE_HITS.labels(model=model).inc()
    if fell_back:
        _MODEL_FALLBACKS.labels(model=model, provider=provider).inc()


def record_feedback(target: str) -> None:
    """Count one rating (of a ``call``, a ``task`` or a ``completion``)."""
    _FEEDBACK.labels(target=GUARD.value("target", target)).inc()


def record_tool_call(tool: str, outcome: str | None, seconds: float) -> None:
    """Count one tool call; ``outcome`` is None when it succeeded, else its error type."""
    tool = GUARD.value("tool", tool)
    _TOOL_CALLS.labels(tool=tool, outcome=GUARD.value("outcome", outcome or "ok")).inc()
    _TOOL_SECONDS.labels(tool=tool).observe(max(seconds, 0.0))


def record_budget_alert(period: str, threshold: int) -> None:
    """Count one budget threshold announced (once across processes: by the one that saw it)."""
    _BUDGET_ALERTS.labels(period=GUARD.value("period", period), threshold=str(threshold)).inc()


def set_budget(scope: str, *, limit: float | None, spent: float, remaining: float | None) -> None:
    """Show where a budget scope stands today (``global``, or ``tenant:<name>``)."""
    scope = GUARD.value("scope", scope)
    _BUDGET_SPENT.labels(scope=scope).set(spent)
    if limit is not None:
        _BUDGET_LIMIT.labels(scope=scope).set(limit)
    if remaining is not None:
        _BUDGET_REMAINING.labels(scope=scope).set(remaining)


@dataclass(slots=True, kw_only=True, frozen=True)
class TaskCount:
    """How many tasks of one agent are in one state that has not ended."""

    state: str
    agent: str
    count: int


def set_active_tasks(counts: Iterable[TaskCount]) -> None:
    """Replace the counts of tasks not yet ended (a state with none reads 0, not stale)."""
    fresh: dict[tuple[str, str], int] = {}
    for row in counts:
        key = (GUARD.value("state", row.state), GUARD.value("agent", row.agent))
        fresh[key] = fresh.get(key, 0) + row.count
    for labels in _known_series(_TASKS_ACTIVE):
        fresh.setdefault((labels[0], labels[1]), 0)
    for (state, agent), count in fresh.items():
        _TASKS_ACTIVE.labels(state=state, agent=agent).set(count)


def _known_series(gauge: Gauge) -> list[tuple[str, ...]]:
    return [
        tuple(sample.labels[name] for name in ("state", "agent"))
        for metric in gauge.collect()
        for sample in metric.samples
    ]
