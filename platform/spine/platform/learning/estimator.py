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
applied lazily (at the model's next update; predictions add it on the fly), and so are the
rank-one corrections: the covariance is kept as ``base`` minus the outer products of the last
few gains, folded into ``base`` every :data:`FOLD_EVERY` updates. An update of the observed
model costs O(dims * (nnz + FOLD_EVERY)), plus O(dims²) matrix-product work once per fold.

:class:`RunningStat` keeps a mean and a variance that follow the last ``window`` observations
(a plain mean until then, an exponentially weighted one after), for latency, cost and the raw
quality score. Everything here is deterministic: the same observations in the same order give
bit-identical arrays (numpy on the same machine): a fold happens after a fixed number of updates,
never because of a snapshot, and keeps ``base`` exactly symmetric, so its upper triangle and the
pending gains are all a snapshot needs.

A snapshot keeps apart what changes at every update from what changes only at a fold, so a store
can write the large unchanged parts once (see :mod:`spine.platform.learning.snapshots`): the
strict upper triangle of ``base`` (~0.6 MB at the default feature space) changes only at a fold,
its diagonal also with drift; the pending gains are written in chunks of :data:`GAIN_CHUNK` rows,
each fixed once full.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from spine.platform.learning.features import FeatureSpace, SparseFeatures

__all__ = ["FOLD_EVERY", "GAIN_CHUNK", "Priors", "QualityRegression", "RunningStat"]

Vector = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]

FOLD_EVERY = 64
"""Updates whose gains are kept apart before they are folded into the covariance."""
GAIN_CHUNK = 8
"""Pending gain rows per chunk of a snapshot: a full chunk never changes until the fold."""
_SINGLE_THREAD_WORK = 1 << 18
"""A fold's matrix products are cut to at most this many multiply-adds each: small enough that
OpenBLAS runs them on one thread (its threads contend with the event loop on a small host)."""


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
    """Bayesian linear regression of one model's quality on the request's features.

    The posterior covariance is ``base - gains[:pending].T @ gains[:pending]``: each update
    appends its gain row, and every :data:`FOLD_EVERY` updates the rows are folded into
    ``base`` at once (in blocks small enough to stay on one BLAS thread), so an update costs
    O(dims * nnz + dims * pending) and the O(dims²) work is done in a few matrix products.
    """

    mean: Vector
    base: Vector
    prior_var: Vector
    noise: float
    gains: Vector
    pending: int = 0
    """How many rows of ``gains`` are not yet folded into ``base``."""
    observations: int = 0
    last_step: int = 0
    """The step (observations of all models) at which this model was last updated."""
    strict_upper: str | None = field(default=None, repr=False, compare=False)
    """The snapshot's encoding of ``base``'s strict upper triangle, until the next fold."""

    @classmethod
    def prior(cls, space: FeatureSpace, priors: Priors) -> QualityRegression:
        """Return a model that has seen nothing."""
        variances = priors.variances(space)
        mean = np.zeros(space.dims)
        mean[space.bias] = priors.prior_quality
        return cls(
            mean=mean,
            base=np.diag(variances),
            prior_var=variances,
            noise=priors.noise,
            gains=np.zeros((FOLD_EVERY, space.dims)),
        )

    @property
    def cov(self) -> Vector:
        """Return the posterior covariance (a new array)."""
        cov = self.base.copy()
        _fold(cov, self.gains[: self.pending])
        return cov

    def predict(
        self, features: SparseFeatures, *, step: int, priors: Priors
    ) -> tuple[float, float]:
        """Return the expected quality for ``features`` and its variance (of the expectation)."""
        index, values = _arrays(features)
        expected = float(self.mean[index] @ values)
        variance = float(values @ self.base[np.ix_(index, index)] @ values)
        if self.pending:
            projected = self.gains[: self.pending, index] @ values
            variance -= float(projected @ projected)
        drift = self._drift(step, priors)
        if drift:
            variance += drift * float(self.prior_var[index] @ (values * values))
        return expected, max(variance, 0.0)

    def observe(self, features: SparseFeatures, score: float, *, step: int, priors: Priors) -> None:
        """Fold one quality score in (exact rank-one posterior update)."""
        drift = self._drift(step, priors)
        if drift:
            diagonal = self.base.reshape(-1)[:: len(self.mean) + 1]
            diagonal += drift * self.prior_var
        index, values = _arrays(features)
        shared = values @ self.base[index]  # base is symmetric: row i is column i
        if self.pending:
            held = self.gains[: self.pending]
            shared -= (held[:, index] @ values) @ held
        spread = self.noise + float(shared[index] @ values)
        error = score - float(self.mean[index] @ values)
        self.mean += shared * (error / spread)
        self.gains[self.pending] = shared / math.sqrt(spread)
        self.pending += 1
        if self.pending == len(self.gains):
            _fold(self.base, self.gains)
            self.pending = 0
            self.strict_upper = None
        self.observations += 1
        self.last_step = step

    def _drift(self, step: int, priors: Priors) -> float:
        if not self.observations or priors.drift <= 0:
            return 0.0
        return min(priors.drift * max(step - self.last_step, 0), priors.max_drift)

    def to_dict(self) -> dict[str, Any]:
        """Return the posterior as JSON-able values (arrays as base64 little-endian float64)."""
        dims = len(self.mean)
        if self.strict_upper is None:
            self.strict_upper = _encode(self.base[np.triu_indices(dims, 1)])
        return {
            "observations": self.observations,
            "last_step": self.last_step,
            "mean": _encode(self.mean),
            "cov_diag": _encode(self.base.diagonal()),
            "cov_strict": self.strict_upper,
            "gains": [
                _encode(self.gains[start : min(start + GAIN_CHUNK, self.pending)])
                for start in range(0, self.pending, GAIN_CHUNK)
            ],
        }

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        space: FeatureSpace,
        priors: Priors,
        *,
        previous: QualityRegression | None = None,
    ) -> QualityRegression:
        """Rebuild a posterior written by :meth:`to_dict` in the same feature space.

        ``cov_diag`` and ``cov_strict`` are ``base``'s diagonal and strict upper triangle (in
        formats 1 and 2 one ``cov_upper``, the whole covariance in format 1); ``gains`` (one
        string in format 2, absent in format 1) are the rows not yet folded into ``base``.
        ``previous``: a posterior loaded before; when its strict upper triangle is the one in
        ``data`` (no fold since), its ``base`` is copied instead of decoded (~2 ms less).
        """
        model = cls.prior(space, priors)
        mean = _decode(data["mean"])
        chunks = data.get("gains", "")
        gains = np.concatenate(
            [_decode(chunk) for chunk in ([chunks] if isinstance(chunks, str) else chunks)]
            or [np.zeros(0)]
        )
        if len(mean) != space.dims:
            raise ValueError("the snapshot's arrays do not fit the feature space")
        if "cov_strict" in data:
            diagonal = _decode(data["cov_diag"])
            if len(diagonal) != space.dims:
                raise ValueError("the snapshot's arrays do not fit the feature space")
            strict = str(data["cov_strict"])
            if (
                previous is not None
                and previous.strict_upper == strict
                and previous.base.shape == model.base.shape
            ):
                model.base = previous.base.copy()
            else:
                rows, cols = np.triu_indices(space.dims, 1)
                upper = _decode(strict)
                if len(upper) != len(rows):
                    raise ValueError("the snapshot's arrays do not fit the feature space")
                model.base[rows, cols] = upper
                model.base[cols, rows] = upper
            np.fill_diagonal(model.base, diagonal)
            model.strict_upper = strict
        else:
            rows, cols = np.triu_indices(space.dims)
            upper = _decode(data["cov_upper"])
            if len(upper) != len(rows):
                raise ValueError("the snapshot's arrays do not fit the feature space")
            model.base[rows, cols] = upper
            model.base[cols, rows] = upper
        if len(gains) % space.dims or len(gains) >= FOLD_EVERY * space.dims:
            raise ValueError("the snapshot's pending gains do not fit the feature space")
        model.mean = mean
        model.pending = len(gains) // space.dims
        model.gains[: model.pending] = gains.reshape(model.pending, space.dims)
        model.observations = int(data["observations"])
        model.last_step = int(data["last_step"])
        return model


def _fold(matrix: Vector, rows: Vector) -> None:
    """Subtract ``rows.T @ rows`` from the symmetric ``matrix``, keeping it exactly symmetric.

    Done in bands of the upper triangle, each mirrored below it, every product at most
    :data:`_SINGLE_THREAD_WORK`; the diagonal blocks' lower halves are then copied from above.
    """
    if not len(rows):
        return
    bands = _bands(matrix.shape[0], len(rows))
    for start, stop in bands:
        band = rows[:, start:stop].T @ rows[:, start:]
        matrix[start:stop, start:] -= band
        matrix[stop:, start:stop] -= band[:, stop - start :].T
    lower_rows, lower_cols = _diagonal_blocks_lower(bands)
    matrix[lower_rows, lower_cols] = matrix[lower_cols, lower_rows]


@functools.lru_cache(maxsize=16)
def _bands(dims: int, depth: int) -> tuple[tuple[int, int], ...]:
    """Return the ``(start, stop)`` row bands :func:`_fold` works in, for ``depth`` gain rows."""
    bands: list[tuple[int, int]] = []
    start = 0
    while start < dims:
        stop = min(dims, start + max(1, _SINGLE_THREAD_WORK // (depth * (dims - start))))
        bands.append((start, stop))
        start = stop
    return tuple(bands)


@functools.lru_cache(maxsize=16)
def _diagonal_blocks_lower(bands: tuple[tuple[int, int], ...]) -> tuple[Index, Index]:
    """Return the strictly-lower cells of the diagonal blocks of ``bands``."""
    blocks = [np.tril_indices(stop - start, -1) for start, stop in bands]
    rows = [r + start for (start, _), (r, _) in zip(bands, blocks, strict=True)]
    cols = [c + start for (start, _), (_, c) in zip(bands, blocks, strict=True)]
    return np.concatenate(rows), np.concatenate(cols)


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
