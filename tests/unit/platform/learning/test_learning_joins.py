"""Calls the learner remembers keep their features packed, and give them back exactly."""

from __future__ import annotations

import struct
from typing import Any

from spine.platform.learning import FeatureSpace, SparseFeatures
from spine.platform.learning.joins import CallFacts, CallMemory, observations_of

SPACE = FeatureSpace()


def outcome(call_id: str, features: SparseFeatures | None) -> dict[str, Any]:
    decision = {"features": features.model_dump()} if features is not None else {}
    return {
        "type": "model.outcome",
        "id": call_id,
        "model": "m",
        "outcome": "ok",
        "latency_ms": 5.0,
        "cost": 0.0,
        "decision": decision,
    }


def bits(values: tuple[float, ...]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def test_a_remembered_call_is_scored_with_exactly_the_features_it_came_with() -> None:
    features = SparseFeatures(
        space=SPACE.id, indices=(0, 7, 300, 374), values=(0.1, 1 / 3, 5e-324, -2.5e300)
    )
    memory = CallMemory()
    observations_of(outcome("c1", features), memory)
    remembered = memory.call("c1")
    assert remembered is not None
    assert isinstance(remembered.packed, tuple)  # not the pydantic model
    assert remembered.features == features
    assert bits(remembered.features.values) == bits(features.values)
    scored = observations_of(
        {"type": "feedback", "id": "f1", "call_ids": ["c1"], "score": 0.75}, memory
    )
    assert len(scored) == 1
    assert scored[0].features == features
    assert scored[0].quality == 0.75


def test_features_of_a_real_request_survive_packing() -> None:
    features = SPACE.extract("how many apples does a train of pears cost", category="math")
    facts = CallFacts.of("c2", "m", "t1", {"features": features.model_dump(mode="json")})
    assert facts.features == features
    assert facts.task_id == "t1"


def test_an_index_no_feature_space_has_is_kept_as_it_came() -> None:
    odd = SparseFeatures(space=SPACE.id, indices=(2**40,), values=(1.0,))
    facts = CallFacts.of("c3", "m", None, {"features": odd.model_dump()})
    assert facts.packed == odd
    assert facts.features == odd


def test_a_call_without_features_is_remembered_without() -> None:
    memory = CallMemory()
    observations_of(outcome("c4", None), memory)
    remembered = memory.call("c4")
    assert remembered is not None and remembered.features is None
    assert (
        observations_of({"type": "feedback", "id": "f", "call_ids": ["c4"], "score": 1}, memory)
        == []
    )
