"""The ``learned`` decision: exploration, learning the better model, cold start, the knob."""

from __future__ import annotations

import numpy as np
import pytest

from spine.platform.learning import (
    Candidate,
    FeatureSpace,
    LearnedPolicy,
    Observation,
    RoutingWeights,
    latency_bound,
    learned_quality,
)

SPACE = FeatureSpace()
FEATURES = SPACE.extract("Explain how a heat pump works.", category="physics")


def trained(model: str, quality: float, times: int, weights: RoutingWeights) -> None:
    for _ in range(times):
        weights.observe(Observation(model=model, features=FEATURES, quality=quality))


def test_exploration_reaches_a_model_never_tried() -> None:
    weights = RoutingWeights()
    trained("known", 0.9, 200, weights)
    candidates = [
        Candidate(name="known", expected_cost=0.001),
        Candidate(name="new", expected_cost=0.01),
    ]
    policy = LearnedPolicy()
    rng = np.random.default_rng(0)
    greedy = policy.decide(weights, candidates, FEATURES, cost_weight=0.15, rng=rng)
    assert greedy.candidates[1].quality == pytest.approx(1.0)  # optimistic prior
    explored = []
    for _ in range(300):
        decision = policy.decide(weights, candidates, FEATURES, cost_weight=0.15, rng=rng)
        if decision.chosen == "new":
            explored.append(decision)
    assert explored, "the untried model never got a call"
    assert all(d.exploration for d in explored)
    assert len(explored) < 150  # bounded: the better expected score still wins most calls


def test_scripted_outcomes_move_the_choice_to_the_better_model() -> None:
    weights = RoutingWeights()
    candidates = [
        Candidate(name="good", expected_cost=0.01),
        Candidate(name="bad", expected_cost=0.01),
    ]
    truth = {"good": 0.9, "bad": 0.3}
    policy = LearnedPolicy()
    rng = np.random.default_rng(1)
    chosen = []
    for _ in range(300):
        decision = policy.decide(weights, candidates, FEATURES, cost_weight=0.1, rng=rng)
        chosen.append(decision.chosen)
        score = float(rng.random() < truth[decision.chosen])
        weights.observe(Observation(model=decision.chosen, features=FEATURES, quality=score))
    assert "bad" in chosen[:100]  # both were tried
    assert chosen[-100:].count("good") >= 90
    good, _ = weights.predict("good", FEATURES)
    bad, _ = weights.predict("bad", FEATURES)
    assert good > bad + 0.15


def test_a_cold_start_is_reported_until_enough_scores_arrive() -> None:
    weights = RoutingWeights()
    policy = LearnedPolicy(min_observations=20)
    candidates = [Candidate(name="a"), Candidate(name="b")]
    rng = np.random.default_rng(2)
    assert policy.decide(weights, candidates, FEATURES, cost_weight=0, rng=rng).cold_start
    trained("a", 0.5, 19, weights)
    assert policy.decide(weights, candidates, FEATURES, cost_weight=0, rng=rng).cold_start
    trained("b", 0.5, 1, weights)
    decision = policy.decide(weights, candidates, FEATURES, cost_weight=0, rng=rng)
    assert not decision.cold_start
    assert decision.weights_version == 20
    assert sorted(decision.ranking) == ["a", "b"]
    assert decision.ranking[0] == decision.chosen


def test_the_cost_weight_and_budget_pressure_buy_the_cheaper_model() -> None:
    weights = RoutingWeights()
    trained("dear", 0.9, 300, weights)
    trained("cheap", 0.7, 300, weights)
    candidates = [Candidate(name="dear", expected_cost=0.02), Candidate(name="cheap", free=True)]
    policy = LearnedPolicy(exploration=0.0)
    rng = np.random.default_rng(3)
    assert policy.decide(weights, candidates, FEATURES, cost_weight=0.1, rng=rng).chosen == "dear"
    assert policy.decide(weights, candidates, FEATURES, cost_weight=0.3, rng=rng).chosen == "cheap"
    pressed = policy.decide(
        weights, candidates, FEATURES, cost_weight=0.1, budget_pressure=1.0, rng=rng
    )
    assert pressed.chosen == "cheap"
    assert pressed.effective_cost_weight == pytest.approx(1.0)
    cheap = next(c for c in pressed.candidates if c.model == "cheap")
    assert cheap.cost == 0.0 and cheap.relative_cost == 0.0


def test_an_unknown_cost_falls_back_to_the_learned_one_then_the_dearest() -> None:
    weights = RoutingWeights()
    weights.observe(Observation(model="metered", cost=0.004))
    candidates = [
        Candidate(name="priced", expected_cost=0.002),
        Candidate(name="metered"),
        Candidate(name="unknown"),
    ]
    decision = LearnedPolicy().decide(
        weights, candidates, FEATURES, cost_weight=0.1, rng=np.random.default_rng(4)
    )
    by_name = {c.model: c for c in decision.candidates}
    assert by_name["metered"].cost == pytest.approx(0.004)
    assert by_name["unknown"].cost is None
    assert by_name["unknown"].relative_cost == 1.0


def test_bad_arguments_are_refused() -> None:
    policy = LearnedPolicy()
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="candidate"):
        policy.decide(RoutingWeights(), [], FEATURES, cost_weight=0, rng=rng)
    with pytest.raises(ValueError, match="cost_weight"):
        policy.decide(RoutingWeights(), [Candidate(name="a")], FEATURES, cost_weight=-1, rng=rng)


def test_quality_uses_learned_estimates_once_there_are_enough() -> None:
    weights = RoutingWeights()
    assert learned_quality(weights, "m", 0.8) == 0.8
    trained("m", 0.4, 30, weights)
    assert learned_quality(weights, "m", 0.8) == pytest.approx(0.4)
    assert learned_quality(weights, "m", 0.8, features=FEATURES) == pytest.approx(0.4, abs=0.05)
    assert learned_quality(weights, "m", 0.8, min_observations=100) == 0.8


def test_speed_ranks_a_never_measured_model_first() -> None:
    weights = RoutingWeights()
    for latency in (200.0, 220.0, 180.0):
        weights.observe(Observation(model="slow", latency_ms=latency))
    assert latency_bound(weights, "never") == 0.0
    assert 150.0 < latency_bound(weights, "slow") < 200.0
