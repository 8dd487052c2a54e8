"""The model router against the fake model server over real HTTP, through the ``openai`` SDK.

Ollama is the fake server's base URL (called at its ``/v1``, as the OpenAI provider is); the
catalog holds ``llama3.2`` (Ollama, local) and ``gpt-4o-mini`` (OpenAI), so ``local_first``
tries Ollama first and ``quality`` tries OpenAI first.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from spine.platform.errors import PermanentFailure, TransientFailure
from spine.platform.models import ChatRequest
from spine.platform.router import BreakerPolicy, BreakerState, ModelHealth, ModelRouter
from spine.platform.settings import Settings, load_settings
from support.fake_models import FakeModelServer, Rule
from support.ports import free_port

pytestmark = pytest.mark.integration

LOCAL, CLOUD = "llama3.2", "gpt-4o-mini"
USER = [{"role": "user", "content": "hello router"}]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def settings(server: FakeModelServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ollama_url": server.url,
        "openai_api_key": "sk-test-dummy",
        "openai_base_url": server.openai_url,
        "default_provider": "ollama",
        "fallback_chain": "ollama,openai",
        "models": {"timeout": 5},
    }
    return load_settings(_env_file=None, **{**values, **overrides})


def router(settings: Settings, clock: FakeClock | None = None) -> ModelRouter:
    health = ModelHealth(
        policy=BreakerPolicy(failure_threshold=2, cooldown=30), clock=clock or FakeClock()
    )
    return ModelRouter(settings, health=health)


def path(answer: Any) -> list[tuple[str, str | None]]:
    return [(a.model, a.error) for a in answer.fallback_path]


async def test_the_local_model_answers_first(models: FakeModelServer) -> None:
    answer = await router(settings(models)).complete(ChatRequest.of(USER, max_tokens=20))
    assert answer.text == "echo: hello router"
    assert (answer.model, answer.provider, answer.strategy) == (LOCAL, "ollama", "local_first")
    assert path(answer) == [(LOCAL, None)]
    assert answer.input_tokens > 0
    assert models.count(model=LOCAL) == 1
    assert models.count(model=CLOUD) == 0


@pytest.mark.parametrize(
    ("rule", "cause"),
    [
        (Rule(model=LOCAL, status=500), "InternalServerError"),
        (Rule(model=LOCAL, status=503), "ServiceUnavailableError"),
        (Rule(model=LOCAL, status=429, retry_after=0.01), "RateLimitError"),
        (Rule(model=LOCAL, hang=True), "Timeout"),
    ],
    ids=["500", "503", "429", "timeout"],
)
async def test_falls_back_to_the_cloud_on_a_transient_failure(
    models: FakeModelServer, rule: Rule, cause: str
) -> None:
    models.add(rule)
    answer = await router(settings(models, models={"timeout": 0.5})).complete(ChatRequest.of(USER))
    assert (answer.model, answer.provider) == (CLOUD, "openai")
    assert answer.text == "echo: hello router"
    assert path(answer) == [(LOCAL, cause), (CLOUD, None)]
    assert models.count(model=LOCAL) == 1  # no retries hidden inside LiteLLM
    assert models.count(model=CLOUD) == 1


async def test_falls_back_when_the_local_server_refuses_connections(
    models: FakeModelServer,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    answer = await router(settings(models, ollama_url=closed)).complete(ChatRequest.of(USER))
    assert answer.model == CLOUD
    assert path(answer) == [(LOCAL, "APIConnectionError"), (CLOUD, None)]
    assert models.count(model=CLOUD) == 1


@pytest.mark.parametrize(
    ("first", "then", "strategy", "cause"),
    [
        (CLOUD, LOCAL, "quality", "ContextWindowExceededError"),
        # LiteLLM leaves Ollama's 400 a plain BadRequestError; its text says context length.
        (LOCAL, CLOUD, "local_first", "BadRequestError"),
    ],
    ids=["openai", "ollama"],
)
async def test_falls_back_on_a_context_window_overflow(
    models: FakeModelServer, first: str, then: str, strategy: str, cause: str
) -> None:
    models.add(Rule(model=first, status=400))  # "maximum context length is 8192 tokens"
    answer = await router(settings(models)).complete(ChatRequest.of(USER, strategy=strategy))
    assert (answer.model, answer.strategy) == (then, strategy)
    assert path(answer) == [(first, cause), (then, None)]
    assert models.count(model=first) == 1


@pytest.mark.parametrize(("first", "other"), [(LOCAL, CLOUD), (CLOUD, LOCAL)])
async def test_a_plain_bad_request_is_not_retried_elsewhere(
    models: FakeModelServer, first: str, other: str
) -> None:
    models.add(Rule(model=first, status=400, error="Unrecognized request argument: frobnicate"))
    with pytest.raises(PermanentFailure, match="frobnicate"):
        await router(settings(models)).complete(ChatRequest.of(USER, model=first))
    assert models.count(model=first) == 1
    assert models.count(model=other) == 0


async def test_every_model_failing_raises_the_last_error_with_the_path(
    models: FakeModelServer,
) -> None:
    models.add(Rule(model=LOCAL, status=500), Rule(model=CLOUD, status=429, retry_after=0.01))
    with pytest.raises(TransientFailure) as caught:
        await router(settings(models)).complete(ChatRequest.of(USER))
    assert "[tried: llama3.2 (ollama: InternalServerError), gpt-4o-mini (openai: Rate" in str(
        caught.value
    )
    assert "sk-test-dummy" not in str(caught.value)
    assert caught.value.retryable


async def test_the_breaker_skips_a_dead_model_and_probes_it_after_the_cooldown(
    models: FakeModelServer,
) -> None:
    clock = FakeClock()
    routed = router(settings(models), clock)
    models.add(Rule(model=LOCAL, status=500, times=2))
    for _ in range(2):
        assert (await routed.complete(ChatRequest.of(USER))).model == CLOUD
    assert routed.health.breaker(LOCAL).state is BreakerState.OPEN
    assert models.count(model=LOCAL) == 2

    for _ in range(3):  # while open, the dead model gets no traffic
        assert (await routed.complete(ChatRequest.of(USER))).model == CLOUD
    assert models.count(model=LOCAL) == 2
    assert models.count(model=CLOUD) == 5

    clock.t += 30  # the cooldown passed: the next call probes, the model answers again
    answer = await routed.complete(ChatRequest.of(USER))
    assert answer.model == LOCAL
    assert models.count(model=LOCAL) == 3
    assert routed.health.breaker(LOCAL).state is BreakerState.CLOSED
    assert routed.health.latency_ms(LOCAL) is not None


async def test_a_failed_probe_keeps_the_model_out_for_another_cooldown(
    models: FakeModelServer,
) -> None:
    clock = FakeClock()
    routed = router(settings(models), clock)
    models.add(Rule(model=LOCAL, status=503))
    for _ in range(2):
        await routed.complete(ChatRequest.of(USER))
    clock.t += 30
    assert (await routed.complete(ChatRequest.of(USER))).model == CLOUD  # the probe failed
    assert models.count(model=LOCAL) == 3
    await routed.complete(ChatRequest.of(USER))
    assert models.count(model=LOCAL) == 3
    assert routed.health.breaker(LOCAL).retry_in() == pytest.approx(30)


async def test_warm_up_discovers_the_models_ollama_lists(models: FakeModelServer) -> None:
    routed = router(settings(models))
    await routed.warm_up()
    assert {"llama3.2", "gpt-4o-mini", "nomic-embed-text", "ollama/gpt-4o-mini"} <= set(
        routed.catalog.names
    )
    # Prices and windows no setting gave come from LiteLLM's bundled map; local stays free.
    cloud = routed.catalog.get(CLOUD)
    assert cloud is not None
    assert (cloud.input_price, cloud.output_price) == (Decimal("1.5E-7"), Decimal("6E-7"))
    assert cloud.context_window == 128_000
    local = routed.catalog.get("ollama/gpt-4o-mini")
    assert local is not None
    assert (local.input_price, local.context_window) == (Decimal(0), None)
    answer = await routed.complete(ChatRequest.of(USER, model="ollama/gpt-4o-mini"))
    assert (answer.model, answer.provider) == ("ollama/gpt-4o-mini", "ollama")
    called = models.last_call.request
    assert (called.path, called.api_key, called.model) == (
        "/v1/chat/completions",
        "ollama",
        "gpt-4o-mini:latest",  # the name Ollama lists it by
    )


async def test_an_unreachable_ollama_does_not_stop_warm_up(models: FakeModelServer) -> None:
    # (With no embedding model left, the local one would join: left out here.)
    unreachable = f"http://127.0.0.1:{free_port()}"
    routed = router(settings(models, ollama_url=unreachable, local_embedding={"enabled": False}))
    await routed.warm_up()
    assert routed.catalog.names == ["gpt-4o-mini", "llama3.2"]
