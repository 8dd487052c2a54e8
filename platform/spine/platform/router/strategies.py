"""Routing strategies: pure functions that order the candidate models for one request.

Every strategy puts the models whose breaker would refuse a call after the others, so a dead
model is never first; among equals the provider preference (the default provider, then the
fallback chain) decides, then a configured default model (``GENAI_MODELS__<PROVIDER>``) before
models discovered or listed beside it, then the name, so the order is deterministic.

- ``local_first``: local models (best first) while they are healthy, then hosted ones in
  provider preference order; a toy model last.
- ``cost_optimized``: the cheapest model for this request (prompt and ``max_tokens`` at the
  model's prices); an unknown price ranks after every known one.
- ``quality``: the highest quality, regardless of cost: the learned estimate of a model with
  enough quality scores, its configured score otherwise.
- ``speed``: the lowest latency, optimistically: a model never measured comes first (so it gets
  measured), then the measured ones by moving-average latency (less its uncertainty, for the
  learned estimate of a model this process has not called yet).

``learned`` is not here: it needs the request's features and the learned weights, and is made
by :class:`~spine.platform.router.learned.LearnedRouting`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, get_args

from spine.platform.errors import BadRequest
from spine.platform.learning.policy import latency_bound, learned_quality
from spine.platform.learning.weights import RoutingWeights
from spine.platform.router.health import CallKind, HealthView
from spine.platform.router.specs import TOY, ModelSpec, Requirements
from spine.platform.settings import RoutingStrategy

__all__ = [
    "STRATEGIES",
    "RoutingContext",
    "Strategy",
    "cost_optimized",
    "local_first",
    "order_candidates",
    "quality",
    "speed",
    "strategy_named",
]


@dataclass(slots=True, kw_only=True, frozen=True)
class RoutingContext:
    """What a strategy may consider besides the candidates themselves."""

    health: HealthView
    requirements: Requirements = field(default_factory=Requirements)
    preference: Sequence[str] = ()
    defaults: frozenset[str] = frozenset()
    """The configured default models (``GENAI_MODELS__*``): first among otherwise equal ones."""
    weights: RoutingWeights | None = None
    """The learned routing weights, when the learner has made some."""
    min_observations: int = 20

    def rank(self, spec: ModelSpec) -> int:
        """Return the provider's place in the preference order (unlisted ones last)."""
        try:
            return list(self.preference).index(spec.provider)
        except ValueError:
            return len(self.preference)


Strategy = Callable[[Sequence[ModelSpec], RoutingContext], list[ModelSpec]]


def _ordered(
    candidates: Sequence[ModelSpec], ctx: RoutingContext, key: Callable[[ModelSpec], Any]
) -> list[ModelSpec]:
    kind: CallKind = "embedding" if ctx.requirements.embeddings else "chat"

    def full_key(spec: ModelSpec) -> tuple[Any, ...]:
        return (
            not ctx.health.available(spec.name, kind),
            key(spec),
            ctx.rank(spec),
            spec.model not in ctx.defaults,
            spec.name,
        )

    return sorted(candidates, key=full_key)


def local_first(candidates: Sequence[ModelSpec], ctx: RoutingContext) -> list[ModelSpec]:
    """Order local models first while they are healthy, then hosted ones by preference.

    A toy model (the embedded demo model) comes after every real one: it is the last resort,
    not the first choice, when anything else is configured.
    """
    return _ordered(
        candidates,
        ctx,
        lambda s: (TOY in s.tags, not s.local, 0 if s.local else ctx.rank(s), -s.quality),
    )


def cost_optimized(candidates: Sequence[ModelSpec], ctx: RoutingContext) -> list[ModelSpec]:
    """Order by the request's estimated cost, cheapest first; unknown prices last."""

    def cost(spec: ModelSpec) -> tuple[bool, Decimal, float]:
        estimate = spec.estimated_cost(ctx.requirements)
        return (estimate is None, estimate or Decimal(0), -spec.quality)

    return _ordered(candidates, ctx, cost)


def quality(candidates: Sequence[ModelSpec], ctx: RoutingContext) -> list[ModelSpec]:
    """Order by quality score, best first; cost breaks ties."""

    def best(spec: ModelSpec) -> tuple[float, bool, Decimal]:
        estimate = spec.estimated_cost(ctx.requirements)
        score = spec.quality
        if ctx.weights is not None:
            score = learned_quality(
                ctx.weights, spec.name, spec.quality, min_observations=ctx.min_observations
            )
        return (-score, estimate is None, estimate or Decimal(0))

    return _ordered(candidates, ctx, best)


def speed(candidates: Sequence[ModelSpec], ctx: RoutingContext) -> list[ModelSpec]:
    """Order by latency, fastest first; a model never measured first, to measure it."""

    def fastest(spec: ModelSpec) -> float:
        latency = ctx.health.latency_ms(spec.name)
        if latency is not None:
            return latency
        if ctx.weights is not None:
            return latency_bound(ctx.weights, spec.name)
        return 0.0

    return _ordered(candidates, ctx, fastest)


STRATEGIES: Mapping[str, Strategy] = {
    "local_first": local_first,
    "cost_optimized": cost_optimized,
    "quality": quality,
    "speed": speed,
}


def order_candidates(
    strategy: str, candidates: Sequence[ModelSpec], ctx: RoutingContext
) -> list[ModelSpec]:
    """Order ``candidates`` by the strategy named ``strategy``.

    Raises:
        BadRequest: No strategy has that name.
    """
    return strategy_named(strategy)(candidates, ctx)


def strategy_named(strategy: str) -> Strategy:
    """Return the strategy of :data:`STRATEGIES` named ``strategy`` (``learned`` is not one:
    it orders by the learned weights, see :mod:`.learned`).

    Raises:
        BadRequest: No strategy has that name.
    """
    chosen = STRATEGIES.get(strategy)
    if chosen is None:
        raise BadRequest(
            f"unknown routing strategy {strategy!r}; use one of "
            f"{', '.join(get_args(RoutingStrategy))}",
            field="strategy",
        )
    return chosen
