"""``spine learn replay`` end to end: a recording through JetStream and the production learner,
knobs dealt to processes or run in one, with the same figures either way."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from support.cli import service_env, spine

pytestmark = pytest.mark.integration

STRONG, WEAK = "strong", "weak"


def recording(path: Path, n: int) -> dict[str, float]:
    """Write ``n`` prompts where the weak model fails the ``hard`` ones; return the accuracies."""
    rng = random.Random(3)
    scores: dict[str, list[float]] = {STRONG: [], WEAK: []}
    with path.open("w") as out:
        for i in range(n):
            hard = rng.random() < 0.5
            topic = "integrals of functions" if hard else "greetings and names"
            outcomes = {STRONG: 1.0, WEAK: 0.0 if hard else 1.0}
            for model, score in outcomes.items():
                scores[model].append(score)
            line = {
                "id": f"p{i}",
                "prompt": f"question {i} on {topic}",
                "category": "hard" if hard else "easy",
                "outcomes": {
                    m: {"score": s, "cost": 1.0 if m == STRONG else 0.01}
                    for m, s in outcomes.items()
                },
            }
            out.write(json.dumps(line) + "\n")
    return {m: sum(v) / len(v) for m, v in scores.items()}


async def replayed(services: Any, pg_url: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    run = await spine(
        "learn",
        "replay",
        str(tmp_path / "rec.jsonl"),
        *args,
        env=service_env(services, pg_url),
        cwd=tmp_path,
        timeout=180,
    )
    assert run.code == 0, run.both
    report: dict[str, Any] = json.loads(run.out)
    return report


async def test_a_sweep_prints_the_curve_and_processes_change_no_figure(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    accuracy = recording(tmp_path / "rec.jsonl", 120)

    one = await replayed(services, pg_url, tmp_path, "--sweep", "--processes", "1")
    two = await replayed(services, pg_url, tmp_path, "--sweep", "--processes", "2")

    assert one["prompts"] == 120
    assert one["model_accuracy"] == pytest.approx(accuracy)
    assert len(one["points"]) == 21
    for point in one["points"]:
        assert sum(point["calls"].values()) == 120
    # Quality at any price goes mostly to the strong model; the dearest weight mostly not.
    by_knob = {p["knob"]: p for p in one["points"]}
    assert by_knob[0.0]["strong_fraction"] > by_knob[1.0]["strong_fraction"]
    assert 0 < one["cpt95"] <= 1
    # Each knob is an independent learner with its own seeded draws: where it ran changes nothing.
    assert two == one
