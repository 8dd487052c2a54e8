"""``spine learn replay``: the production learner and ``learned`` strategy over a recording.

Prompt by prompt, online: the ``learned`` policy chooses a model with the weights as they are;
only that model's recorded outcome is revealed (bandit feedback), as the two events production
sends — the call's outcome (its features, cost) and then a feedback score — published to
JetStream; the production learning consumer (:class:`~spine.events.learner.Learner` behind its
FastStream subscriber) takes them from there, and the next prompt waits until it has. Each knob
of a sweep is an independent learner on subjects of its own, run side by side.

NATS is the configured one (or a running stack's, reached as its ``replay`` user, which may
create and use the run's stream and ``spine.replay.>`` subjects and nothing else); without one, a nats-server is started from
its package in a temporary folder. The learners keep their state in memory: a replay never touches
the platform's weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from spine.events.bus import NatsBus
from spine.events.learner import Learner, learner_broker
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.errors import BadRequest
from spine.platform.learning.features import FeatureSpace, SparseFeatures
from spine.platform.learning.policy import Candidate, LearnedPolicy
from spine.platform.learning.replay import (
    RecordedOutcome,
    ReplayPoint,
    ReplayRecord,
    ReplayReport,
    arun_replay,
    expected_cost,
    model_accuracy,
    summarise,
)
from spine.platform.learning.snapshots import ScratchSnapshots
from spine.platform.settings import Settings

__all__ = ["listed_price", "prices_of", "replay"]


async def replay(
    records: Sequence[ReplayRecord],
    prices: dict[str, float],
    knobs: Sequence[float],
    *,
    settings: Settings,
    seed: int = 0,
    parallel: int = 4,
    processes: int = 1,
    lag: int = 0,
) -> ReplayReport:
    """Replay ``records`` once per knob through JetStream; return the curve and its cpt95."""
    if not records:
        raise BadRequest("the recording holds no prompt", field="FILE")
    accuracy = model_accuracy(records)
    strong = max(accuracy, key=lambda m: accuracy[m])
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="spine-replay-") as scratch:
        async with _nats(settings, Path(scratch)) as url:
            bus = NatsBus(url, name=f"spine-replay-{run}")
            await bus.wait_connected(timeout=30)
            stream = f"REPLAY_{run}"
            await bus.js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[f"spine.replay.{run}.>"],
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.MEMORY,
                )
            )
            share = _Share(
                records=records,
                prices=prices,
                strong=strong,
                url=url,
                stream=stream,
                run=run,
                seed=seed,
                settings=settings,
                lag=lag,
                parallel=parallel,
            )
            try:
                points = await _across_processes(share, list(enumerate(knobs)), processes)
            finally:
                with contextlib.suppress(Exception):
                    await bus.js.delete_stream(stream)
                await bus.close()
    return summarise(records, points)


@dataclass(frozen=True, slots=True)
class _Share:
    """What every process of a sweep needs: the recording and where to replay it."""

    records: Sequence[ReplayRecord]
    prices: dict[str, float]
    strong: str
    url: str
    stream: str
    run: str
    seed: int
    settings: Settings
    lag: int
    parallel: int


async def _across_processes(
    share: _Share, knobs: list[tuple[int, float]], processes: int
) -> list[ReplayPoint]:
    """Replay the knobs, dealt round-robin to ``processes`` processes (CPU bound: one core
    each), each running its share side by side; the points come back in knob order."""
    if processes <= 1 or len(knobs) <= 1:
        return await _knobs(share, knobs)
    hands = [knobs[i::processes] for i in range(min(processes, len(knobs)))]
    loop = asyncio.get_running_loop()
    # spawn, not fork: the parent's event loop and connections must not be inherited.
    with ProcessPoolExecutor(len(hands), mp_context=multiprocessing.get_context("spawn")) as pool:
        dealt = await asyncio.gather(
            *(loop.run_in_executor(pool, _knobs_in_a_process, share, hand) for hand in hands)
        )
    by_index = {
        index: point
        for hand, points in zip(hands, dealt, strict=True)
        for (index, _), point in zip(hand, points, strict=True)
    }
    return [by_index[index] for index, _ in knobs]


def _knobs_in_a_process(share: _Share, knobs: list[tuple[int, float]]) -> list[ReplayPoint]:
    return asyncio.run(_knobs(share, knobs))


async def _knobs(share: _Share, knobs: list[tuple[int, float]]) -> list[ReplayPoint]:
    gate = asyncio.Semaphore(share.parallel)
    bus = NatsBus(share.url, name=f"spine-replay-{share.run}-{knobs[0][0]}")
    await bus.wait_connected(timeout=30)

    async def one(index: int, knob: float) -> ReplayPoint:
        async with gate:
            return await _one_knob(share, index, knob, bus)

    try:
        return list(await asyncio.gather(*(one(i, k) for i, k in knobs)))
    finally:
        await bus.close()


async def _one_knob(share: _Share, index: int, knob: float, bus: NatsBus) -> ReplayPoint:
    records, prices, settings = share.records, share.prices, share.settings
    subject = f"spine.replay.{share.run}.{index}"
    # Checkpoints (and their acknowledgements) now and then: each decision reads the learner's
    # weights in this process the moment it has applied the previous prompt's events.
    learner = Learner(ScratchSnapshots(), checkpoint_seconds=60.0, checkpoint_events=20_000)
    await learner.start()
    # A durable consumer of its own: knobs sharing one would take each other's events.
    broker = learner_broker(
        share.url,
        learner,
        stream=share.stream,
        subject=f"{subject}.>",
        durable=f"replay-{index}",
        batch=2,
    )
    await broker.start()
    space = FeatureSpace()
    policy = LearnedPolicy(
        exploration=settings.learning.exploration,
        min_observations=settings.learning.min_observations,
    )
    rng = np.random.default_rng(share.seed)
    models = sorted(records[0].outcomes)
    features_of: dict[str, SparseFeatures] = {}
    sent = 0
    position = 0  # the call ids follow the prompt's place: a recording may repeat an id

    async def decide(record: ReplayRecord) -> str:
        features = space.extract(record.prompt, category=record.category)
        features_of[record.id] = features
        candidates = [
            Candidate(
                name=m,
                expected_cost=expected_cost(prices.get(m, 0.0), record.prompt),
                free=prices.get(m, 0.0) == 0,
            )
            for m in models
        ]
        return policy.decide(
            learner.weights, candidates, features, cost_weight=knob, rng=rng
        ).chosen

    async def observe(record: ReplayRecord, model: str, outcome: RecordedOutcome) -> None:
        nonlocal sent, position
        position += 1
        call = f"{position}:{model}"
        cost = (
            outcome.cost
            if outcome.cost is not None
            else expected_cost(prices.get(model, 0.0), record.prompt)
        )
        features = features_of.pop(record.id)
        events = [
            {
                "type": "model.outcome",
                "id": call,
                "model": model,
                "outcome": "ok",
                "latency_ms": 0.0,
                "cost": cost,
                "decision": {"features": features.model_dump(mode="json")},
            },
            {"type": "feedback", "id": f"{call}:score", "call_ids": [call], "score": outcome.score},
        ]
        for event in events:
            await bus.publish_durable(
                f"{subject}.{event['type']}",
                json.dumps(event).encode(),
                msg_id=f"{subject}:{event['id']}",
            )
        sent += len(events)
        # The next decision sees every outcome but the last ``lag`` prompts' (in flight, as in
        # production, where a router learns of a call a moment after it was made).
        await learner.until_applied(sent - 2 * share.lag)

    try:
        return await arun_replay(
            records,
            decide,
            observe,
            knob=knob,
            strong=share.strong,
            cost_of=lambda m, r: expected_cost(prices.get(m, 0.0), r.prompt),
        )
    finally:
        await broker.stop()


@contextlib.asynccontextmanager
async def _nats(settings: Settings, scratch: Path) -> AsyncIterator[str]:
    """The configured NATS, or one started for the replay."""
    if settings.nats_url is not None:
        yield settings.nats_url
        return
    with EmbeddedStack(scratch / "nats", ["nats"], start_timeout=30.0) as stack:
        endpoints = stack.start()
        assert endpoints.nats_url is not None
        yield endpoints.nats_url


def prices_of(
    records: Sequence[ReplayRecord],
    catalog_prices: dict[str, float],
    *,
    known: Callable[[str], float | None] = lambda _model: None,
) -> tuple[dict[str, float], list[str]]:
    """Each model's blended price per 1,000 tokens, and notes on where prices came from.

    In order: the models file (or catalog); the costs the recording holds; ``known`` (LiteLLM's
    price list, by the model's name). A model with none of these gets the mean of the others'
    prices (1.0 when none is known), and a note says so: the knob then weighs nothing real.
    """
    prices = dict(catalog_prices)
    notes: list[str] = []
    unpriced: list[str] = []
    for model in sorted(records[0].outcomes) if records else []:
        if model in prices:
            continue
        costs = [
            (cost, expected_cost(1.0, r.prompt))
            for r in records
            if (cost := r.outcomes[model].cost) is not None
        ]
        if costs:
            prices[model] = sum(c for c, _ in costs) / sum(unit for _, unit in costs)
            continue
        listed = known(model)
        if listed is not None:
            prices[model] = listed
            notes.append(f"{model}: price from LiteLLM's price list")
        else:
            unpriced.append(model)
    fallback = sum(prices.values()) / len(prices) if prices else 1.0
    for model in unpriced:
        prices[model] = fallback
        notes.append(f"{model}: no price known; assumed {fallback:g} per 1k tokens")
    return prices, notes


def listed_price(model: str) -> float | None:
    """A model's blended price per 1,000 tokens in LiteLLM's bundled list, by name."""
    import litellm

    for key in sorted(litellm.model_cost):
        if key == model or key.endswith(f"/{model}"):
            facts = litellm.model_cost[key]
            given, taken = facts.get("input_cost_per_token"), facts.get("output_cost_per_token")
            if isinstance(given, int | float) and isinstance(taken, int | float):
                return float(given + taken) * 500
    return None
