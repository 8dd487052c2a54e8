"""Routing weights: deterministic updates, exact snapshots, refused foreign features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spine.platform.errors import BadRequest
from spine.platform.learning import (
    FeatureSpace,
    Observation,
    RoutingWeights,
    RunningStat,
    SparseFeatures,
)

PROMPTS = [
    "What is 12 times 7?",
    "Write a haiku about autumn leaves.",
    "A train leaves at 3 pm going 60 mph; when does it reach a city 150 miles away?",
    "Summarise the causes of the French revolution in three sentences.",
]


def observations(count: int) -> list[Observation]:
    space = FeatureSpace()
    rng = np.random.default_rng(3)
    out = []
    for i in range(count):
        prompt = PROMPTS[i % len(PROMPTS)]
        features = space.extract(prompt, category="cat" if i % 3 else None, tenant="t")
        model = ("a", "b", "c")[i % 3]
        out.append(
            Observation(
                model=model,
                features=features,
                quality=float(rng.random() < 0.7),
                latency_ms=float(rng.integers(50, 500)) if i % 2 else None,
                cost=0.001 * (i % 5) if model != "c" else None,
            )
        )
    return out


def fed(obs: list[Observation]) -> RoutingWeights:
    weights = RoutingWeights()
    for o in obs:
        weights.observe(o)
    return weights


def test_the_same_observations_give_bit_identical_state() -> None:
    obs = observations(120)
    first, second = fed(obs), fed(obs)
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    assert first.version == 120
    assert first.steps == 120
    for name, est in first:
        assert np.array_equal(est.quality.cov, second.models[name].quality.cov)
        assert np.array_equal(est.quality.cov, est.quality.cov.T)


def test_a_snapshot_round_trips_exactly_and_predicts_the_same() -> None:
    weights = fed(observations(60))
    text = json.dumps(weights.to_dict())
    loaded = RoutingWeights.from_dict(json.loads(text))
    assert json.dumps(loaded.to_dict()) == text
    features = FeatureSpace().extract(PROMPTS[2], category="cat")
    for model in ("a", "b", "c", "never-seen"):
        assert loaded.predict(model, features) == weights.predict(model, features)
    # Updating both further keeps them identical.
    more = observations(70)[60:]
    for o in more:
        weights.observe(o)
        loaded.observe(o)
    assert json.dumps(loaded.to_dict()) == json.dumps(weights.to_dict())


def test_a_bad_snapshot_is_refused_naming_it() -> None:
    data = fed(observations(5)).to_dict()
    data["format"] = 99
    with pytest.raises(BadRequest) as refused:
        RoutingWeights.from_dict(data)
    assert refused.value.field == "format"
    with pytest.raises(BadRequest):
        RoutingWeights.from_dict({"format": 1})


def test_features_of_another_space_or_a_score_without_features_are_refused() -> None:
    weights = RoutingWeights()
    foreign = FeatureSpace(text_dims=64).extract("hello")
    with pytest.raises(BadRequest) as refused:
        weights.observe(Observation(model="a", features=foreign, quality=1.0))
    assert refused.value.field == "features.space"
    with pytest.raises(BadRequest):
        weights.observe(Observation(model="a", quality=1.0))
    # Latency and cost alone need no features.
    weights.observe(Observation(model="a", latency_ms=120.0, cost=0.002))
    assert weights.models["a"].latency_ms.count == 1
    assert weights.steps == 0


def test_quality_scores_move_the_prediction_toward_what_was_seen() -> None:
    weights = RoutingWeights()
    features = FeatureSpace().extract("Translate 'good morning' into French.")
    before, before_var = weights.predict("m", features)
    for _ in range(40):
        weights.observe(Observation(model="m", features=features, quality=0.2))
    after, after_var = weights.predict("m", features)
    assert before == pytest.approx(1.0)  # the optimistic prior
    assert after == pytest.approx(0.2, abs=0.05)
    assert after_var < before_var / 10


def test_a_model_left_unobserved_regains_uncertainty() -> None:
    weights = RoutingWeights()
    features = FeatureSpace().extract("Name three prime numbers.")
    for _ in range(30):
        weights.observe(Observation(model="old", features=features, quality=0.5))
    _, settled = weights.predict("old", features)
    for _ in range(2000):
        weights.observe(Observation(model="other", features=features, quality=0.5))
    _, later = weights.predict("old", features)
    assert later > 2 * settled


def test_running_stat_follows_a_window() -> None:
    stat = RunningStat(window=10)
    for value in [100.0] * 50 + [10.0] * 50:
        stat.observe(value)
    assert stat.mean == pytest.approx(10.0, abs=1.0)
    assert RunningStat().std_error == float("inf")


def test_sparse_features_validate_from_an_event() -> None:
    body = {"space": FeatureSpace().id, "indices": [1, 5], "values": [0.5, 1.0]}
    assert SparseFeatures.model_validate(body).indices == (1, 5)
