"""The ``learned`` strategy in the router: the current weights, and a decision per request.

The weights arrive from the learning consumer (a new version is announced and loaded, see
:mod:`spine.events.weights`); until the first version, or while the candidates have too few
quality scores between them, the decision is *cold* and the plan follows the configured
``GENAI_LEARNING__COLD_START_STRATEGY`` (the decision is still recorded, saying so). Models
whose breaker would refuse a call go last, whatever the draw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from spine.platform.learning.features import SparseFeatures
from spine.platform.learning.policy import Candidate, LearnedPolicy
from spine.platform.learning.weights import RoutingWeights
from spine.platform.router.health import CallKind, HealthView
from spine.platform.router.specs import ModelSpec, Requirements
from spine.platform.settings import LearningSettings

__all__ = ["LearnedRouting"]


class LearnedRouting:
    """Holds the routing weights a process uses and makes ``learned`` decisions with them."""

    def __init__(self, settings: LearningSettings, *, seed: int | None = None) -> None:
        self.settings = settings
        self.policy = LearnedPolicy(
            exploration=settings.exploration, min_observations=settings.min_observations
        )
        self.weights: RoutingWeights | None = None
        self.version: int | None = None
        self.events = 0
        """How many learning events the weights in use were learnt from (their snapshot's)."""
        self.loaded_at: float | None = None
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # the generator is not thread-safe

    def use(self, weights: RoutingWeights, version: int, *, events: int) -> None:
        """Route by these weights (``version``, learnt from ``events`` events) from now on."""
        self.weights, self.version, self.events = weights, version, events
        self.loaded_at = time.time()

    def age_seconds(self) -> float | None:
        """How long ago the weights in use were loaded (None: none yet)."""
        return None if self.loaded_at is None else time.time() - self.loaded_at

    def cost_weight(self, tenant: str | None, asked: float | None) -> float:
        """The knob of a call: its own, else its tenant's, else the global one."""
        if asked is not None:
            return asked
        return self.settings.tenant_cost_weights.get(tenant or "", self.settings.cost_weight)

    def decide(
        self,
        candidates: Sequence[ModelSpec],
        requirements: Requirements,
        features: SparseFeatures,
        *,
        health: HealthView,
        kind: CallKind,
        cost_weight: float,
        budget_pressure: float,
    ) -> tuple[list[ModelSpec], dict[str, Any]] | None:
        """Order ``candidates`` by the weights.

        Returns:
            The order (empty when the decision is cold: the caller orders by the cold-start
            strategy) and the decision's record, for the outcome event and the audit; None
            before any weights.
        """
        weights = self.weights
        if weights is None or not candidates:
            return None
        offered = [
            Candidate(
                name=spec.name,
                expected_cost=_float(spec.estimated_cost(requirements)),
                free=spec.input_price == 0 and spec.output_price == 0,
            )
            for spec in candidates
        ]
        with self._lock:
            decision = self.policy.decide(
                weights,
                offered,
                features,
                cost_weight=cost_weight,
                rng=self._rng,
                budget_pressure=budget_pressure,
            )
        record = decision.model_dump(mode="json")
        record["weights_version"] = self.version
        if decision.cold_start:
            return [], record
        by_name = {spec.name: spec for spec in candidates}
        ranked = [by_name[name] for name in decision.ranking if name in by_name]
        # A model whose breaker refuses calls goes last, whatever the draw said.
        ranked.sort(key=lambda spec: not health.available(spec.name, kind))
        return ranked, record


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
