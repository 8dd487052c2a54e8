"""Replaying recorded outcomes through a learner, online and with bandit feedback.

A recording is JSON Lines, one prompt a line in arrival order::

    {"id": "...", "prompt": "...", "category": "optional",
     "outcomes": {"<model>": {"score": 0.0..1.0, "cost": optional}}}

:func:`run_replay` is the loop: for each record, ``decide`` names a model, only that model's
recorded outcome is revealed to ``observe`` (never the others': bandit feedback), and the
tally counts the score, the cost and the calls. The decide and observe callables are the
seam: :class:`ReplayLearner` is the in-process learner (the features, :class:`RoutingWeights`
and :class:`LearnedPolicy` of production); the platform's replay command drives the same
pieces through the outcome stream.

A sweep runs one independent learner per knob value (:data:`SWEEP_KNOBS`); :func:`cpt95`
reads the sweep's curve: the smallest fraction of calls to the most accurate model at which
the accuracy reaches 95% of that model's, interpolated linearly between the points, the curve
being closed by sending every call to that model (fraction 1).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spine.platform.errors import BadRequest
from spine.platform.learning.estimator import Priors
from spine.platform.learning.features import FeatureSpace, SparseFeatures
from spine.platform.learning.policy import Candidate, LearnedPolicy
from spine.platform.learning.weights import Observation, RoutingWeights

__all__ = [
    "ANSWER_TOKENS",
    "SWEEP_KNOBS",
    "RecordedOutcome",
    "ReplayLearner",
    "ReplayPoint",
    "ReplayRecord",
    "ReplayReport",
    "arun_replay",
    "cpt95",
    "expected_cost",
    "model_accuracy",
    "read_records",
    "replay_sweep",
    "run_replay",
    "summarise",
]

SWEEP_KNOBS: tuple[float, ...] = (
    0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2,
    0.23, 0.26, 0.3, 0.35, 0.4, 0.5, 0.7, 1.0,
)  # fmt: skip
"""Cost weights of a sweep: dense where two models' quality gap usually lies."""
ANSWER_TOKENS = 256
"""Answer length assumed when a price turns into a call's expected cost."""
_CHARS_PER_TOKEN = 4


class RecordedOutcome(BaseModel):
    """One model's recorded outcome for one prompt."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    score: float = Field(ge=0, le=1)
    cost: float | None = Field(None, ge=0)


class ReplayRecord(BaseModel):
    """One recorded prompt and every model's outcome for it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    prompt: str
    category: str | None = None
    outcomes: dict[str, RecordedOutcome] = Field(min_length=1)


class ReplayPoint(BaseModel):
    """One learner's pass over the recording, at one knob value."""

    knob: float
    accuracy: float = Field(description="Mean revealed score over all prompts.")
    strong_fraction: float = Field(description="Share of calls to the most accurate model.")
    cost: float = Field(description="Mean cost per prompt.")
    calls: dict[str, int]


class ReplayReport(BaseModel):
    """What a replay prints: the curve, its cpt95, and each model's accuracy alone."""

    prompts: int
    points: list[ReplayPoint]
    cpt95: float
    model_accuracy: dict[str, float]


def read_records(
    source: Path | Iterable[str],
    *,
    models: Sequence[str] | None = None,
    use_category: bool = True,
) -> list[ReplayRecord]:
    """Read a recording, keeping ``models``' outcomes (when None, those of its first record,
    which every other record must have too: a choice among models some prompts lack could not
    be revealed).

    Raises:
        BadRequest: A line is not a record, or lacks an outcome of one of ``models``; the
            message names the line and the field.
    """
    lines = source.read_text().splitlines() if isinstance(source, Path) else source
    wanted = list(models) if models else None
    records: list[ReplayRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = ReplayRecord.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            where = _first_field(exc)
            raise BadRequest(
                f"line {number}: not a replay record: {_said(exc, where)}{_hint(number, line)}",
                field=where,
            ) from exc
        if wanted is None:
            wanted = sorted(record.outcomes)
        names = wanted
        missing = [m for m in names if m not in record.outcomes]
        if missing:
            raise BadRequest(f"line {number}: no outcome of {', '.join(missing)}", field="outcomes")
        records.append(
            record.model_copy(
                update={
                    "outcomes": {m: record.outcomes[m] for m in names},
                    "category": record.category if use_category else None,
                }
            )
        )
    return records


def _hint(number: int, line: str) -> str:
    """What to do with a table (RouteLLM ships its GSM8K recording as CSV)."""
    if number > 1 or line.lstrip().startswith(("{", "[")) or "," not in line:
        return ""
    return (
        " (this looks like a CSV header: the recording must be JSON Lines, one object per "
        'line: {"id", "prompt", "outcomes": {"<model>": {"score": 0..1}}}; '
        "`bench/learning.py --write-jsonl DIR` converts RouteLLM's GSM8K and MT-Bench files)"
    )


def _said(exc: Exception, where: str | None) -> str:
    """One line for the first problem (pydantic's own text spans lines and links its docs)."""
    if isinstance(exc, ValidationError) and exc.errors():
        message = exc.errors()[0]["msg"]
        return f"{where}: {message}" if where else message
    return str(exc)


def _first_field(exc: Exception) -> str | None:
    if isinstance(exc, ValidationError) and exc.errors():
        return ".".join(str(part) for part in exc.errors()[0]["loc"]) or None
    return None


def model_accuracy(records: Sequence[ReplayRecord]) -> dict[str, float]:
    """Return each model's mean score over the recording (what always choosing it gives)."""
    names = sorted({m for r in records for m in r.outcomes})
    count = max(len(records), 1)
    return {m: sum(r.outcomes[m].score for r in records if m in r.outcomes) / count for m in names}


def expected_cost(price_per_1k: float, prompt: str) -> float:
    """Return a call's expected cost at a blended price per 1,000 tokens."""
    tokens = len(prompt) / _CHARS_PER_TOKEN + ANSWER_TOKENS
    return price_per_1k * tokens / 1000


Decide = Callable[[ReplayRecord], str]
Observe = Callable[[ReplayRecord, str, RecordedOutcome], None]


@dataclass(slots=True)
class _Tally:
    strong: str
    cost_of: Callable[[str, ReplayRecord], float]
    prompts: int = 0
    score: float = 0.0
    cost: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, record: ReplayRecord, model: str, outcome: RecordedOutcome) -> None:
        self.prompts += 1
        self.score += outcome.score
        self.cost += outcome.cost if outcome.cost is not None else self.cost_of(model, record)
        self.calls[model] = self.calls.get(model, 0) + 1

    def point(self, knob: float) -> ReplayPoint:
        count = max(self.prompts, 1)
        return ReplayPoint(
            knob=knob,
            accuracy=self.score / count,
            strong_fraction=self.calls.get(self.strong, 0) / count,
            cost=self.cost / count,
            calls=dict(sorted(self.calls.items())),
        )


def _revealed(record: ReplayRecord, model: str) -> RecordedOutcome:
    outcome = record.outcomes.get(model)
    if outcome is None:
        raise BadRequest(f"record {record.id!r} has no outcome of {model!r}", field="outcomes")
    return outcome


def run_replay(
    records: Iterable[ReplayRecord],
    decide: Decide,
    observe: Observe,
    *,
    knob: float,
    strong: str,
    cost_of: Callable[[str, ReplayRecord], float],
) -> ReplayPoint:
    """Run one online pass: decide, reveal only the chosen outcome, observe, tally.

    Args:
        records: The recording, in arrival order.
        decide: Names the model for a record.
        observe: Is told the chosen model's recorded outcome (and nothing else).
        knob: The knob value, recorded in the point.
        strong: The most accurate model (its share of calls is the point's fraction).
        cost_of: A call's cost when the recording has none for it.
    """
    tally = _Tally(strong=strong, cost_of=cost_of)
    for record in records:
        model = decide(record)
        outcome = _revealed(record, model)
        observe(record, model, outcome)
        tally.add(record, model, outcome)
    return tally.point(knob)


async def arun_replay(
    records: Iterable[ReplayRecord],
    decide: Callable[[ReplayRecord], Awaitable[str]],
    observe: Callable[[ReplayRecord, str, RecordedOutcome], Awaitable[None]],
    *,
    knob: float,
    strong: str,
    cost_of: Callable[[str, ReplayRecord], float],
) -> ReplayPoint:
    """Run :func:`run_replay`'s loop with awaitable decide and observe (e.g. over a stream)."""
    tally = _Tally(strong=strong, cost_of=cost_of)
    for record in records:
        model = await decide(record)
        outcome = _revealed(record, model)
        await observe(record, model, outcome)
        tally.add(record, model, outcome)
    return tally.point(knob)


def cpt95(
    points: Iterable[tuple[float, float]], strong_accuracy: float, share: float = 0.95
) -> float:
    """Return the smallest strong-call fraction at which accuracy reaches ``share`` of the
    strong model's.

    ``points`` are (strong fraction, accuracy) pairs; the curve runs through them in order of
    fraction, closed at (1, ``strong_accuracy``), and is interpolated linearly between points.
    """
    target = share * strong_accuracy
    curve = sorted((*points, (1.0, strong_accuracy)))
    previous: tuple[float, float] | None = None
    for fraction, accuracy in curve:
        if accuracy >= target:
            if previous is None or accuracy == previous[1]:
                return fraction
            low_f, low_a = previous
            return low_f + (target - low_a) * (fraction - low_f) / (accuracy - low_a)
        previous = (fraction, accuracy)
    return 1.0


@dataclass(slots=True)
class ReplayLearner:
    """The production learner in one process: features, weights and the ``learned`` policy.

    ``prices`` are blended prices per 1,000 tokens (0 for a free model); they give each
    call's expected cost at decision time, and its cost when the recording has none.
    """

    models: Sequence[str]
    prices: Mapping[str, float]
    knob: float
    rng: np.random.Generator
    space: FeatureSpace = field(default_factory=FeatureSpace)
    weights: RoutingWeights = field(init=False)
    policy: LearnedPolicy = field(default_factory=LearnedPolicy)
    priors: Priors = field(default_factory=Priors)
    _pending: dict[str, SparseFeatures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = RoutingWeights(space=self.space, priors=self.priors)

    def cost_of(self, model: str, record: ReplayRecord) -> float:
        """Return a call's expected cost from its price."""
        return expected_cost(self.prices.get(model, 0.0), record.prompt)

    def decide(self, record: ReplayRecord) -> str:
        """Choose a model for ``record`` as the ``learned`` strategy would."""
        features = self.space.extract(record.prompt, category=record.category)
        self._pending[record.id] = features
        candidates = [
            Candidate(
                name=m,
                expected_cost=self.cost_of(m, record),
                free=self.prices.get(m, 0.0) == 0,
            )
            for m in self.models
        ]
        decision = self.policy.decide(
            self.weights, candidates, features, cost_weight=self.knob, rng=self.rng
        )
        return decision.chosen

    def observe(self, record: ReplayRecord, model: str, outcome: RecordedOutcome) -> None:
        """Fold the chosen model's revealed outcome in."""
        features = self._pending.pop(record.id)
        self.weights.observe(
            Observation(model=model, features=features, quality=outcome.score, cost=outcome.cost)
        )


def replay_sweep(
    records: Sequence[ReplayRecord],
    prices: Mapping[str, float],
    *,
    knobs: Sequence[float] = SWEEP_KNOBS,
    seed: int = 0,
    policy: LearnedPolicy | None = None,
    priors: Priors | None = None,
) -> ReplayReport:
    """Run one independent :class:`ReplayLearner` per knob over ``records``, in this process."""
    models = sorted(records[0].outcomes) if records else []
    accuracy = model_accuracy(records)
    strong = max(accuracy, key=lambda m: accuracy[m]) if accuracy else ""
    points = []
    for knob in knobs:
        learner = ReplayLearner(
            models=models,
            prices=prices,
            knob=knob,
            rng=np.random.default_rng(seed),
            policy=policy or LearnedPolicy(),
            priors=priors or Priors(),
        )
        points.append(
            run_replay(
                records,
                learner.decide,
                learner.observe,
                knob=knob,
                strong=strong,
                cost_of=learner.cost_of,
            )
        )
    return summarise(records, points)


def summarise(records: Sequence[ReplayRecord], points: Sequence[ReplayPoint]) -> ReplayReport:
    """Put a sweep's points together with the cpt95 they give and each model's accuracy."""
    accuracy = model_accuracy(records)
    best = max(accuracy.values(), default=0.0)
    return ReplayReport(
        prompts=len(records),
        points=sorted(points, key=lambda p: p.knob),
        cpt95=cpt95(((p.strong_fraction, p.accuracy) for p in points), best),
        model_accuracy=accuracy,
    )
