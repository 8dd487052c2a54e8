"""The quality regression: folded gains give the exact rank-one posterior, snapshots keep them."""

from __future__ import annotations

import base64
import itertools
import json
import random

import numpy as np
import pytest

from spine.platform.learning import (
    FeatureSpace,
    Observation,
    Priors,
    QualityRegression,
    RoutingWeights,
    SparseFeatures,
)
from spine.platform.learning.estimator import FOLD_EVERY, GAIN_CHUNK

SPACE = FeatureSpace()
PRIORS = Priors(drift=1e-3)
WORDS = [
    "how",
    "many",
    "apples",
    "does",
    "a",
    "train",
    "of",
    "pears",
    "cost",
    "when",
    "it",
    "leaves",
    "the",
    "ticket",
    "office",
]


def requests(count: int, seed: int = 5) -> list[SparseFeatures]:
    rng = random.Random(seed)
    return [
        SPACE.extract(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))),
            category=rng.choice(["chat", "math", None]),
        )
        for _ in range(count)
    ]


class OneAtATime:
    """The textbook update: drift added to the diagonal, then Sherman-Morrison on a dense x."""

    def __init__(self) -> None:
        prior = QualityRegression.prior(SPACE, PRIORS)
        self.mean, self.cov = prior.mean.copy(), prior.cov
        self.prior_var, self.last_step, self.seen = prior.prior_var, 0, 0

    def observe(self, features: SparseFeatures, score: float, step: int) -> None:
        if self.seen:
            drift = min(PRIORS.drift * (step - self.last_step), PRIORS.max_drift)
            self.cov += np.diag(drift * self.prior_var)
        x = np.zeros(SPACE.dims)
        x[list(features.indices)] = features.values
        shared = self.cov @ x
        spread = PRIORS.noise + x @ shared
        self.mean += shared * (score - self.mean @ x) / spread
        self.cov -= np.outer(shared, shared) / spread
        self.last_step, self.seen = step, self.seen + 1


def fed(count: int) -> tuple[dict[str, QualityRegression], dict[str, OneAtATime]]:
    rng = random.Random(11)
    folded = {m: QualityRegression.prior(SPACE, PRIORS) for m in "ab"}
    reference = {m: OneAtATime() for m in "ab"}
    for step, features in enumerate(requests(count), start=1):
        model, score = rng.choice("ab"), float(rng.random() < 0.6)
        folded[model].observe(features, score, step=step, priors=PRIORS)
        reference[model].observe(features, score, step)
    return folded, reference


def test_folded_gains_give_the_one_at_a_time_posterior() -> None:
    folded, reference = fed(3 * FOLD_EVERY + 17)  # several folds, and gains still pending
    assert any(m.pending for m in folded.values())
    for name, model in folded.items():
        assert model.observations > FOLD_EVERY
        np.testing.assert_allclose(model.mean, reference[name].mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.cov, reference[name].cov, rtol=0, atol=1e-12)
        for features in requests(5, seed=9):
            step = 10_000
            expected, variance = model.predict(features, step=step, priors=PRIORS)
            x = np.zeros(SPACE.dims)
            x[list(features.indices)] = features.values
            assert expected == pytest.approx(float(reference[name].mean @ x), abs=1e-12)
            drift = min(PRIORS.drift * (step - model.last_step), PRIORS.max_drift)
            spread = x @ reference[name].cov @ x + drift * float(model.prior_var @ (x * x))
            assert variance == pytest.approx(float(spread), abs=1e-12)


def test_the_base_stays_exactly_symmetric_across_folds() -> None:
    folded, _ = fed(2 * FOLD_EVERY + 40)
    for model in folded.values():
        assert np.array_equal(model.base, model.base.T)
        assert np.array_equal(model.cov, model.cov.T)


def test_pending_gains_go_in_the_snapshot_and_updates_go_on_identically() -> None:
    weights = RoutingWeights(priors=PRIORS)
    rng = random.Random(2)
    stream = [
        Observation(model="m", features=f, quality=float(rng.random() < 0.5))
        for f in requests(FOLD_EVERY + 30)
    ]
    half = FOLD_EVERY // 2
    for observation in stream[:half]:
        weights.observe(observation)
    assert weights.models["m"].quality.pending == half
    text = json.dumps(weights.to_dict())
    loaded = RoutingWeights.from_dict(json.loads(text))
    assert json.dumps(loaded.to_dict()) == text
    for observation in stream[half:]:  # across the next fold
        weights.observe(observation)
        loaded.observe(observation)
    assert weights.models["m"].quality.pending == 30
    assert json.dumps(loaded.to_dict()) == json.dumps(weights.to_dict())


def test_a_format_1_snapshot_whole_covariance_still_loads() -> None:
    folded, _ = fed(FOLD_EVERY + 9)
    weights = RoutingWeights(priors=PRIORS, models={})
    data = weights.to_dict()
    data["format"] = 1
    rows, cols = np.triu_indices(SPACE.dims)
    for name, model in folded.items():
        body = {key: model.to_dict()[key] for key in ("observations", "last_step", "mean")}
        body["cov_upper"] = base64_of(model.cov[rows, cols])
        data["models"][name] = {
            "quality": body,
            "score": {"count": 0, "mean": 0.0, "variance": 0.0},
            "latency_ms": {"count": 0, "mean": 0.0, "variance": 0.0},
            "cost": {"count": 0, "mean": 0.0, "variance": 0.0},
        }
    loaded = RoutingWeights.from_dict(data)
    for name, model in folded.items():
        quality = loaded.models[name].quality
        assert quality.pending == 0
        np.testing.assert_allclose(quality.cov, model.cov, rtol=0, atol=1e-15)


def test_a_format_2_snapshot_one_upper_triangle_and_one_gains_string_still_loads() -> None:
    folded, _ = fed(FOLD_EVERY + 21)
    rows, cols = np.triu_indices(SPACE.dims)
    for model in folded.values():
        body = {key: model.to_dict()[key] for key in ("observations", "last_step", "mean")}
        body["cov_upper"] = base64_of(model.base[rows, cols])
        body["gains"] = base64_of(model.gains[: model.pending])
        loaded = QualityRegression.from_dict(body, SPACE, PRIORS)
        assert loaded.pending == model.pending > 0
        assert np.array_equal(loaded.base, model.base)
        assert np.array_equal(loaded.gains[: model.pending], model.gains[: model.pending])
        assert loaded.to_dict() == model.to_dict()


def test_a_snapshot_keeps_apart_what_only_a_fold_changes() -> None:
    """The strict upper triangle is the same string until a fold; full gain chunks stay."""
    weights = RoutingWeights(priors=PRIORS)
    stream = [Observation(model="m", features=f, quality=0.5) for f in requests(FOLD_EVERY + 1)]
    snapshots = []
    for observation in stream:
        weights.observe(observation)
        snapshots.append(weights.to_dict()["models"]["m"]["quality"])
    rows, cols = np.triu_indices(SPACE.dims, 1)
    for before, after in itertools.pairwise(snapshots[: FOLD_EVERY - 1]):
        assert after["cov_strict"] is before["cov_strict"]  # encoded once, not per snapshot
        assert after["cov_diag"] != before["cov_diag"]  # drift and the update's own variance
        assert after["gains"][: len(before["gains"]) - 1] == before["gains"][:-1]
    assert [len(chunk) for chunk in snapshots[GAIN_CHUNK * 2]["gains"]] == [
        len(base64_of(np.zeros((GAIN_CHUNK, SPACE.dims)))),
        len(base64_of(np.zeros((GAIN_CHUNK, SPACE.dims)))),
        len(base64_of(np.zeros((1, SPACE.dims)))),
    ]
    folded = weights.models["m"].quality
    fold = FOLD_EVERY - 1  # the snapshot after the fold
    assert snapshots[fold]["cov_strict"] != snapshots[fold - 1]["cov_strict"]
    assert snapshots[fold]["gains"] == []
    assert snapshots[-1]["cov_strict"] == base64_of(folded.base[rows, cols])
    assert snapshots[-1]["gains"] == [base64_of(folded.gains[:1])]


def base64_of(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def test_pending_gains_that_do_not_fit_are_refused() -> None:
    folded, _ = fed(10)
    body = next(iter(folded.values())).to_dict()
    body["gains"] = base64_of(np.zeros(SPACE.dims + 1))
    with pytest.raises(ValueError, match="gains"):
        QualityRegression.from_dict(body, SPACE, PRIORS)
    body["gains"] = base64_of(np.zeros(FOLD_EVERY * SPACE.dims))
    with pytest.raises(ValueError, match="gains"):
        QualityRegression.from_dict(body, SPACE, PRIORS)


def test_a_router_loading_each_version_reuses_a_covariance_no_fold_changed() -> None:
    weights = RoutingWeights(priors=PRIORS)
    stream = [Observation(model="m", features=f, quality=0.25) for f in requests(FOLD_EVERY + 5)]
    for observation in stream[:10]:
        weights.observe(observation)
    first = RoutingWeights.from_dict(weights.to_dict())
    for observation in stream[10:20]:
        weights.observe(observation)
    second_state = weights.to_dict()
    second = RoutingWeights.from_dict(second_state, previous=first)
    assert json.dumps(second.to_dict()) == json.dumps(second_state)
    assert np.array_equal(second.models["m"].quality.base, weights.models["m"].quality.base)
    # The covariance came from ``first``, not from decoding: mark it and load again.
    marked = first.models["m"].quality
    marked.base[0, 1] = marked.base[1, 0] = 7.0
    assert (
        RoutingWeights.from_dict(second_state, previous=first).models["m"].quality.base[0, 1] == 7.0
    )
    for observation in stream[20:]:  # across a fold: the old covariance must not be used
        weights.observe(observation)
    third_state = weights.to_dict()
    third = RoutingWeights.from_dict(third_state, previous=first)
    assert json.dumps(third.to_dict()) == json.dumps(third_state)
    assert np.array_equal(third.models["m"].quality.base, weights.models["m"].quality.base)
