"""The model router: catalog, strategies, per-model health and fallback across providers.

:class:`ModelRouter` plans which models a call tries (``catalog`` → ``strategies`` with
``health``) and tries them through an :class:`Upstream`; ``streaming`` holds a stream bound to
the model that produced output. Pricing, caching and recording a call is metering's
(:mod:`spine.platform.metering`).
"""

from spine.platform.router.attempts import RoutePlan
from spine.platform.router.catalog import ModelCatalog, discover_ollama, load_models_file
from spine.platform.router.health import (
    BreakerPolicy,
    BreakerState,
    CallKind,
    CircuitBreaker,
    Clock,
    HealthView,
    LatencyAverage,
    ModelHealth,
    MonotonicClock,
    Permit,
)
from spine.platform.router.router import CIRCUIT_OPEN, ModelRouter
from spine.platform.router.specs import TOY_NOTE, Capabilities, ModelSpec, Requirements
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
from spine.platform.router.upstream import Upstream

__all__ = [
    "CIRCUIT_OPEN",
    "STRATEGIES",
    "TOY_NOTE",
    "BreakerPolicy",
    "BreakerState",
    "CallKind",
    "Capabilities",
    "CircuitBreaker",
    "Clock",
    "CompletionStream",
    "HealthView",
    "LatencyAverage",
    "ModelCatalog",
    "ModelHealth",
    "ModelRouter",
    "ModelSpec",
    "MonotonicClock",
    "Permit",
    "Requirements",
    "RoutePlan",
    "RoutingContext",
    "Strategy",
    "Upstream",
    "cost_optimized",
    "discover_ollama",
    "first_output",
    "load_models_file",
    "local_first",
    "order_candidates",
    "quality",
    "speed",
]
