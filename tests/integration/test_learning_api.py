"""The learning loop over HTTP: feedback (idempotent, tenant-bound), decisions, experiments."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from openai import AsyncOpenAI

from spine.events.weights import WeightsChannel
from spine.platform.db import Database
from spine.platform.errors import Conflict
from spine.platform.learning.experiments import ExperimentBook, ExperimentInput
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.learning.weights import Observation, RoutingWeights
from support.experiments import arm, experiment_body
from support.fake_models import FakeModelServer
from support.knowledge import eventually
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

CHEAP, LOCAL = "cheap", "llama3.2"


def cheap_vs_local(name: str, scope: dict[str, Any] | None = None) -> dict[str, Any]:
    """An experiment splitting ``scope``'s calls evenly between the arms ``cheap`` and ``local``."""
    return experiment_body(
        name, arm("cheap", 0.5, model=CHEAP), arm("local", 0.5, model=LOCAL), scope=scope
    )


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        f"  - name: {CHEAP}\n"
        "    provider: openai-compatible\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: {models.openai_url}\n"
        '    input_price: "0.001"\n'
        '    output_price: "0.002"\n'
    )
    async with running_platform(services, pg_url, models, models_file=models_file) as running:
        yield running


def client_of(spine: RunningPlatform, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key or spine.key, base_url=f"{spine.url}/v1", max_retries=0)


async def test_a_completion_is_rated_by_its_id_once_per_key_and_announced(
    spine: RunningPlatform, services: Any
) -> None:
    answer = await client_of(spine).chat.completions.create(
        model=CHEAP, messages=[{"role": "user", "content": "rate me"}]
    )
    nc = await nats.connect(services.nats_url)
    seen: list[bytes] = []

    async def note(msg: Msg) -> None:
        seen.append(msg.data)

    sub = await nc.subscribe("spine.outcomes.*.feedback", cb=note)
    body = {"target": {"completion_id": answer.id}, "score": 0.25, "label": "meh"}
    first = await spine.client.post("/v1/feedback", json=body)
    assert first.status_code == 201, first.text
    again = await spine.client.post("/v1/feedback", json={**body, "score": 1.0})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["score"] == 0.25
    assert len(first.json()["call_ids"]) == 1
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    await nc.close()
    assert len(seen) == 1 and first.json()["id"].encode() in seen[0]


async def test_feedback_for_another_tenants_or_an_unknown_target_is_404(
    spine: RunningPlatform,
) -> None:
    answer = await client_of(spine).chat.completions.create(
        model=CHEAP, messages=[{"role": "user", "content": "mine"}]
    )
    globex = await spine.new_key("globex")
    for target in ({"completion_id": answer.id}, {"task_id": "nope"}, {"call_id": "nope"}):
        response = await spine.client.post(
            "/v1/feedback",
            json={"target": target, "score": 1},
            headers={"Authorization": f"Bearer {globex}"},
        )
        assert response.status_code == 404, (target, response.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": {"call_id": "x"}, "score": 1.5}, "score"),
        ({"target": {"call_id": "x"}, "score": -0.1}, "score"),
        ({"target": {}, "score": 0.5}, "target"),
        ({"target": {"call_id": "x", "task_id": "y"}, "score": 0.5}, "target"),
    ],
)
async def test_bad_feedback_is_a_422_naming_the_field(
    spine: RunningPlatform, body: dict[str, Any], field: str
) -> None:
    response = await spine.client.post("/v1/feedback", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].startswith(field)


async def test_decisions_list_routed_calls_of_the_tenant_in_pages(spine: RunningPlatform) -> None:
    for n in range(3):
        await client_of(spine).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"route {n}"}]
        )
    await client_of(spine).chat.completions.create(
        model=CHEAP, messages=[{"role": "user", "content": "named"}]
    )
    first = (await spine.client.get("/v1/routing/decisions", params={"limit": 2})).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    rest = (
        await spine.client.get("/v1/routing/decisions", params={"cursor": first["next_cursor"]})
    ).json()
    routed = first["data"] + rest["data"]
    assert len(routed) == 3  # the call that named its model was not routed
    assert {d["strategy"] for d in routed} == {"local_first"}
    other = await spine.new_key("globex")
    theirs = await spine.client.get(
        "/v1/routing/decisions", headers={"Authorization": f"Bearer {other}"}
    )
    assert theirs.json()["data"] == []
    refused = await spine.client.get("/v1/routing/decisions", params={"tenant": "globex"})
    assert refused.status_code == 404


async def test_an_experiment_assigns_sticky_arms_and_reports_what_they_did(
    spine: RunningPlatform,
) -> None:
    refusals = [
        ((arm("a", 0.5, model=CHEAP), arm("b", 0.4, model=LOCAL)), 400, "arms"),
        ((arm("a", 0.5, model=CHEAP), arm("b", 0.5, model="no-such")), 400, "arms.1.model"),
        ((arm("a", 0.5, model=CHEAP), arm("a", 0.5, model=LOCAL)), 422, "arms"),  # not "body"
    ]
    for arms_given, status, field in refusals:
        refused = await spine.client.post("/v1/experiments", json=experiment_body("x", *arms_given))
        assert (refused.status_code, refused.json()["error"]["field"]) == (status, field)
    no_agent = cheap_vs_local("x", scope={"kind": "agent", "agent": "no-such-agent"})
    refused = await spine.client.post("/v1/experiments", json=no_agent)  # it would see no call
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["type"], refused.json()["error"]["field"]) == (
        "unknown_agent",
        "scope.agent",
    )
    created = await spine.client.post("/v1/experiments", json=cheap_vs_local("cheap vs local"))
    assert created.status_code == 201, created.text
    experiment = created.json()["id"]
    # A call gets one arm: an experiment over calls another one covers would get none.
    for scope in ({"kind": "gateway"}, {"kind": "tenant"}):
        overlapping = await spine.client.post(
            "/v1/experiments", json=cheap_vs_local("shadowed", scope=scope)
        )
        assert overlapping.status_code == 409, overlapping.text
        assert overlapping.json()["error"]["field"] == "scope"
        assert overlapping.json()["error"]["experiment_id"] == experiment
    keys = [spine.key] + [await spine.new_key("acme") for _ in range(5)]
    arms: dict[str, set[str]] = {}
    for key in keys:
        for n in range(2):
            answer = await client_of(spine, key).chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"{key[-6:]} {n}"}]
            )
            arms.setdefault(key, set()).add(answer.headers["x-spine-model"])
    assert all(len(models) == 1 for models in arms.values()), arms  # sticky per key
    report = (await spine.client.get(f"/v1/experiments/{experiment}")).json()
    counts = Counter({arm["arm"]: arm["calls"] for arm in report["arms"]})
    assert sum(counts.values()) == 2 * len(keys)
    used = Counter(next(iter(m)) for m in arms.values())
    assert counts == Counter({("cheap" if m == CHEAP else "local"): 2 * n for m, n in used.items()})
    promoted = await spine.client.post(
        f"/v1/experiments/{experiment}/promote", json={"arm": "cheap"}
    )
    assert promoted.json()["status"] == "promoted"
    after = await client_of(spine, keys[1]).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "after promotion"}]
    )
    assert after.headers["x-spine-model"] == CHEAP
    # A promotion is undone by a stop (it once stayed for good: stop answered 409).
    stopped = await spine.client.post(f"/v1/experiments/{experiment}/stop")
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["status"], stopped.json()["promoted_arm"]) == ("stopped", "cheap")
    again = await spine.client.post(f"/v1/experiments/{experiment}/stop")
    assert again.status_code == 409
    untested = await client_of(spine, keys[1]).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "after the stop"}]
    )
    assert untested.headers["x-spine-model"] == LOCAL  # local_first again


async def test_the_weights_shown_count_the_events_they_were_learnt_from(
    spine: RunningPlatform,
) -> None:
    weights = RoutingWeights()
    for _ in range(5):  # five observations folded in ...
        weights.observe(Observation(model=CHEAP, latency_ms=10.0, cost=0.001))
    # ... from nine events (feedback without a known call, say, folds nothing in)
    await SnapshotStore(spine.platform.db).save(
        version=3, state=weights.to_dict(), events=9, applied=[]
    )
    await WeightsChannel(spine.platform.bus).announce(3)

    shown: dict[str, Any] = {}
    for _ in range(200):
        shown = (await spine.client.get("/v1/routing/weights")).json()
        if shown["version"] == 3:
            break
        await asyncio.sleep(0.05)

    assert (shown["version"], shown["events"]) == (3, 9), shown  # what `spine doctor` says


async def test_a_version_announced_before_it_is_stored_is_loaded_when_announced_again(
    spine: RunningPlatform,
) -> None:
    # The bucket outlives databases (one started afresh beside an old NATS): a follower that
    # read an announcement before its snapshot existed once skipped that version for good.
    channel = WeightsChannel(spine.platform.bus)
    version = uuid.uuid4().int % 1_000_000
    asked: list[int] = []

    async def load(announced: int) -> int | None:
        asked.append(announced)
        return None if len(asked) == 1 else announced  # nothing stored at the first

    async def asked_so_far() -> list[int]:
        return list(asked)

    stop = asyncio.Event()
    await channel.announce(version)
    follow = asyncio.create_task(channel.follow(load, stop, retry=0.1))
    try:
        await eventually(asked_so_far, lambda seen: len(seen) == 1, timeout=5)
        await channel.announce(version)  # stored now, announced again
        assert await eventually(asked_so_far, lambda seen: len(seen) == 2, timeout=5) == [
            version,
            version,
        ]
    finally:
        stop.set()
        await follow


async def test_overlapping_experiments_created_at_once_by_two_processes_give_one(
    pg_url: str,
) -> None:
    # The check and the insert were apart: made in the same instant, both passed the check.
    dbs = [Database(pg_url), Database(pg_url)]  # two processes as far as the database can tell
    try:
        stores = [ExperimentBook(db) for db in dbs]
        body = cheap_vs_local("twin")
        outcomes = await asyncio.gather(
            *(
                stores[n % 2].create(ExperimentInput.model_validate(body), tenant="acme", key_id="")
                for n in range(8)
            ),
            return_exceptions=True,
        )
        created = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert (len(created), len(refused)) == (1, 7), outcomes
        assert {r.details["experiment_id"] for r in refused} == {created[0].id}
    finally:
        for db in dbs:
            await db.dispose()
