"""What one model's observations say: its quality as a function of the request, with uncertainty.

:class:`QualityRegression` is Bayesian linear regression of a quality score (0..1) on the
request's sparse features, with a full Gaussian posterior over the weights (mean and
covariance), updated one observation at a time (Sherman-Morrison: exact, no approximation).
Its prior is set per block of the feature space (:class:`Priors`): the bias weight starts at
``prior_quality`` (optimistic by default, so an untried model looks good until it is tried)
and every other weight at 0.

Uncertainty grows back while a model goes unobserved: each observation of *any* model is one
step, and a model ``age`` steps behind has ``min(drift * age, max_drift)`` times the prior
variance added back, so a model that was bad a while ago gets tried again. The added variance is
applied lazily (at the model's next update; predictions add it on the fly), so an update costs
O(dims²) for the observed model only.

:class:`RunningStat` keeps a mean and a variance that follow the last ``window`` observations
(a plain mean until then, an exponentially weighted one after), for latency, cost and the raw
quality score. Everything here is deterministic: the same observations in the same order give
bit-identical arrays (numpy on the same machine); the covariance is updated with a symmetric
outer product so its upper triangle is all a snapshot needs.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from spine.platform.learning.features import FeatureSpace, SparseFeatures

__all__ = ["Priors", "QualityRegression", "RunningStat"]

Vector = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]


@dataclass(slots=True, kw_only=True, frozen=True)
class Priors:
    """The prior over every model's quality weights, and the noise of a quality score.

    Variances are of one weight; the text block is L2-normalised, so its prior adds
    ``text`` to the variance of a prediction whatever the prompt's length.
    """

    prior_quality: float = 1.0
    """The bias weight's prior mean: 1.0 is optimism (an untried model is tried)."""
    bias: float = 0.1
    text: float = 0.05
    category: float = 0.05
    tenant: float = 0.02
    shape: float = 0.02
    noise: float = 0.25
    """The variance of one quality score around its expectation (a 0/1 score: at most 0.25)."""
    drift: float = 1e-4
    """Share of the prior variance given back per step a model goes unobserved."""
    max_drift: float = 0.5
    """At most this share of the prior variance is given back."""

    def variances(self, space: FeatureSpace) -> Vector:
        """Return the prior variance of each weight of ``space``."""
        out = np.zeros(space.dims)
        for block, where in space.blocks().items():
            out[where] = getattr(self, block)
        return out

    def to_dict(self) -> dict[str, float]:
        """Return the priors as JSON-able numbers."""
        return {name: getattr(self, name) for name in self.__slots__}


def _arrays(features: SparseFeatures) -> tuple[Index, Vector]:
    return np.asarray(features.indices, dtype=np.intp), np.asarray(features.values, dtype=float)


def _encode(array: Vector) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode("ascii")


def _decode(text: str) -> Vector:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").astype(np.float64)


@dataclass(slots=True, kw_only=True)
class QualityRegression:
    """Bayesian linear regression of one model's quality on the request's features."""

    mean: Vector
    cov: Vector
    prior_var: Vector
    noise: float
    observations: int = 0
    last_step: int = 0
    """The step (observations of all models) at which this model was last updated."""

    @classmethod
    def prior(cls, space: FeatureSpace, priors: Priors) -> QualityRegression:
        """Return a model that has seen nothing."""
        variances = priors.variances(space)
        mean = np.zeros(space.dims)
        mean[space.bias] = priors.prior_quality
        return cls(mean=mean, cov=np.diag(variances), prior_var=variances, noise=priors.noise)

    def predict(
        self, features: SparseFeatures, *, step: int, priors: Priors
    ) -> tuple[float, float]:
        """Return the expected quality for ``features`` and its variance (of the expectation)."""
        index, values = _arrays(features)
        expected = float(self.mean[index] @ values)
        variance = float(values @ self.cov[np.ix_(index, index)] @ values)
        drift = self._drift(step, priors)
        if drift:
            variance += drift * float(self.prior_var[index] @ (values * values))
        return expected, max(variance, 0.0)

    def observe(self, features: SparseFeatures, score: float, *, step: int, priors: Priors) -> None:
        """Fold one quality score in (exact rank-one posterior update)."""
        drift = self._drift(step, priors)
        if drift:
            self.cov[np.diag_indices_from(self.cov)] += drift * self.prior_var
        index, values = _arrays(features)
        shared = self.cov[:, index] @ values
        spread = self.noise + float(shared[index] @ values)
        error = score - float(self.mean[index] @ values)
        self.mean += shared * (error / spread)
        gain = shared / math.sqrt(spread)
        self.cov -= np.outer(gain, gain)
        self.observations += 1
        self.last_step = step

    def _drift(self, step: int, priors: Priors) -> float:
        if not self.observations or priors.drift <= 0:
            return 0.0
        return min(priors.drift * max(step - self.last_step, 0), priors.max_drift)

    def to_dict(self) -> dict[str, Any]:
        """Return the posterior as JSON-able values (arrays as base64 little-endian float64)."""
        upper = self.cov[np.triu_indices(len(self.mean))]
        return {
            "observations": self.observations,
            "last_step": self.last_step,
            "mean": _encode(self.mean),
            "cov_upper": _encode(upper),
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], space: FeatureSpace, priors: Priors
    ) -> QualityRegression:
        """Rebuild a posterior written by :meth:`to_dict` in the same feature space."""
        model = cls.prior(space, priors)
        mean = _decode(data["mean"])
        upper = _decode(data["cov_upper"])
        rows, cols = np.triu_indices(space.dims)
        if len(mean) != space.dims or len(upper) != len(rows):
            raise ValueError("the snapshot's arrays do not fit the feature space")
        model.mean = mean
        model.cov[rows, cols] = upper
        model.cov[cols, rows] = upper
        model.observations = int(data["observations"])
        model.last_step = int(data["last_step"])
        return model


@dataclass(slots=True, kw_only=True)
class RunningStat:
    """Mean and variance of a stream of numbers, following the last ``window`` of them."""

    window: int = 100
    count: int = 0
    mean: float = 0.0
    variance: float = 0.0

    def observe(self, value: float) -> None:
        """Fold one value in."""
        self.count += 1
        weight = 1.0 / min(self.count, self.window)
        delta = value - self.mean
        self.mean += weight * delta
        self.variance = (1.0 - weight) * (self.variance + weight * delta * delta)

    @property
    def std_error(self) -> float:
        """Return the uncertainty of the mean (infinite before any value)."""
        if not self.count:
            return math.inf
        return math.sqrt(self.variance / min(self.count, self.window))

    def to_dict(self) -> dict[str, Any]:
        """Return the statistic as JSON-able numbers."""
        return {"count": self.count, "mean": self.mean, "variance": self.variance}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, window: int) -> RunningStat:
        """Rebuild a statistic written by :meth:`to_dict`."""
        return cls(
            window=window,
            count=int(data["count"]),
            mean=float(data["mean"]),
            variance=float(data["variance"]),
        )
