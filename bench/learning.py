"""Learned routing, offline: recorded outcomes replayed online, one pass, bandit feedback only.

Run it as ``.venv/bin/python bench/learning.py`` (``--quick``: fewer seeds and knob values, a
smoke run; ``--data DIR``: where RouteLLM's recordings are, ``../shared/data/routing`` by
default). Figures are printed and written to ``bench/results/learning.json``.

1. **Converters** (here, never in the product): RouteLLM's GSM8K answers (prompt, whether
   Mixtral-8x7B and GPT-4 were right: score 1 or 0) and MT-Bench judgements (a GPT-4 judge's
   1..10 per model and question turn: score = judge / 10; a second turn's prompt is both of the
   user's turns; the question's category) become issue 10's JSON Lines (``--write-jsonl DIR``
   writes them, for ``spine learn replay``). A third set, **mixed**, interleaves both (with
   the GSM8K prompts as category ``math word problem``): nine categories at once.
2. **Learned sweep**: for each knob value of :data:`SWEEP_KNOBS` an independent
   :class:`ReplayLearner` (the product's features, weights and ``learned`` policy) makes one
   online pass, seeing only the chosen model's score; a point is (share of calls to the most
   accurate model, mean score). Each set is replayed in several prompt orders (seed 0: the
   file's order; others shuffled), each with its own random generator; ``cpt95`` is computed
   per order and reported as mean and spread, beside the curve averaged over the orders.
3. **Random routing** in the same orders: the most accurate model with probability p.
4. **Decision time**: features + decision per call, and an update, on trained weights.

Targets: GSM8K (prompt only) learned cpt95 <= 0.75 (random needs about 0.80); MT-Bench and
mixed: learned below random.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _report import ROOT, code_version, write_results
from spine.platform.learning import (
    SWEEP_KNOBS,
    Candidate,
    FeatureSpace,
    LearnedPolicy,
    Observation,
    ReplayLearner,
    ReplayRecord,
    RoutingWeights,
    cpt95,
    expected_cost,
    model_accuracy,
    run_replay,
)

RESULTS = ROOT / "bench" / "results" / "learning.json"
QUICK_RESULTS = RESULTS.with_name("learning-quick.json")
DATA = ROOT.parent / "shared" / "data" / "routing"
GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# Blended list prices per 1,000 tokens when the recordings were made (GPT-4 Turbo: $10/M in,
# $30/M out; Mixtral-8x7B at hosted rates: $0.60/M): only their ratio steers a decision.
PRICES = {GPT4: 0.02, MIXTRAL: 0.0006}
TARGET_GSM8K = 0.75
RANDOM_GRID = tuple(i / 10 for i in range(11))


def gsm8k_records(path: Path) -> list[dict[str, Any]]:
    """Convert RouteLLM's ``gsm8k_responses.csv``: a correct answer scores 1, a wrong one 0."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "id": f"gsm8k-{number}",
            "prompt": row["prompt"],
            "category": "math word problem",
            "outcomes": {m: {"score": 1.0 if row[m] == "True" else 0.0} for m in (GPT4, MIXTRAL)},
        }
        for number, row in enumerate(rows)
    ]


def mtbench_records(questions: Path, judgements: Path) -> list[dict[str, Any]]:
    """Convert MT-Bench: one record per question and turn, score = judge's 1..10 / 10."""
    asked = {}
    for line in questions.read_text().splitlines():
        if line.strip():
            question = json.loads(line)
            asked[question["question_id"]] = question
    scores: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    for line in judgements.read_text().splitlines():
        if line.strip():
            judged = json.loads(line)
            scores[(judged["question_id"], judged["turn"])][judged["model"]] = judged["score"]
    records = []
    for (question_id, turn), by_model in sorted(scores.items()):
        question = asked[question_id]
        records.append(
            {
                "id": f"mt-bench-{question_id}-{turn}",
                # The second turn's prompt is the user's side of the conversation: the
                # assistant's first answer differs per model, so the router never sees it.
                "prompt": "\n\n".join(question["turns"][:turn]),
                "category": question["category"],
                "outcomes": {m: {"score": s / 10} for m, s in sorted(by_model.items())},
            }
        )
    return records


def mixed_records(
    gsm8k: list[dict[str, Any]], mtbench: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Interleave both sets in a fixed pseudo-random order."""
    both = gsm8k + mtbench
    order = np.random.default_rng(20240501).permutation(len(both))
    return [both[i] for i in order]


def to_records(raw: list[dict[str, Any]], *, use_category: bool) -> list[ReplayRecord]:
    records = [ReplayRecord.model_validate(r) for r in raw]
    if use_category:
        return records
    return [r.model_copy(update={"category": None}) for r in records]


def ordered(records: Sequence[ReplayRecord], seed: int) -> list[ReplayRecord]:
    """Seed 0 keeps the file's order; any other shuffles it."""
    if seed == 0:
        return list(records)
    return [records[i] for i in np.random.default_rng(seed).permutation(len(records))]


_SETS: dict[str, list[ReplayRecord]] = {}


def _learned_point(
    job: tuple[str, int, float],
) -> tuple[str, int, float, float, float, dict[str, int], float]:
    name, seed, knob = job
    records = ordered(_SETS[name], seed)
    accuracy = model_accuracy(records)
    strong = max(accuracy, key=lambda m: accuracy[m])
    learner = ReplayLearner(
        models=sorted(accuracy), prices=PRICES, knob=knob, rng=np.random.default_rng(seed + 1)
    )
    started = time.process_time()
    point = run_replay(
        records, learner.decide, learner.observe, knob=knob, strong=strong, cost_of=learner.cost_of
    )
    cpu = time.process_time() - started
    return name, seed, knob, point.strong_fraction, point.accuracy, point.calls, cpu


def random_points(records: Sequence[ReplayRecord], seed: int) -> list[tuple[float, float]]:
    """Route to the most accurate model with probability p, for each p of the grid."""
    accuracy = model_accuracy(records)
    strong = max(accuracy, key=lambda m: accuracy[m])
    weak = [m for m in accuracy if m != strong]
    rng = np.random.default_rng(seed + 1000)
    points = []
    for p in RANDOM_GRID:
        strong_calls, score = 0, 0.0
        for record in ordered(records, seed):
            model = strong if rng.random() < p else weak[int(rng.integers(len(weak)))]
            strong_calls += model == strong
            score += record.outcomes[model].score
        points.append((strong_calls / len(records), score / len(records)))
    return points


def sweep(
    names: Sequence[str], seeds: Sequence[int], knobs: Sequence[float], workers: int
) -> dict[str, Any]:
    jobs = [(name, seed, knob) for name in names for seed in seeds for knob in knobs]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = pool.map(_learned_point, jobs, chunksize=1)
    else:
        done = [_learned_point(job) for job in jobs]
    report: dict[str, Any] = {}
    for name in names:
        records = _SETS[name]
        accuracy = model_accuracy(records)
        strong = max(accuracy, key=lambda m: accuracy[m])
        curves: dict[int, list[tuple[float, float]]] = defaultdict(list)
        by_knob: dict[float, list[tuple[float, float]]] = defaultdict(list)
        cpu = 0.0
        for got_name, seed, knob, fraction, acc, _calls, seconds in done:
            if got_name == name:
                curves[seed].append((fraction, acc))
                by_knob[knob].append((fraction, acc))
                cpu += seconds
        learned = [cpt95(curves[s], accuracy[strong]) for s in seeds]
        randoms = [cpt95(random_points(records, s), accuracy[strong]) for s in seeds]
        report[name] = {
            "prompts": len(records),
            "model_accuracy": {m: round(a, 4) for m, a in accuracy.items()},
            "strong_model": strong,
            "target_accuracy": round(0.95 * accuracy[strong], 4),
            "learned_cpt95": _spread(learned),
            "random_cpt95": _spread(randoms),
            "curve": [
                {
                    "knob": knob,
                    "strong_fraction": round(statistics.mean(f for f, _ in pts), 4),
                    "strong_fraction_sd": round(statistics.pstdev(f for f, _ in pts), 4),
                    "accuracy": round(statistics.mean(a for _, a in pts), 4),
                    "accuracy_sd": round(statistics.pstdev(a for _, a in pts), 4),
                }
                for knob, pts in sorted(by_knob.items())
            ],
            "cpu_s_per_decision_and_update": cpu / max(1, len(records) * len(seeds) * len(knobs)),
        }
    return report


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.mean(values), 4),
        "sd": round(statistics.pstdev(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "per_order": [round(v, 4) for v in values],
    }


def decision_time(records: Sequence[ReplayRecord], calls: int) -> dict[str, Any]:
    """Time features + decision per call, and an update, on weights trained by one pass."""
    space = FeatureSpace()
    weights = RoutingWeights(space=space)
    policy = LearnedPolicy()
    rng = np.random.default_rng(7)
    for record in records:
        features = space.extract(record.prompt, category=record.category, tenant="bench")
        for model, outcome in record.outcomes.items():
            weights.observe(Observation(model=model, features=features, quality=outcome.score))
    decide_us: list[float] = []
    features_us: list[float] = []
    update_us: list[float] = []
    for i in range(calls):
        record = records[i % len(records)]
        candidates = [
            Candidate(name=m, expected_cost=expected_cost(PRICES.get(m, 0.0), record.prompt))
            for m in sorted(record.outcomes)
        ]
        started = time.perf_counter()
        features = space.extract(record.prompt, category=record.category, tenant="bench")
        extracted = time.perf_counter()
        decision = policy.decide(weights, candidates, features, cost_weight=0.1, rng=rng)
        finished = time.perf_counter()
        features_us.append((extracted - started) * 1e6)
        decide_us.append((finished - started) * 1e6)
        outcome = record.outcomes[decision.chosen]
        started = time.perf_counter()
        weights.observe(
            Observation(model=decision.chosen, features=features, quality=outcome.score)
        )
        update_us.append((time.perf_counter() - started) * 1e6)
    snapshot = json.dumps(weights.to_dict())
    return {
        "calls": calls,
        "features_us": _percentiles(features_us),
        "features_and_decision_us": _percentiles(decide_us),
        "update_us": _percentiles(update_us),
        "snapshot_bytes": len(snapshot),
        "snapshot_models": len(weights.models),
        "dims": space.dims,
        "target": "features + decision <= 1000 us p50",
        "pass": statistics.median(decide_us) <= 1000,
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered_values = sorted(values)
    return {
        "p50": round(ordered_values[len(values) // 2], 1),
        "p99": round(ordered_values[min(len(values) - 1, int(len(values) * 0.99))], 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="RouteLLM's recordings")
    parser.add_argument("--seeds", type=int, default=5, help="prompt orders per set")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="3 orders, every other knob")
    parser.add_argument("--write-jsonl", type=Path, help="write the converted sets here")
    parser.add_argument("--timing-calls", type=int, default=3000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    if not (args.data / "gsm8k_responses.csv").exists():
        print(f"no recordings in {args.data}", file=sys.stderr)
        return 2
    gsm8k = gsm8k_records(args.data / "gsm8k_responses.csv")
    mtbench = mtbench_records(
        args.data / "mt_bench_questions.jsonl", args.data / "mt_bench_judgements.jsonl"
    )
    mixed = mixed_records(gsm8k, mtbench)
    if args.write_jsonl:
        args.write_jsonl.mkdir(parents=True, exist_ok=True)
        for name, raw in (("gsm8k", gsm8k), ("mt_bench", mtbench), ("mixed", mixed)):
            lines = "".join(json.dumps(r) + "\n" for r in raw)
            (args.write_jsonl / f"{name}.jsonl").write_text(lines)
    _SETS.update(
        {
            "gsm8k (prompt only)": to_records(gsm8k, use_category=False),
            "mt-bench (prompt only)": to_records(mtbench, use_category=False),
            "mt-bench (with category)": to_records(mtbench, use_category=True),
            "mixed (prompt only)": to_records(mixed, use_category=False),
            "mixed (with category)": to_records(mixed, use_category=True),
        }
    )
    seeds = list(range(3 if args.quick else args.seeds))
    knobs = SWEEP_KNOBS[::2] if args.quick else SWEEP_KNOBS
    # MT-Bench has 160 prompts: more orders cost little and steady its figures.
    report = sweep(
        ["gsm8k (prompt only)", "mixed (prompt only)", "mixed (with category)"],
        seeds,
        knobs,
        args.workers,
    )
    report |= sweep(
        ["mt-bench (prompt only)", "mt-bench (with category)"],
        list(range(len(seeds) * 3)),
        knobs,
        args.workers,
    )
    timing = decision_time(_SETS["mixed (with category)"], args.timing_calls)
    gsm = report["gsm8k (prompt only)"]["learned_cpt95"]["mean"]
    targets = {
        "gsm8k_cpt95": {"target": f"<= {TARGET_GSM8K}", "value": gsm, "pass": gsm <= TARGET_GSM8K},
        **{
            f"{name}_beats_random": {
                "target": "learned cpt95 < random cpt95",
                "value": [body["learned_cpt95"]["mean"], body["random_cpt95"]["mean"]],
                "pass": body["learned_cpt95"]["mean"] < body["random_cpt95"]["mean"],
            }
            for name, body in report.items()
            if name != "gsm8k (prompt only)"
        },
        "decision_time": {
            "target": timing["target"],
            "value": timing["features_and_decision_us"]["p50"],
            "pass": timing["pass"],
        },
    }
    doc = {
        "benchmark": "learning",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/learning.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "config": {
            "knobs": list(knobs),
            "orders": len(seeds),
            "prices_per_1k_tokens": PRICES,
            "policy": {"exploration": LearnedPolicy().exploration},
            "feature_dims": FeatureSpace().dims,
        },
        "sets": report,
        "decision_time": timing,
        "targets": targets,
    }
    print_report(doc)
    write_results(doc, QUICK_RESULTS if args.quick else RESULTS)
    return 0


def print_report(doc: dict[str, Any]) -> None:
    line = "-" * 78
    print(line)
    print(f"learned routing, online one pass, bandit feedback ({doc['config']['orders']} orders)")
    print(line)
    for name, body in doc["sets"].items():
        learned, rand = body["learned_cpt95"], body["random_cpt95"]
        print(
            f"{name}: {body['prompts']} prompts; accuracy {body['model_accuracy']}; "
            f"target {body['target_accuracy']}"
        )
        print(
            f"  cpt95 learned {learned['mean']:.3f} ± {learned['sd']:.3f} "
            f"(min {learned['min']:.3f}, max {learned['max']:.3f}); "
            f"random {rand['mean']:.3f} ± {rand['sd']:.3f}"
        )
        curve = "  ".join(
            f"{p['knob']:g}:{p['strong_fraction']:.2f}/{p['accuracy']:.3f}" for p in body["curve"]
        )
        print(f"  knob:strong/accuracy  {curve}")
    timing = doc["decision_time"]
    print(
        f"decision time: features {timing['features_us']}, features + decision "
        f"{timing['features_and_decision_us']}, update {timing['update_us']} (us); "
        f"snapshot {timing['snapshot_bytes']} bytes for {timing['snapshot_models']} models"
    )
    for name, target in doc["targets"].items():
        verdict = "PASS" if target["pass"] else "MISS"
        print(f"{verdict}  {name}: {target['value']} (target {target['target']})")
    print(line)


if __name__ == "__main__":
    sys.exit(main())
