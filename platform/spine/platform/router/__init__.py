"""The model router: catalogue, strategies, per-model health and fallback across providers.

:class:`ModelRouter` implements the :class:`~spine.platform.llm.ModelClient` seam, so agents
and (later) the gateway call it the way they call the single-provider client.
"""

from spine.platform.router.catalogue import (
    TOY_NOTE,
    Capabilities,
    ModelCatalogue,
    ModelSpec,
    Requirements,
    discover_ollama,
    load_models_file,
)
from spine.platform.router.health import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Clock,
    HealthView,
    LatencyAverage,
    ModelHealth,
    MonotonicClock,
    Permit,
)
from spine.platform.router.router import CIRCUIT_OPEN, ModelCaller, ModelRouter, RoutePlan
from spine.platform.router.strategies import (
    STRATEGIES,
    RoutingContext,
    Strategy,
    cost_optimized,
    local_first,
    order_candidates,
    quality,
    speed,
)
from spine.platform.router.streaming import CompletionStream, first_output

__all__ = [
    "CIRCUIT_OPEN",
    "STRATEGIES",
    "TOY_NOTE",
    "BreakerPolicy",
    "BreakerState",
    "Capabilities",
    "CircuitBreaker",
    "Clock",
    "CompletionStream",
    "HealthView",
    "LatencyAverage",
    "ModelCaller",
    "ModelCatalogue",
    "ModelHealth",
    "ModelRouter",
    "ModelSpec",
    "MonotonicClock",
    "Permit",
    "Requirements",
    "RoutePlan",
    "RoutingContext",
    "Strategy",
    "cost_optimized",
    "discover_ollama",
    "first_output",
    "load_models_file",
    "local_first",
    "order_candidates",
    "quality",
    "speed",
]
