"""The router's plan and its fallback loop, over a scripted caller instead of LiteLLM."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from spine.platform.errors import (
    BadRequest,
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    SpineError,
    TransientFailure,
)
from spine.platform.models import (
    Attempt,
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
    ProviderTarget,
)
from spine.platform.router import (
    CIRCUIT_OPEN,
    BreakerPolicy,
    BreakerState,
    ModelCatalog,
    ModelHealth,
    ModelRouter,
    ModelSpec,
    Requirements,
)
from spine.platform.settings import Settings, load_settings

USER = [{"role": "user", "content": "hello"}]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class ScriptedCaller:
    """Answers per upstream model: a text, an error to raise, or a function of the call."""

    def __init__(self) -> None:
        self.script: dict[str, str | SpineError | Callable[[], Any]] = {}
        self.calls: list[str] = []
        self.params: list[dict[str, Any]] = []

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        self.calls.append(target.model)
        self.params.append(request.params)
        what = self.script.get(target.model, f"hi from {target.model}")
        if callable(what):
            what = await what()
        if isinstance(what, SpineError):
            raise what
        return Completion(
            text=str(what), model=target.model, provider=target.provider, latency_ms=5
        )

    def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        raise AssertionError("not used")

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        self.calls.append(f"embed:{target.model}")
        what = self.script.get(f"embed:{target.model}")
        if isinstance(what, SpineError):
            raise what
        return Embedding(
            vectors=[[0.5, 0.5] for _ in request.texts],
            model=target.model,
            provider=target.provider,
        )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "ollama_url": "http://127.0.0.1:1",
        "openai_api_key": "sk-test",
        "anthropic_api_key": "sk-ant",
        "fallback_chain": "openai,anthropic",
    }
    return load_settings(_env_file=None, **{**base, **overrides})


def spec(name: str, provider: str, **fields: Any) -> ModelSpec:
    if provider == "ollama":
        fields.setdefault("tags", {"local"})
    return ModelSpec(name=name, provider=provider, model=name, **fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def caller() -> ScriptedCaller:
    return ScriptedCaller()


def make_router(
    caller: ScriptedCaller, clock: FakeClock, *specs: ModelSpec, **overrides: Any
) -> ModelRouter:
    specs = specs or (
        spec("local", "ollama", quality=0.5, input_price=0, output_price=0),
        spec("mini", "openai", quality=0.7, input_price="0.000001", output_price="0.000002"),
        spec("claude", "anthropic", quality=0.9, input_price="0.000003", output_price="0.00001"),
    )
    return ModelRouter(
        settings(**overrides),
        catalog=ModelCatalog(specs),
        health=ModelHealth(policy=BreakerPolicy(failure_threshold=2, cooldown=10), clock=clock),
        upstream=caller,
    )


def transient(cause: str = "InternalServerError") -> TransientFailure:
    return TransientFailure("upstream failed", provider="x", cause=cause)


def path(answer: Completion) -> list[tuple[str, str | None]]:
    return [(a.model, a.error) for a in answer.fallback_path]


# -- the plan ----------------------------------------------------------------------------------


def plan(router: ModelRouter, **kwargs: Any) -> list[str]:
    needs = Requirements(prompt_tokens=100, max_tokens=100)
    return [s.name for s in router.plan(needs, **kwargs).models]


def test_the_plan_follows_the_strategy_from_settings_or_the_call(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    assert plan(router) == ["local", "mini", "claude"]
    assert plan(router, strategy="quality") == ["claude", "mini", "local"]
    router = make_router(caller, clock, routing_strategy="quality")
    assert plan(router) == ["claude", "mini", "local"]
    assert plan(router, strategy="cost_optimized") == ["local", "mini", "claude"]


def test_an_explicit_model_wins_and_falls_back_along_the_chain(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock, fallback_chain="anthropic,ollama")
    assert plan(router, model="mini") == ["mini", "claude", "local"]
    assert plan(router, model="claude") == ["claude", "local"]
    # Without a chain, an explicit model is the whole plan.
    assert plan(make_router(caller, clock, fallback_chain=""), model="mini") == ["mini"]


def test_an_explicit_models_fallbacks_keep_the_strategys_order_within_a_provider(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    specs = (
        spec("local", "ollama", quality=0.5, input_price=0, output_price=0),
        spec("mini", "openai", quality=0.7, input_price="0.000001", output_price="0.000002"),
        spec("claude", "anthropic", quality=0.9, input_price="0.000003", output_price="0.00001"),
        spec("haiku", "anthropic", quality=0.6, input_price="0.000001", output_price="0.000004"),
    )
    router = make_router(caller, clock, *specs, fallback_chain="anthropic,ollama")
    assert plan(router, model="mini", strategy="quality") == ["mini", "claude", "haiku", "local"]
    assert plan(router, model="mini", strategy="cost_optimized") == [
        "mini",
        "haiku",
        "claude",
        "local",
    ]


@pytest.mark.parametrize("chain", ["", "anthropic"])
def test_an_explicit_model_under_an_unknown_strategy_is_refused_with_or_without_a_chain(
    caller: ScriptedCaller, clock: FakeClock, chain: str
) -> None:
    router = make_router(caller, clock, fallback_chain=chain)
    with pytest.raises(BadRequest, match="unknown routing strategy 'fastest'") as caught:
        router.plan(Requirements(), model="mini", strategy="fastest")
    assert caught.value.field == "strategy"


def test_provider_slash_model_reaches_an_unlisted_model_of_a_configured_provider(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock, fallback_chain="")
    assert plan(router, model="openai/gpt-4.1") == ["openai/gpt-4.1"]
    with pytest.raises(BadRequest, match="unknown model 'groq/x'; known models: claude, local"):
        router.plan(Requirements(), model="groq/x")
    with pytest.raises(BadRequest, match="unknown model 'gtp-4'") as caught:
        router.plan(Requirements(), model="gtp-4")
    assert caught.value.field == "model"


def test_no_configured_provider_is_provider_not_configured(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = ModelRouter(load_settings(_env_file=None), upstream=caller)
    with pytest.raises(ProviderNotConfigured, match="GENAI_OLLAMA_URL"):
        asyncio.run(router.complete(ChatRequest.of(USER)))


def test_no_model_meeting_the_request_is_a_bad_request_saying_why(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(
        caller,
        clock,
        spec("small", "ollama", context_window=100),
        spec("dull", "openai", quality=0.1),
    )
    with pytest.raises(BadRequest, match="small: needs about 150 tokens") as caught:
        router.plan(Requirements(prompt_tokens=50, max_tokens=100, min_quality=0.2))
    assert "dull: quality 0.1 is below 0.2" in caught.value.message


# -- calls and fallbacks -----------------------------------------------------------------------


async def test_the_first_model_answers_and_says_so(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    answer = await router.complete(
        ChatRequest.of(USER, temperature=0.2, strategy="quality", min_quality=0.8)
    )
    assert answer.text == "hi from claude"
    assert (answer.model, answer.provider, answer.strategy) == ("claude", "anthropic", "quality")
    assert answer.fallback_path == [Attempt(model="claude", provider="anthropic")]
    # Router-only parameters are not sent to the provider.
    assert caller.params == [{"temperature": 0.2}]
    assert router.health.latency_ms("claude") == 5


@pytest.mark.parametrize(
    "error",
    [
        transient("InternalServerError"),
        transient("RateLimitError"),
        transient("Timeout"),
        transient("APIConnectionError"),
        ContextWindowExceeded("too long", cause="ContextWindowExceededError"),
    ],
    ids=["5xx", "429", "timeout", "connection", "context"],
)
async def test_fallback_on_each_retryable_error_and_on_context_overflow(
    caller: ScriptedCaller, clock: FakeClock, error: SpineError
) -> None:
    caller.script["local"] = error
    answer = await make_router(caller, clock).complete(ChatRequest.of(USER))
    assert answer.model == "mini"
    assert path(answer) == [("local", error.details["cause"]), ("mini", None)]


async def test_no_fallback_on_a_plain_refusal(caller: ScriptedCaller, clock: FakeClock) -> None:
    caller.script["local"] = PermanentFailure("bad param", cause="BadRequestError")
    router = make_router(caller, clock)
    with pytest.raises(PermanentFailure, match="bad param"):
        await router.complete(ChatRequest.of(USER))
    assert caller.calls == ["local"]
    # The model answered: its health is not harmed.
    assert router.health.breaker("local").failures == 0


async def test_when_every_model_fails_the_last_error_names_the_path(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    caller.script["local"] = transient("Timeout")
    caller.script["mini"] = ContextWindowExceeded("too long", cause="ContextWindowExceededError")
    caller.script["claude"] = transient("RateLimitError")
    with pytest.raises(TransientFailure) as caught:
        await make_router(caller, clock).complete(ChatRequest.of(USER))
    message = caught.value.message
    assert message.startswith("upstream failed [tried: local (ollama: Timeout), mini (openai: ")
    assert "claude (anthropic: RateLimitError)" in message
    assert caught.value.details["fallback_path"] == [
        "local: Timeout",
        "mini: ContextWindowExceededError",
        "claude: RateLimitError",
    ]
    assert caught.value.retryable


async def test_an_open_breaker_skips_the_model_until_its_cooldown_ends(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock, fallback_chain="")
    caller.script["local"] = transient()
    for _ in range(2):  # threshold 2
        assert (await router.complete(ChatRequest.of(USER))).model == "claude"
    assert router.health.breaker("local").state is BreakerState.OPEN
    caller.calls.clear()
    answer = await router.complete(ChatRequest.of(USER))
    assert caller.calls == ["claude"]  # local is not called at all
    assert path(answer) == [("claude", None)]  # local_first put the dead model last
    # Explicitly asked for (no fallback chain), the open breaker still refuses it.
    with pytest.raises(
        TransientFailure, match=r"cooling down .* the next probe is in 10\.0 s"
    ) as caught:
        await router.complete(ChatRequest.of(USER, model="local"))
    assert caught.value.details["fallback_path"] == [f"local: {CIRCUIT_OPEN}"]
    clock.t += 10
    del caller.script["local"]
    caller.calls.clear()
    answer = await router.complete(ChatRequest.of(USER))
    assert caller.calls == ["local"]  # the probe, and it closes the breaker
    assert router.health.breaker("local").state is BreakerState.CLOSED


async def test_concurrent_calls_send_one_probe_and_fall_back_for_the_rest(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    caller.script["local"] = transient()
    for _ in range(2):
        await router.complete(ChatRequest.of(USER))
    clock.t += 10
    release = asyncio.Event()

    async def slow_probe() -> str:
        await release.wait()
        return "probe answered"

    caller.script["local"] = slow_probe
    caller.calls.clear()
    calls = [asyncio.create_task(router.complete(ChatRequest.of(USER))) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert caller.calls.count("local") == 1
    release.set()
    answers = await asyncio.gather(*calls)
    assert sorted(a.model for a in answers) == ["local", "mini", "mini", "mini", "mini"]
    # While the probe runs, local_first ranks the model being probed last: no one waits on it.
    assert all(path(a) == [("mini", None)] for a in answers if a.model == "mini")


async def test_a_cancelled_probe_frees_the_breaker_for_the_next_caller(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    caller.script["local"] = transient()
    for _ in range(2):
        await router.complete(ChatRequest.of(USER))
    clock.t += 10

    async def never() -> str:
        await asyncio.Event().wait()
        return ""

    caller.script["local"] = never
    probe = asyncio.create_task(router.complete(ChatRequest.of(USER)))
    await asyncio.sleep(0.01)
    assert router.health.breaker("local").state is BreakerState.HALF_OPEN
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert router.health.available("local")


async def test_admit_narrows_the_plan_and_never_calls_a_model_left_out(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    assert plan(router, strategy="quality") == ["claude", "mini", "local"]

    def free(s: ModelSpec) -> bool:
        return s.input_price == 0

    assert plan(router, strategy="quality", admit=free) == ["local"]
    caller.script["local"] = transient()
    with pytest.raises(TransientFailure):
        await router.complete(ChatRequest.of(USER, strategy="quality"), admit=free)
    assert caller.calls == ["local"]
    with pytest.raises(BadRequest, match="none of the models"):
        router.plan(Requirements(), strategy="quality", admit=lambda s: False)


async def test_a_tenants_bad_requests_never_open_a_breaker(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    router = make_router(caller, clock)
    refusals = [
        PermanentFailure("bad param", cause="BadRequestError"),
        ContextWindowExceeded("too long", cause="ContextWindowExceededError"),
    ]
    for refusal in refusals * 5:  # far past the threshold of 2
        caller.script["local"] = refusal
        with contextlib.suppress(SpineError):
            await router.complete(ChatRequest.of(USER, model="local"))
    assert router.health.breaker("local").state is BreakerState.CLOSED
    del caller.script["local"]
    assert (await router.complete(ChatRequest.of(USER, model="local"))).model == "local"


async def test_chat_and_embedding_calls_of_one_model_have_breakers_of_their_own(
    caller: ScriptedCaller, clock: FakeClock
) -> None:
    embeds = spec("local", "ollama", capabilities={"embeddings": True, "tools": True})
    router = make_router(caller, clock, embeds, fallback_chain="")
    caller.script["embed:local"] = transient()
    for _ in range(2):  # threshold 2: the embedding endpoint is down
        with pytest.raises(TransientFailure):
            await router.embed(EmbeddingRequest(texts=["x"], model="local"))
    assert router.health.breaker("local", "embedding").state is BreakerState.OPEN
    assert router.health.breaker("local").state is BreakerState.CLOSED
    caller.calls.clear()
    assert (await router.complete(ChatRequest.of(USER))).model == "local"
    assert caller.calls == ["local"]
