"""Routing weights: every model's learned estimates, the one state the learner keeps.

:class:`RoutingWeights` holds, per model, a :class:`QualityRegression` (quality as a function of
the request's features) and running statistics of the raw quality score, the latency and the
cost of its calls. :meth:`RoutingWeights.observe` folds one :class:`Observation` in; any of its
signals may be missing (a call's outcome brings latency and cost at once, a quality score joined
later by call id brings the score with the call's features).

Guarantees: the same observations in the same order give bit-identical state, and
:meth:`~RoutingWeights.to_dict` / :meth:`~RoutingWeights.from_dict` round-trip it exactly, so
replaying the outcome stream rebuilds the weights a snapshot holds. ``version`` counts the
observations folded in (any signal); ``steps`` counts the quality scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spine.platform.errors import BadRequest
from spine.platform.learning.estimator import Priors, QualityRegression, RunningStat
from spine.platform.learning.features import FeatureSpace, SparseFeatures

__all__ = ["SNAPSHOT_FORMAT", "ModelEstimates", "Observation", "RoutingWeights"]

SNAPSHOT_FORMAT = 3
_READABLE_FORMATS = frozenset({1, 2, SNAPSHOT_FORMAT})


class Observation(BaseModel):
    """What the learner is told about one call of ``model``; missing signals are None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    features: SparseFeatures | None = Field(
        None, description="The request's features, needed with a quality score."
    )
    quality: float | None = Field(None, ge=0, le=1, description="How good the answer was.")
    latency_ms: float | None = Field(None, ge=0)
    cost: float | None = Field(None, ge=0, description="What the call cost, in the currency.")


@dataclass(slots=True, kw_only=True)
class ModelEstimates:
    """One model's learned estimates."""

    quality: QualityRegression
    score: RunningStat
    latency_ms: RunningStat
    cost: RunningStat


@dataclass(slots=True, kw_only=True)
class RoutingWeights:
    """Every model's estimates, in one feature space under one set of priors."""

    space: FeatureSpace = field(default_factory=FeatureSpace)
    priors: Priors = field(default_factory=Priors)
    window: int = 100
    """How many recent calls the latency, cost and score statistics follow."""
    version: int = 0
    steps: int = 0
    models: dict[str, ModelEstimates] = field(default_factory=dict)

    def estimates(self, model: str) -> ModelEstimates | None:
        """Return what is known of ``model``, None before any observation of it."""
        return self.models.get(model)

    def quality_model(self, model: str) -> QualityRegression:
        """Return ``model``'s quality regression (the prior for a model never observed)."""
        known = self.models.get(model)
        return known.quality if known else QualityRegression.prior(self.space, self.priors)

    def predict(self, model: str, features: SparseFeatures) -> tuple[float, float]:
        """Return ``model``'s expected quality for ``features`` and its variance."""
        self._check(features)
        return self.quality_model(model).predict(features, step=self.steps, priors=self.priors)

    def observe(self, observation: Observation) -> None:
        """Fold one observation in.

        Raises:
            BadRequest: A quality score came without features, or with features of another
                feature space.
        """
        estimates = self._estimates(observation.model)
        if observation.quality is not None:
            if observation.features is None:
                raise BadRequest("a quality score needs the request's features", field="features")
            self._check(observation.features)
            self.steps += 1
            estimates.quality.observe(
                observation.features, observation.quality, step=self.steps, priors=self.priors
            )
            estimates.score.observe(observation.quality)
        if observation.latency_ms is not None:
            estimates.latency_ms.observe(observation.latency_ms)
        if observation.cost is not None:
            estimates.cost.observe(observation.cost)
        self.version += 1

    def _estimates(self, model: str) -> ModelEstimates:
        known = self.models.get(model)
        if known is None:
            known = ModelEstimates(
                quality=QualityRegression.prior(self.space, self.priors),
                score=RunningStat(window=self.window),
                latency_ms=RunningStat(window=self.window),
                cost=RunningStat(window=self.window),
            )
            self.models[model] = known
        return known

    def _check(self, features: SparseFeatures) -> None:
        if features.space != self.space.id:
            raise BadRequest(
                f"features of space {features.space!r}, the weights use {self.space.id!r}",
                field="features.space",
            )

    def __iter__(self) -> Iterator[tuple[str, ModelEstimates]]:
        return iter(sorted(self.models.items()))

    def to_dict(self) -> dict[str, Any]:
        """Return the whole state as a JSON-able dict (arrays as base64 float64)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "space": {
                "id": self.space.id,
                "text_dims": self.space.text_dims,
                "category_dims": self.space.category_dims,
                "tenant_dims": self.space.tenant_dims,
            },
            "priors": self.priors.to_dict(),
            "window": self.window,
            "version": self.version,
            "steps": self.steps,
            "models": {
                name: {
                    "quality": est.quality.to_dict(),
                    "score": est.score.to_dict(),
                    "latency_ms": est.latency_ms.to_dict(),
                    "cost": est.cost.to_dict(),
                }
                for name, est in sorted(self.models.items())
            },
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, previous: RoutingWeights | None = None
    ) -> RoutingWeights:
        """Rebuild the state written by :meth:`to_dict`.

        ``previous``: weights loaded before, whose covariances are reused where no fold
        changed them since (a router loading each new version).

        Raises:
            BadRequest: The snapshot is of another format or does not hold together.
        """
        try:
            if data["format"] not in _READABLE_FORMATS:
                raise BadRequest(f"weights snapshot format {data['format']!r}", field="format")
            layout = data["space"]
            space = FeatureSpace(
                text_dims=int(layout["text_dims"]),
                category_dims=int(layout["category_dims"]),
                tenant_dims=int(layout["tenant_dims"]),
            )
            priors = Priors(**{k: float(v) for k, v in data["priors"].items()})
            window = int(data["window"])
            weights = cls(
                space=space,
                priors=priors,
                window=window,
                version=int(data["version"]),
                steps=int(data["steps"]),
            )
            for name, body in data["models"].items():
                before = previous.models.get(name) if previous is not None else None
                weights.models[name] = ModelEstimates(
                    quality=QualityRegression.from_dict(
                        body["quality"],
                        space,
                        priors,
                        previous=before.quality if before is not None else None,
                    ),
                    score=RunningStat.from_dict(body["score"], window=window),
                    latency_ms=RunningStat.from_dict(body["latency_ms"], window=window),
                    cost=RunningStat.from_dict(body["cost"], window=window),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"not a weights snapshot: {exc}", field="weights") from exc
        return weights
