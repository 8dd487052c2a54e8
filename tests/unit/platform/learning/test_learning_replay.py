"""The replay loop reveals only the chosen outcome; cpt95 reads the sweep's curve."""

from __future__ import annotations

import asyncio
import json

import pytest

from spine.platform.errors import BadRequest
from spine.platform.learning import (
    RecordedOutcome,
    ReplayRecord,
    arun_replay,
    cpt95,
    expected_cost,
    model_accuracy,
    read_records,
    replay_sweep,
    run_replay,
)


def line(i: int, scores: dict[str, float], category: str | None = "c") -> str:
    body = {
        "id": f"r{i}",
        "prompt": f"question number {i} about topic {i % 3}",
        "outcomes": {m: {"score": s} for m, s in scores.items()},
    }
    if category:
        body["category"] = category
    return json.dumps(body)


def test_cpt95_interpolates_between_points_and_closes_the_curve() -> None:
    assert cpt95([(0.3, 0.80), (0.5, 0.86)], 0.9) == pytest.approx(0.3 + 0.055 * 0.2 / 0.06)
    # Not reached by any point: between the last one and (1, the strong model's accuracy).
    assert cpt95([(0.2, 0.7), (0.6, 0.8)], 0.9) == pytest.approx(0.6 + 0.055 * 0.4 / 0.1)
    assert cpt95([(0.1, 0.9), (0.5, 0.7)], 0.9) == pytest.approx(0.1)
    assert cpt95([], 0.9) == 1.0
    # Points arrive in any order.
    assert cpt95([(0.5, 0.86), (0.3, 0.80)], 0.9) == cpt95([(0.3, 0.80), (0.5, 0.86)], 0.9)


def test_only_the_chosen_models_outcome_is_revealed() -> None:
    records = read_records([line(i, {"a": 1.0, "b": 0.0}) for i in range(5)])
    seen: list[tuple[str, str, RecordedOutcome]] = []
    point = run_replay(
        records,
        lambda r: "b" if r.id == "r0" else "a",
        lambda r, m, o: seen.append((r.id, m, o)),
        knob=0.1,
        strong="a",
        cost_of=lambda m, r: 2.0 if m == "a" else 0.0,
    )
    assert [(rid, m) for rid, m, _ in seen] == [("r0", "b")] + [(f"r{i}", "a") for i in range(1, 5)]
    assert [o.score for _, _, o in seen] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert point.accuracy == pytest.approx(0.8)
    assert point.strong_fraction == pytest.approx(0.8)
    assert point.cost == pytest.approx(1.6)
    assert point.calls == {"a": 4, "b": 1}


def test_the_async_loop_gives_the_same_point() -> None:
    records = read_records([line(i, {"a": 0.5, "b": 1.0}) for i in range(4)])

    async def decide(record: ReplayRecord) -> str:
        return "b"

    async def observe(record: ReplayRecord, model: str, outcome: RecordedOutcome) -> None:
        return None

    point = asyncio.run(
        arun_replay(records, decide, observe, knob=0, strong="b", cost_of=lambda m, r: 0.0)
    )
    assert point.accuracy == 1.0 and point.strong_fraction == 1.0


def test_bad_lines_are_refused_naming_the_line_and_field() -> None:
    with pytest.raises(BadRequest, match="line 2"):
        read_records([line(0, {"a": 1.0}), "{not json"])
    with pytest.raises(BadRequest) as refused:
        read_records(['{"id": "x", "prompt": "p", "outcomes": {"a": {"score": 2}}}'])
    assert refused.value.field == "outcomes.a.score"
    # One line naming the field, not pydantic's report over several lines with links.
    assert refused.value.message == (
        "line 1: not a replay record: outcomes.a.score: Input should be less than or equal to 1"
    )
    # RouteLLM ships GSM8K as CSV: the refusal says the format and where a converter is.
    with pytest.raises(BadRequest, match=r"looks like a CSV header.*--write-jsonl"):
        read_records(["prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B", "q,True,False"])
    with pytest.raises(BadRequest, match="no outcome of b"):
        read_records([line(0, {"a": 1.0})], models=["a", "b"])
    # Without --models, every record must have the first one's models (a KeyError later, once).
    with pytest.raises(BadRequest, match="line 2: no outcome of b") as mixed:
        read_records([line(0, {"a": 1.0, "b": 0.0}), line(1, {"a": 1.0, "c": 0.0})])
    assert mixed.value.field == "outcomes"


def test_reading_keeps_the_asked_models_and_can_drop_the_category() -> None:
    records = read_records(
        [line(0, {"a": 1.0, "b": 0.5, "c": 0.0}), ""], models=["a", "b"], use_category=False
    )
    assert len(records) == 1
    assert sorted(records[0].outcomes) == ["a", "b"]
    assert records[0].category is None
    assert model_accuracy(records) == {"a": 1.0, "b": 0.5}


def test_a_sweep_is_deterministic_and_prefers_the_better_model_when_cost_is_no_object() -> None:
    raw = [line(i, {"dear": 1.0, "cheap": 1.0 if i % 2 else 0.0}) for i in range(120)]
    records = read_records(raw)
    prices = {"dear": 0.02, "cheap": 0.0}
    first = replay_sweep(records, prices, knobs=(0.0, 1.0), seed=4)
    again = replay_sweep(records, prices, knobs=(0.0, 1.0), seed=4)
    assert first == again
    assert first.prompts == 120
    assert first.model_accuracy == {"cheap": 0.5, "dear": 1.0}
    free_spend, all_cheap = first.points
    assert free_spend.knob == 0.0 and free_spend.strong_fraction > 0.8
    assert all_cheap.strong_fraction < 0.2
    assert free_spend.cost > all_cheap.cost
    assert 0 < first.cpt95 <= 1
    assert expected_cost(1.0, "x" * 400) == pytest.approx((100 + 256) / 1000)
