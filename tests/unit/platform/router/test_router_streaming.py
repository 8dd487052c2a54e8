"""Streaming through the router: fallback before the first output, none after it."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from spine.platform.errors import SpineError, TransientFailure
from spine.platform.models import (
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
    ProviderTarget,
)
from spine.platform.router import (
    BreakerPolicy,
    BreakerState,
    ModelCatalog,
    ModelHealth,
    ModelRouter,
    ModelSpec,
)
from spine.platform.settings import load_settings

USER = [{"role": "user", "content": "hello"}]
# Per upstream model: deltas to yield, an error standing for "raise it here".
Script = list[CompletionDelta | SpineError]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class StreamingCaller:
    def __init__(self) -> None:
        self.script: dict[str, Script] = {}
        self.calls: list[str] = []
        self.closed: list[str] = []

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        raise AssertionError("not used")

    async def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        self.calls.append(target.model)
        default: Script = [
            CompletionDelta(text=""),
            CompletionDelta(text="hi"),
            CompletionDelta(text=" there", finish_reason="stop"),
            CompletionDelta(input_tokens=3, output_tokens=2),
        ]
        try:
            for item in self.script.get(target.model, default):
                if isinstance(item, SpineError):
                    raise item
                yield item
        finally:
            self.closed.append(target.model)

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        raise AssertionError("not used")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def make_router(caller: StreamingCaller, clock: FakeClock) -> ModelRouter:
    settings = load_settings(
        _env_file=None,
        ollama_url="http://127.0.0.1:1",
        openai_api_key="sk-test",
        fallback_chain="openai",
    )
    specs = [
        ModelSpec(name="local", provider="ollama", model="local", tags={"local"}),
        ModelSpec(name="mini", provider="openai", model="mini"),
    ]
    return ModelRouter(
        settings,
        catalog=ModelCatalog(specs),
        health=ModelHealth(policy=BreakerPolicy(failure_threshold=1, cooldown=10), clock=clock),
        upstream=caller,
    )


def failure() -> TransientFailure:
    return TransientFailure("upstream failed", cause="InternalServerError")


async def test_a_stream_answers_and_counts_its_usage() -> None:
    caller = StreamingCaller()
    stream = await make_router(caller, FakeClock()).stream(ChatRequest.of(USER))
    assert (stream.model, stream.provider, stream.strategy) == ("local", "ollama", "local_first")
    text = "".join([d.text async for d in stream])
    assert text == "hi there"
    assert (stream.input_tokens, stream.output_tokens, stream.finish_reason) == (3, 2, "stop")


@pytest.mark.parametrize("before", [0, 1], ids=["at-open", "after-an-empty-delta"])
async def test_a_failure_before_the_first_output_falls_back(before: int) -> None:
    caller, clock = StreamingCaller(), FakeClock()
    caller.script["local"] = [CompletionDelta(text="")] * before + [failure()]
    router = make_router(caller, clock)
    stream = await router.stream(ChatRequest.of(USER))
    assert stream.model == "mini"
    assert [(a.model, a.error) for a in stream.fallback_path] == [
        ("local", "InternalServerError"),
        ("mini", None),
    ]
    assert "".join([d.text async for d in stream]) == "hi there"
    assert router.health.breaker("local").state is BreakerState.OPEN
    assert router.health.latency_ms("mini") is not None


async def test_a_failure_after_output_is_raised_and_counts_against_the_model() -> None:
    caller = StreamingCaller()
    caller.script["local"] = [CompletionDelta(text="par"), failure()]
    router = make_router(caller, FakeClock())
    stream = await router.stream(ChatRequest.of(USER))
    seen = []
    with pytest.raises(TransientFailure):
        async for delta in stream:
            seen.append(delta.text)
    assert seen == ["par"]
    assert caller.calls == ["local"]  # nothing spliced on from another model
    assert router.health.breaker("local").state is BreakerState.OPEN


async def test_an_abandoned_probe_frees_the_breaker() -> None:
    caller, clock = StreamingCaller(), FakeClock()
    router = make_router(caller, clock)
    router.health.breaker("local").failed(router.health.breaker("local").acquire())  # type: ignore[arg-type]
    clock.t += 10
    stream = await router.stream(ChatRequest.of(USER, model="local"))  # the probe
    assert router.health.breaker("local").state is BreakerState.HALF_OPEN
    deltas = aiter(stream)
    await anext(deltas)
    await deltas.aclose()  # the client went away
    assert caller.closed == ["local"]
    assert router.health.breaker("local").state is BreakerState.OPEN
    assert router.health.breaker("local").retry_in() == 0  # the next caller probes at once
