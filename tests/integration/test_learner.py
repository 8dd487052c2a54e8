"""The learning loop end to end on real NATS and PostgreSQL: calls and feedback go out as
events, the learner turns them into weights, the routers load them and route by them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from spine.events.learner import Learner
from spine.platform.app.learner import run_learner
from spine.platform.learning.features import FeatureSpace
from spine.platform.learning.joins import CallFacts
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.schema import utcnow
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

GOOD, BAD = "good", "bad"
# Every call asks something new: a repeated prompt is answered from the response cache with the
# model and decision of its first answer (a full run failed so: weights came after the first 30
# calls, and the rounds that repeated those prompts replayed their cold decisions).
QUESTIONS = itertools.count()


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        + "".join(
            f"  - name: {name}\n"
            "    provider: openai-compatible\n"
            f"    model: {name}-model\n"
            f"    api_base: {models.openai_url}\n"
            '    input_price: "0.000001"\n'
            '    output_price: "0.000001"\n'
            for name in (GOOD, BAD)
        )
    )
    async with running_platform(
        services,
        pg_url,
        models,
        workers=0,
        models_file=models_file,
        learning={"min_observations": 0, "exploration": 1.0, "checkpoint_seconds": 0.2},
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def learning(spine: RunningPlatform, *, replay: bool = False) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_learner(spine.settings, stop, replay=replay))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def rate_calls(spine: RunningPlatform, n: int, *, topic: str = "apples") -> Counter[str]:
    """Make ``n`` learned calls; rate the good model's answers 1 and the bad one's 0."""
    client = AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=spine.key, max_retries=0)
    used: Counter[str] = Counter()
    for _ in range(n):
        number = next(QUESTIONS)
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": f"question number {number} about {topic}"}],
            extra_body={"spine_strategy": "learned", "spine_cost_weight": 0.0},
        )
        model = raw.headers["x-spine-model"]
        used[model] += 1
        answer = raw.parse()
        given = await spine.client.post(
            "/v1/feedback",
            json={"target": {"completion_id": answer.id}, "score": 1.0 if model == GOOD else 0.0},
        )
        assert given.status_code == 201, given.text
    return used


async def decisions_seen(spine: RunningPlatform, used: Counter[str]) -> str:
    """What the router decided, for a failure message: served models, cold starts, rankings."""
    listed = await spine.client.get("/v1/routing/decisions", params={"limit": 500})
    shown: Counter[str] = Counter()
    for row in listed.json().get("data", []):
        decision = row.get("decision") or {}
        cold = "cold" if decision.get("cold_start", True) else "warm"
        shown[f"{cold} v{decision.get('weights_version')} {decision.get('ranking')}"] += 1
    return f"served {dict(used)}; decisions {dict(shown.most_common(8))}"


async def until_stored(
    store: SnapshotStore, events: int, *, after: datetime | None = None, timeout: float = 20.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        latest = await store.latest()
        fresh = latest is not None and (after is None or latest.created_at > after)
        if latest is not None and fresh and latest.events >= events:
            return
        assert asyncio.get_running_loop().time() < deadline, latest and latest.events
        await asyncio.sleep(0.1)


async def until_loaded(spine: RunningPlatform, version: int, timeout: float = 20.0) -> None:
    learned = spine.platform.router.learned
    deadline = asyncio.get_running_loop().time() + timeout
    while (learned.version or 0) < version:
        assert asyncio.get_running_loop().time() < deadline, f"weights {learned.version}"
        await asyncio.sleep(0.05)


async def test_weights_move_toward_the_better_model_and_routing_follows(
    spine: RunningPlatform,
) -> None:
    store = SnapshotStore(spine.platform.db)
    async with learning(spine):
        first = await rate_calls(spine, 30)
        # Until the first weights arrive every call is cold (local_first): explore once the
        # router has weights, in rounds (bounded) until both models were tried.
        await until_loaded(spine, 1, timeout=60.0)
        for _ in range(4):
            if first[GOOD] and first[BAD]:
                break
            first += await rate_calls(spine, 30)
        assert first[GOOD] and first[BAD], await decisions_seen(spine, first)  # both tried
        await asyncio.sleep(0.5)
        latest = await store.latest()
        assert latest is not None
        await until_loaded(spine, latest.version)
        weights = spine.platform.router.learned.weights
        assert weights is not None
        good = weights.estimates(GOOD)
        bad = weights.estimates(BAD)
        assert good is not None and bad is not None
        assert good.score.mean > bad.score.mean
        shown = (await spine.client.get("/v1/routing/weights")).json()
        assert shown["version"] >= latest.version
        by_model = {row["model"]: row for row in shown["models"]}
        assert by_model[GOOD]["quality"] > by_model[BAD]["quality"]
        assert by_model[GOOD]["observations"] and by_model[BAD]["observations"]
        later = await rate_calls(spine, 30, topic="pears")
    assert later[GOOD] > later[BAD], later
    decisions = (
        await spine.client.get("/v1/routing/decisions", params={"strategy": "learned"})
    ).json()["data"]
    assert decisions and all(d["decision"]["strategy"] == "learned" for d in decisions)
    assert all("features" not in d["decision"] for d in decisions)
    assert {d["decision"]["weights_version"] for d in decisions} - {None}


async def test_a_restart_resumes_and_a_replay_rebuilds_the_same_weights(
    spine: RunningPlatform,
) -> None:
    store = SnapshotStore(spine.platform.db)
    async with learning(spine):
        await rate_calls(spine, 20)
        await until_stored(store, 40)  # 20 outcomes and 20 ratings
    before = await store.latest()
    assert before is not None and before.events >= 40  # 20 outcomes and 20 ratings
    restarted = Learner(store)
    await restarted.start()
    assert restarted.version == before.version
    assert restarted.weights.to_dict() == before.state
    replay_started = utcnow()
    async with learning(spine, replay=True):
        await until_stored(store, before.events, after=replay_started)
    replayed = await store.latest()
    assert replayed is not None
    assert replayed.state == before.state  # the same events in the same order


async def test_a_second_learner_stands_by_and_takes_over_when_the_first_ends(
    spine: RunningPlatform,
) -> None:
    # Two learners consuming at once each kept half the evidence and stored the same version
    # numbers: the second to store one crashed on the table's key.
    store = SnapshotStore(spine.platform.db)
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run_learner(spine.settings, first_stop))
    await asyncio.sleep(0.5)  # the first leads
    second = asyncio.create_task(run_learner(spine.settings, second_stop))
    try:
        await rate_calls(spine, 10)
        await until_stored(store, 20)  # 10 outcomes, 10 ratings: all in the leader's weights
        assert not second.done() and not first.done()
        first_stop.set()
        await asyncio.wait_for(first, 30)
        handed_over = await store.latest()
        assert handed_over is not None
        await rate_calls(spine, 10)
        await until_stored(store, 40, after=handed_over.created_at)  # the second took over
        latest = await store.latest()
        assert latest is not None and latest.version > handed_over.version
    finally:
        first_stop.set()
        second_stop.set()
        await asyncio.wait_for(asyncio.gather(first, second), 30)


async def test_duplicate_events_change_nothing(spine: RunningPlatform) -> None:
    store = SnapshotStore(spine.platform.db)
    learner = Learner(store)
    await learner.start()
    event = {
        "type": "model.outcome",
        "id": "call-1",
        "model": GOOD,
        "outcome": "ok",
        "latency_ms": 5.0,
        "cost": "0.001",
    }
    assert await learner.take([event, event]) == 1
    assert await learner.checkpoint()
    state = learner.weights.to_dict()
    assert await learner.take([event]) == 0  # stored already
    assert learner.weights.to_dict() == state


class LookupCountingStore(SnapshotStore):
    """The real store, noting which call ids the learner had to look up."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.looked_up: list[str] = []

    async def call_facts(
        self, *, call_ids: Iterable[str] = (), task_ids: Iterable[str] = ()
    ) -> list[CallFacts]:
        calls = list(call_ids)
        self.looked_up.extend(calls)
        return await super().call_facts(call_ids=calls, task_ids=task_ids)


def outcome(call: str, model: str, prompt: str) -> dict[str, Any]:
    features = FeatureSpace().extract(prompt, category="chat")
    return {
        "type": "model.outcome",
        "id": call,
        "model": model,
        "outcome": "ok",
        "latency_ms": 40.0,
        "cost": 0.001,
        "decision": {"features": features.model_dump(mode="json")},
    }


def feedback(event_id: str, call: str, score: float) -> dict[str, Any]:
    return {"type": "feedback", "id": event_id, "call_ids": [call], "score": score}


async def test_a_batch_gives_the_weights_of_its_events_one_at_a_time(
    spine: RunningPlatform,
) -> None:
    events = [
        outcome("call-a", GOOD, "how many apples"),
        feedback("rating-a", "call-a", 1.0),
        outcome("call-b", BAD, "what does a ticket cost"),
        feedback("rating-b", "call-b", 0.0),
        feedback("rating-a", "call-a", 1.0),  # a duplicate within the batch
        feedback("rating-x", "call-elsewhere", 1.0),  # a call this learner never saw
    ]
    batched_store = LookupCountingStore(spine.platform.db)
    batched = Learner(batched_store)
    assert await batched.take(events) == 5
    # Only the call whose outcome is not in the batch is looked up in the usage ledger.
    assert batched_store.looked_up == ["call-elsewhere"]
    single = Learner(LookupCountingStore(spine.platform.db))
    for event in events:
        await single.take([event])
    assert single.applied == batched.applied == 5
    assert single.weights.to_dict() == batched.weights.to_dict()
    good = batched.weights.estimates(GOOD)
    assert good is not None and good.score.count == 1
