"""The bench's converters turn RouteLLM's recordings into replay records (tiny excerpts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from spine.platform.learning import ReplayRecord

ROOT = Path(__file__).resolve().parents[4]
FIXTURES = Path(__file__).parent / "fixtures"


def bench_module() -> ModuleType:
    bench = ROOT / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_learning", bench / "learning.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gsm8k_rows_become_records_scored_one_or_zero() -> None:
    bench = bench_module()
    raw = bench.gsm8k_records(FIXTURES / "gsm8k_responses.csv")
    records = [ReplayRecord.model_validate(r) for r in raw]
    assert len(records) == 4
    assert records[0].prompt.startswith("Janet")
    scores = [(r.outcomes[bench.GPT4].score, r.outcomes[bench.MIXTRAL].score) for r in records]
    assert scores == [(1.0, 1.0), (1.0, 1.0), (0.0, 0.0), (1.0, 1.0)]


def test_mt_bench_gives_one_record_per_question_and_turn() -> None:
    bench = bench_module()
    raw = bench.mtbench_records(
        FIXTURES / "mt_bench_questions.jsonl", FIXTURES / "mt_bench_judgements.jsonl"
    )
    records = [ReplayRecord.model_validate(r) for r in raw]
    assert [r.id for r in records] == [
        "mt-bench-81-1",
        "mt-bench-81-2",
        "mt-bench-111-1",
        "mt-bench-111-2",
    ] or sorted(r.id for r in records) == sorted(
        ["mt-bench-81-1", "mt-bench-81-2", "mt-bench-111-1", "mt-bench-111-2"]
    )
    first, second = (r for r in records if r.id.startswith("mt-bench-81"))
    assert first.category == "writing"
    assert second.prompt.startswith(first.prompt) and len(second.prompt) > len(first.prompt)
    assert all(0 < o.score <= 1 for r in records for o in r.outcomes.values())
    assert all(len(r.outcomes) == 2 for r in records)
