"""Every routed call publishes one outcome event to the OUTCOMES stream; NATS never fails a call.

Driven by the official ``openai`` client against the gateway, with the fake model server's
OpenAI side priced by a models file, as in ``test_gateway_metering``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import openai
import pytest
import uvicorn
from nats.js.api import RetentionPolicy, StorageType
from nats.js.errors import NotFoundError
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from spine.events.outcomes import ModelOutcome
from spine.events.streams import OUTCOMES_STREAM, StreamLayout
from spine.platform.app.api import create_app
from spine.platform.app.wiring import Platform
from spine.platform.keys import KeyStore
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform
from support.ports import free_port
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

CHEAP = "cheap"
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.001"), Decimal("0.002")


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def write_models_file(tmp_path: Path, models: FakeModelServer) -> Path:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        f"  - name: {CHEAP}\n"
        "    provider: openai-compatible\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: {models.openai_url}\n"
        f'    input_price: "{INPUT_PRICE}"\n'
        f'    output_price: "{OUTPUT_PRICE}"\n'
        "    context_window: 8192\n"
        "    quality: 0.9\n"
    )
    return models_file


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    models_file = write_models_file(tmp_path, models)
    async with running_platform(services, pg_url, models, models_file=models_file) as running:
        yield running


def client_of(url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def stored_outcomes(nats_url: str, expected: int, timeout: float = 10.0) -> list[Any]:
    """Read the OUTCOMES stream once it holds ``expected`` messages (they arrive in the
    background), then check that no more come."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(NotFoundError):
                count = (await js.stream_info(OUTCOMES_STREAM)).state.messages
            if count >= expected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more is on its way
        info = await js.stream_info(OUTCOMES_STREAM)
        assert info.state.messages == expected
        config = info.config
        assert (config.retention, config.storage, config.max_age, config.max_bytes) == (
            RetentionPolicy.LIMITS,
            StorageType.FILE,
            7 * 24 * 3600,
            1 << 30,
        )
        first = info.state.first_seq
        return [await js.get_msg(OUTCOMES_STREAM, first + i) for i in range(expected)]
    finally:
        await nc.close()


async def test_outcomes_past_the_byte_bound_drop_the_oldest(services: Any) -> None:
    """A busy gateway must not fill the disk JetStream shares with TASKS."""
    nc = await nats.connect(services.nats_url)
    try:
        js = nc.jetstream()
        await StreamLayout(outcomes_max_bytes=64 * 1024).ensure(js)
        body = json.dumps({"type": "model.outcome", "pad": "x" * 600}).encode()
        for i in range(400):  # ~280 KB in all
            await js.publish(f"spine.outcomes.t{i % 3}", body, headers={"Nats-Msg-Id": f"o{i}"})
        state = (await js.stream_info(OUTCOMES_STREAM)).state
        assert state.bytes <= 64 * 1024
        assert state.last_seq == 400  # every publish was taken; the oldest made room
        assert state.first_seq > 1 and state.messages == 400 - state.first_seq + 1
    finally:
        await nc.close()


async def test_each_call_publishes_one_outcome_event(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    async with client_of(spine.url, spine.key) as client:
        answered = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("how did it go"), temperature=0
        )
        hit = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("how did it go"), temperature=0
        )
        assert hit.headers["x-spine-cache"] == "hit"
        models.add(Rule(status=500, times=1))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=CHEAP, messages=ask("this fails"))
        streamed_raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=ask("streamed"),
            stream=True,
            extra_headers={"X-Spine-Strategy": "local_first"},
        )
        [chunk async for chunk in streamed_raw.parse()]

    messages = await stored_outcomes(spine.settings.nats_url or "", 4)
    assert {m.subject for m in messages} == {"spine.outcomes.acme"}
    events = [ModelOutcome.model_validate_json(m.data) for m in messages]
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.headers] == [e.id for e in events]
    assert len({e.id for e in events}) == 4
    assert all(json.loads(m.data)["type"] == "model.outcome" for m in messages)
    ok, cached, failed, streamed = events

    usage = answered.parse().usage
    assert usage is not None
    assert (ok.tenant, ok.model, ok.provider, ok.strategy) == (
        "acme",
        CHEAP,
        "openai-compatible",
        "explicit",
    )
    assert (ok.outcome, ok.cache_hit, ok.fallback_path) == ("ok", False, [])
    assert (ok.input_tokens, ok.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert ok.cost == Decimal(answered.headers["x-spine-cost"]) > 0
    assert ok.latency_ms > 0
    assert ok.key_id is not None
    assert (ok.task_id, ok.task_category) == (None, None)

    assert (cached.model, cached.cache_hit, cached.outcome, cached.cost) == (
        CHEAP,
        True,
        "ok",
        Decimal(0),
    )
    assert cached.key_id == ok.key_id

    assert failed.model == CHEAP
    assert failed.outcome == "transient_error"  # a 5xx upstream
    assert (failed.cost, failed.cache_hit) == (Decimal(0), False)

    assert (streamed.model, streamed.provider, streamed.strategy, streamed.outcome) == (
        streamed_raw.headers["x-spine-model"],
        streamed_raw.headers["x-spine-provider"],
        "local_first",
        "ok",
    )
    assert streamed.output_tokens > 0
    assert streamed.time >= ok.time

    # The usage ledger saw the same calls.
    total = (await spine.client.get("/v1/usage")).json()["total"]
    assert (total["calls"], total["cache_hits"], total["errors"]) == (4, 1, 1)


async def test_a_call_succeeds_quickly_when_nats_is_down(
    services: Any,
    pg_url: str,
    models: FakeModelServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead_nats = f"nats://127.0.0.1:{free_port()}"
    settings = make_settings(
        services,
        pg_url,
        models,
        models_file=write_models_file(tmp_path, models),
        nats_url=dead_nats,
        streams={"outcomes_retry": 0.5},  # given up on within the test's wait
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.api.port, log_config=None, lifespan="on"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        platform: Platform = app.state.platform
        assert not platform.bus.connected
        issued = await KeyStore(platform.db).create(tenant=f"t-{uuid.uuid4().hex[:6]}")
        url = f"http://127.0.0.1:{settings.api.port}"
        with caplog.at_level(logging.WARNING, logger="spine.events.outcomes"):
            async with client_of(url, issued.secret) as client:
                started = time.perf_counter()
                raw = await client.chat.completions.with_raw_response.create(
                    model=CHEAP, messages=ask("no nats today")
                )
                elapsed = time.perf_counter() - started
                assert raw.parse().choices[0].message.content == "echo: no nats today"
                again = await client.chat.completions.with_raw_response.create(
                    model=CHEAP, messages=ask("no nats today")
                )
                assert again.headers["x-spine-cache"] == "hit"
            assert elapsed < 2.0  # far below the bus's 2 s publish timeout
            deadline = time.monotonic() + 5
            while platform.outcomes.dropped < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert (platform.outcomes.dropped, platform.outcomes.published) == (2, 0)
        assert any("not published" in r.getMessage() for r in caplog.records)
    finally:
        server.should_exit = True
        await serving
