"""Calls an experiment's arm routes are routing decisions: on record with their arm and strategy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support.experiments import arm, experiment_body
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

CHEAP = "cheap"


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


async def chat(spine: RunningPlatform, model: str, text: str) -> None:
    answer = await spine.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
    )
    assert answer.status_code == 200, answer.text


async def test_a_call_a_model_arm_routes_is_a_routing_decision(spine: RunningPlatform) -> None:
    created = await spine.client.post(
        "/v1/experiments",
        json=experiment_body(
            "cheap either way", arm("a", 0.5, model=CHEAP), arm("b", 0.5, model=CHEAP)
        ),
    )
    assert created.status_code == 201, created.text
    experiment = created.json()["id"]
    await chat(spine, "auto", "the arm chooses")
    await chat(spine, CHEAP, "the caller chooses")  # named: neither assigned nor a decision

    listed = await spine.client.get("/v1/routing/decisions")
    assert listed.status_code == 200, listed.text
    decisions = listed.json()["data"]
    assert [(d["model"], d["experiment_id"]) for d in decisions] == [(CHEAP, experiment)]
    assert decisions[0]["arm"] in {"a", "b"}
    assert decisions[0]["strategy"] not in (None, "explicit")
    explicit = await spine.client.get("/v1/routing/decisions", params={"strategy": "explicit"})
    assert [(d["experiment_id"], d["arm"]) for d in explicit.json()["data"]] == [(None, None)]


async def test_an_arm_may_route_by_the_learned_strategy(spine: RunningPlatform) -> None:
    # Testing the learned router against a fixed choice is the experiment to run; the arm was
    # refused as naming an unknown strategy.
    created = await spine.client.post(
        "/v1/experiments",
        json=experiment_body(
            "learned vs cheap",
            arm("learned", 1.0, strategy="learned"),
            arm("cheap", 0.0, model=CHEAP),
        ),
    )
    assert created.status_code == 201, created.text
    answer = await spine.client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "route me"}]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-spine-strategy"] == "learned"
    decisions = (await spine.client.get("/v1/routing/decisions")).json()["data"]
    assert [(d["arm"], d["strategy"]) for d in decisions] == [("learned", "learned")]
