"""The ``learned`` routing decision, and the learned figures the ``quality`` and ``speed``
strategies use.

:meth:`LearnedPolicy.decide` scores each candidate model for one request:

1. **Quality**: the model's expected quality for the request's features and its uncertainty
   (:meth:`RoutingWeights.predict`); a Thompson draw ``expected + exploration * std * N(0, 1)``
   from it is what competes, so a model that is uncertain for this kind of request (untried,
   or unobserved for a while) sometimes wins; the draw shrinks as observations come in.
2. **Cost**: the candidate's expected cost of this call (its price for this request, given
   by the caller), else the mean cost of its recent calls, else (unknown) the dearest known
   one; a free or local model costs 0. Costs count relative to the dearest candidate (0..1).
3. **The knob**: ``cost_weight`` (λ ≥ 0) is how much quality (on the 0..1 scale) the dearest
   candidate must add over a free one to be worth it: score = draw - λ_eff · relative cost -
   ``latency_weight`` · relative latency. λ = 0 buys the best expected quality at any price;
   λ = 0.1 pays the dearest model for ten points of quality more. Budget pressure p (0..1)
   raises it: λ_eff = λ + p · max(0, 1 - λ), so at full pressure only a model a whole
   quality point better than a free one could justify its price.
4. The highest score is chosen; the decision records whether the draw changed the choice
   (``exploration``) and whether the candidates have fewer than ``min_observations`` quality
   scores between them (``cold_start``: the caller should use its configured strategy).

The random generator is the caller's, so replays and tests seed it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.learning.features import SparseFeatures
from spine.platform.learning.weights import RoutingWeights

__all__ = [
    "Candidate",
    "CandidateScore",
    "LearnedPolicy",
    "RoutingDecision",
    "latency_bound",
    "learned_quality",
]


@dataclass(slots=True, kw_only=True, frozen=True)
class Candidate:
    """A model the request may go to."""

    name: str
    expected_cost: float | None = None
    """What this call would cost on it (its prices for this request); None: unknown."""
    free: bool = False
    """A local or otherwise free model: its cost is 0 whatever else is said."""


class CandidateScore(BaseModel):
    """How one candidate scored in a decision."""

    model_config = ConfigDict(extra="forbid")

    model: str
    quality: float = Field(description="Expected quality for this request.")
    uncertainty: float = Field(description="Standard deviation of the expected quality.")
    draw: float = Field(description="The Thompson draw that competed.")
    cost: float | None = Field(description="The expected cost used; None: unknown.")
    relative_cost: float
    latency_ms: float | None
    score: float
    observations: int


class RoutingDecision(BaseModel):
    """What the ``learned`` strategy decided for one request, and why (the audit record)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["learned"] = "learned"
    chosen: str
    ranking: list[str] = Field(description="Every candidate, best score first (a fallback order).")
    exploration: bool = Field(description="The draw chose another model than the means would.")
    cold_start: bool = Field(description="Too few observations: use the configured strategy.")
    weights_version: int
    cost_weight: float
    effective_cost_weight: float
    budget_pressure: float
    candidates: list[CandidateScore]


@dataclass(slots=True, kw_only=True, frozen=True)
class LearnedPolicy:
    """The ``learned`` strategy's settings; :meth:`decide` is the decision."""

    exploration: float = 0.15
    """Scale of the Thompson draw (0: always the best expected score)."""
    min_observations: int = 20
    latency_weight: float = 0.0
    """Quality given up for the slowest candidate's latency, relative to an instant one."""

    def decide(
        self,
        weights: RoutingWeights,
        candidates: Sequence[Candidate],
        features: SparseFeatures,
        *,
        cost_weight: float,
        rng: np.random.Generator,
        budget_pressure: float = 0.0,
    ) -> RoutingDecision:
        """Choose one of ``candidates`` for the request described by ``features``.

        Raises:
            ValueError: No candidates, or a knob out of its range.
        """
        if not candidates:
            raise ValueError("a decision needs at least one candidate")
        if cost_weight < 0 or not 0 <= budget_pressure <= 1:
            raise ValueError("cost_weight must be >= 0 and budget_pressure within 0..1")
        effective = cost_weight + budget_pressure * max(0.0, 1.0 - cost_weight)
        costs = _costs(weights, candidates)
        dearest = max((c for c in costs if c is not None), default=0.0)
        latencies = [_latency(weights, c.name) for c in candidates]
        slowest = max((v for v in latencies if v is not None), default=0.0)
        scores: list[CandidateScore] = []
        greedy: list[float] = []
        observed = 0
        for candidate, cost, latency in zip(candidates, costs, latencies, strict=True):
            expected, variance = weights.predict(candidate.name, features)
            std = math.sqrt(variance)
            draw = expected + self.exploration * std * float(rng.standard_normal())
            relative = (dearest if cost is None else cost) / dearest if dearest > 0 else 0.0
            slow = latency / slowest if latency is not None and slowest > 0 else 0.0
            penalty = effective * relative + self.latency_weight * slow
            count = weights.quality_model(candidate.name).observations
            observed += count
            greedy.append(expected - penalty)
            scores.append(
                CandidateScore(
                    model=candidate.name,
                    quality=expected,
                    uncertainty=std,
                    draw=draw,
                    cost=cost,
                    relative_cost=relative,
                    latency_ms=latency,
                    score=draw - penalty,
                    observations=count,
                )
            )
        order = sorted(range(len(scores)), key=lambda i: -scores[i].score)
        best_mean = max(range(len(greedy)), key=lambda i: greedy[i])
        return RoutingDecision(
            chosen=scores[order[0]].model,
            ranking=[scores[i].model for i in order],
            exploration=order[0] != best_mean,
            cold_start=observed < self.min_observations,
            weights_version=weights.version,
            cost_weight=cost_weight,
            effective_cost_weight=effective,
            budget_pressure=budget_pressure,
            candidates=scores,
        )


def _costs(weights: RoutingWeights, candidates: Sequence[Candidate]) -> list[float | None]:
    out: list[float | None] = []
    for candidate in candidates:
        if candidate.free:
            out.append(0.0)
        elif candidate.expected_cost is not None:
            out.append(candidate.expected_cost)
        else:
            known = weights.estimates(candidate.name)
            out.append(known.cost.mean if known and known.cost.count else None)
    return out


def _latency(weights: RoutingWeights, model: str) -> float | None:
    known = weights.estimates(model)
    return known.latency_ms.mean if known and known.latency_ms.count else None


def learned_quality(
    weights: RoutingWeights,
    model: str,
    configured: float,
    *,
    features: SparseFeatures | None = None,
    min_observations: int = 20,
) -> float:
    """Return ``model``'s learned quality, or ``configured`` while it has too few scores.

    With ``features`` the estimate is for that request, otherwise the mean of its recent
    scores; clipped to 0..1.
    """
    known = weights.estimates(model)
    if known is None or known.quality.observations < min_observations:
        return configured
    if features is None:
        return min(1.0, max(0.0, known.score.mean))
    expected, _ = weights.predict(model, features)
    return min(1.0, max(0.0, expected))


def latency_bound(weights: RoutingWeights, model: str, *, confidence: float = 1.0) -> float:
    """Return an optimistic latency (ms) to rank ``model`` by for the ``speed`` strategy.

    A model never measured gets 0, so it is tried before any measured one; a measured one
    gets its mean latency less ``confidence`` standard errors (at least 0).
    """
    known = weights.estimates(model)
    if known is None or not known.latency_ms.count:
        return 0.0
    stat = known.latency_ms
    return max(0.0, stat.mean - confidence * stat.std_error)
