"""The fake model server answers LiteLLM and the openai client as Ollama and OpenAI would."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import openai
import pytest
from litellm import exceptions as llm_errors
from litellm.exceptions import MidStreamFallbackError
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from support.fake_models import FakeModelProcess, FakeModelServer, Rule, ToolCall, fake_embedding

litellm.suppress_debug_info = True

TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
WEATHER = ToolCall(name="get_weather", arguments={"city": "Paris"})


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def server(shared_server: FakeModelServer) -> FakeModelServer:
    shared_server.reset()
    return shared_server


@pytest.fixture
async def client(server: FakeModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.openai_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


def route(server: FakeModelServer, provider: str) -> dict[str, Any]:
    """LiteLLM arguments reaching ``server`` as Ollama or as an OpenAI-compatible provider."""
    if provider == "ollama":
        return {"model": "ollama_chat/llama3.2", "api_base": server.url}
    return {"model": "openai/gpt-4o-mini", "api_base": server.openai_url, "api_key": "sk-test"}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def drain(stream: Any, received: list[str]) -> None:
    """Collect streamed text deltas into ``received`` until the stream ends or fails."""
    async for chunk in stream:
        received.append(chunk.choices[0].delta.content or "")


# -- LiteLLM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_litellm_gets_the_default_echo_with_usage(
    server: FakeModelServer, provider: str
) -> None:
    response = await litellm.acompletion(**route(server, provider), messages=user("hello there"))

    assert response.choices[0].message.content == "echo: hello there"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 3)
    assert server.last_call.request.protocol == provider
    assert not server.last_call.stream


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_litellm_streams_token_by_token(server: FakeModelServer, provider: str) -> None:
    server.add(Rule(reply="one two three"))

    stream = await litellm.acompletion(
        **route(server, provider),
        messages=user("count"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["one", " two", " three"]
    assert chunks[-1].usage.completion_tokens == 3
    assert server.last_call.stream


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_litellm_receives_tool_calls(
    server: FakeModelServer, provider: str, stream: bool
) -> None:
    server.add(Rule(containing="weather", tool_calls=[WEATHER]))

    response = await litellm.acompletion(
        **route(server, provider), messages=user("weather in Paris?"), tools=TOOLS, stream=stream
    )
    if stream:
        response = litellm.stream_chunk_builder([chunk async for chunk in response])

    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id
    assert response.choices[0].finish_reason == "tool_calls"
    assert server.last_call.request.tools[0]["function"]["name"] == "get_weather"


async def test_litellm_embeds_through_both_protocols(server: FakeModelServer) -> None:
    ollama = await litellm.aembedding(
        model="ollama/nomic-embed-text", api_base=server.url, input=["a", "b"]
    )
    hosted = await litellm.aembedding(
        model="openai/text-embedding-3-small",
        api_base=server.openai_url,
        api_key="sk-test",
        input=["a", "b"],
    )

    for response in (ollama, hosted):
        assert [d["embedding"] for d in response.data] == [fake_embedding("a"), fake_embedding("b")]
    assert server.count(kind="embed") == 2


# -- the official openai client --------------------------------------------------------------


async def test_openai_client_streams_tool_calls_in_openai_shape(
    server: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    server.add(Rule(reply="Let me check.", tool_calls=[WEATHER, ToolCall(name="now", id="c2")]))

    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=user("weather?"), tools=TOOLS, stream=True
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    functions = [(d.index, d.id, d.function) for d in deltas if d.function is not None]
    assert len(functions) == len(deltas)  # every delta carries its part of a function call
    arguments = ["".join(f.arguments or "" for n, _, f in functions if n == i) for i in (0, 1)]
    assert text == "Let me check."
    assert [(n, call_id, f.name) for n, call_id, f in functions if call_id] == [
        (0, "call_1_0", "get_weather"),
        (1, "c2", "now"),
    ]
    assert [json.loads(a) for a in arguments] == [{"city": "Paris"}, {}]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_client_gets_completions_models_and_truncation(
    server: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    server.add(Rule(model="gpt-*", reply=lambda request: request.prompt.upper()))
    server.add(Rule(model="scripted-model", reply="unused"))

    shouted = await client.chat.completions.create(model="gpt-4o-mini", messages=user("hi you"))
    cut = await client.chat.completions.create(
        model="gpt-4o", messages=user("a b c d"), max_tokens=2
    )
    models = [m.id async for m in client.models.list()]

    assert shouted.choices[0].message.content == "HI YOU"
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("A B", "length")
    assert {"gpt-4o-mini", "llama3.2", "scripted-model"} <= set(models)


async def test_openai_client_embeddings_are_deterministic(client: openai.AsyncOpenAI) -> None:
    default = await client.embeddings.create(model="text-embedding-3-small", input="same text")
    as_floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["same text"], encoding_format="float"
    )
    small = await client.embeddings.create(
        model="text-embedding-3-small", input="same text", dimensions=8
    )

    assert default.data[0].embedding == as_floats.data[0].embedding == fake_embedding("same text")
    assert small.data[0].embedding == fake_embedding("same text", 8)
    assert sum(v * v for v in small.data[0].embedding) == pytest.approx(1.0, abs=1e-6)


async def test_embedding_rules_leave_chat_alone(
    server: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    server.add(Rule(kind="embed", status=429, retry_after=0.01))

    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    chat = await client.chat.completions.create(model="gpt-4o-mini", messages=user("x"))

    assert chat.choices[0].message.content == "echo: x"


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (400, openai.BadRequestError, "context_length_exceeded"),
        (500, openai.InternalServerError, None),
        (503, openai.InternalServerError, None),
    ],
)
async def test_openai_client_sees_scripted_errors(
    server: FakeModelServer,
    client: openai.AsyncOpenAI,
    status: int,
    error: type[openai.APIStatusError],
    code: str | None,
) -> None:
    server.add(Rule(status=status, retry_after=0.25))

    with pytest.raises(error) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=user("x"))

    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.response.headers["retry-after-ms"] == "250"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, llm_errors.RateLimitError),
        (500, llm_errors.InternalServerError),
        (503, llm_errors.ServiceUnavailableError),
        (400, llm_errors.BadRequestError),
    ],
)
@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_litellm_sees_scripted_errors(
    server: FakeModelServer, provider: str, status: int, error: type[Exception]
) -> None:
    server.add(Rule(status=status))

    with pytest.raises(error):
        await litellm.acompletion(**route(server, provider), messages=user("x"), max_retries=0)


async def test_openai_context_length_error_is_recognised_by_litellm(
    server: FakeModelServer,
) -> None:
    server.add(Rule(status=400))

    with pytest.raises(llm_errors.ContextWindowExceededError):
        await litellm.acompletion(**route(server, "openai"), messages=user("x"), max_retries=0)


async def test_times_fails_twice_then_the_retrying_client_succeeds(
    server: FakeModelServer,
) -> None:
    flaky = server.add(Rule(status=503, retry_after=0.01, times=2))
    async with openai.AsyncOpenAI(
        base_url=server.openai_url, api_key="sk-test", max_retries=2
    ) as client:
        response = await client.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))

    assert response.choices[0].message.content == "echo: hi"
    assert flaky.hits == 2
    assert flaky.exhausted
    assert [c.rule is flaky for c in server.calls(containing="hi")] == [True, True, False]


# -- hangs, disconnects, shutdown ------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_hang_is_cut_off_by_the_client_timeout(
    server: FakeModelServer, provider: str
) -> None:
    server.add(Rule(hang=True))

    with pytest.raises(llm_errors.Timeout):
        await litellm.acompletion(
            **route(server, provider), messages=user("x"), timeout=0.3, max_retries=0
        )

    assert server.count() == 1


async def test_openai_client_timeout_on_hang(
    server: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    server.add(Rule(hang=True))

    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=user("x"), timeout=0.3)


async def test_openai_client_sees_a_mid_stream_disconnect_after_n_tokens(
    server: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    server.add(Rule(reply="one two three four five", disconnect_after=3))
    received: list[str] = []

    stream = await client.chat.completions.create(model="m", messages=user("x"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, received)

    assert "".join(received) == "one two three"


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_litellm_sees_a_mid_stream_disconnect(server: FakeModelServer, provider: str) -> None:
    server.add(Rule(reply="one two three four five", disconnect_after=2, token_delay=0.01))
    received: list[str] = []

    stream = await litellm.acompletion(
        **route(server, provider), messages=user("x"), stream=True, max_retries=0
    )
    with pytest.raises(MidStreamFallbackError, match="APIConnectionError"):
        await drain(stream, received)

    assert "".join(received) == "one two"


async def test_non_streamed_disconnect_is_a_connection_error(server: FakeModelServer) -> None:
    server.add(Rule(disconnect_after=0))

    with pytest.raises(llm_errors.APIConnectionError):
        await litellm.acompletion(**route(server, "ollama"), messages=user("x"), max_retries=0)


async def test_stop_ends_a_hanging_request_promptly() -> None:
    with FakeModelServer() as server:
        server.add(Rule(hang=True))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            body = {"model": "m", "messages": user("x"), "stream": False}
            pending = asyncio.create_task(http.post("/api/chat", json=body))
            await server.await_calls(1)
            started = time.monotonic()
            await asyncio.to_thread(server.stop)
            stopped_in = time.monotonic() - started
            response = await asyncio.wait_for(pending, 5)

    assert stopped_in < 3  # far below the 30 s the client would have waited
    assert response.status_code == 503
    assert "error" in response.json()


async def test_stop_ends_a_slow_stream() -> None:
    with FakeModelServer(token_delay=10) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            http.stream("POST", "/api/chat", json={"model": "m", "messages": user("a b")}) as reply,
        ):
            lines = reply.aiter_lines()
            first = json.loads(await anext(lines))
            await asyncio.to_thread(server.stop)
            with pytest.raises(httpx.RemoteProtocolError):
                await anext(lines)

    assert first["message"]["content"] == "echo:"


# -- the Ollama protocol on the wire ---------------------------------------------------------


async def test_ollama_wire_protocol(server: FakeModelServer) -> None:
    server.add(Rule(model="qwen3:0.6b", reply="fine", tool_calls=[WEATHER]))
    async with httpx.AsyncClient(base_url=server.url) as http:
        chat_lines = [
            json.loads(line)
            async for line in _lines(http, "/api/chat", model="qwen3:0.6b", messages=user("x"))
        ]
        generated = (
            await http.post(
                "/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}
            )
        ).json()
        embed = (await http.post("/api/embed", json={"model": "e", "input": "t"})).json()
        legacy = (await http.post("/api/embeddings", json={"model": "e", "prompt": "t"})).json()
        tags = (await http.get("/api/tags")).json()
        version = (await http.get("/api/version")).json()

    assert [line["done"] for line in chat_lines] == [False, False, True]
    assert chat_lines[1]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert chat_lines[-1]["eval_count"] > 0
    assert generated["response"] == "echo: hi"
    assert generated["done"]
    assert embed["embeddings"] == [legacy["embedding"]] == [fake_embedding("t")]
    assert {"llama3.2:latest", "qwen3:0.6b"} <= {m["name"] for m in tags["models"]}
    assert version["version"]


async def _lines(http: httpx.AsyncClient, path: str, **body: Any) -> AsyncIterator[str]:
    async with http.stream("POST", path, json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        async for line in response.aiter_lines():
            yield line


# -- matching and records --------------------------------------------------------------------


async def test_rules_match_in_order_and_calls_are_recorded(server: FakeModelServer) -> None:
    server.add(
        Rule(when=lambda request: request.last_role == "tool", reply="done", name="after-tool"),
        Rule(containing="plan", model="llama3.2", reply="planned", name="planner"),
    )
    ollama = route(server, "ollama")

    for _ in range(2):
        await litellm.acompletion(**ollama, messages=user("please plan a trip"))
    await litellm.acompletion(**route(server, "openai"), messages=user("please plan a trip"))
    answer = await litellm.acompletion(
        **ollama,
        messages=[
            *user("plan"),
            {"role": "assistant", "content": "", "tool_calls": [_openai_call()]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )

    assert answer.choices[0].message.content == "done"
    assert server.count(containing="plan a trip") == 3
    assert server.count(model="llama3.2", containing="plan a trip") == 2
    assert [c.rule.name if c.rule else None for c in server.calls()] == [
        "planner",
        "planner",
        None,
        "after-tool",
    ]
    assert [c.seq for c in server.calls()] == [1, 2, 3, 4]
    assert server.wait_for_calls(4) == server.calls()
    with pytest.raises(TimeoutError):
        server.wait_for_calls(5, timeout=0.05)
    server.reset()
    assert (server.calls(), server.rules) == ([], [])


def _openai_call() -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


async def test_records_are_thread_safe(server: FakeModelServer) -> None:
    def burst() -> None:
        with httpx.Client(base_url=server.openai_url) as http:
            for i in range(10):
                http.post("/chat/completions", json={"model": "m", "messages": user(f"n{i}")})

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    await server.await_calls(40, timeout=10)
    for thread in threads:
        thread.join()

    assert server.count(containing="n3") == 4
    assert sorted(c.seq for c in server.calls()) == list(range(1, 41))


async def test_latency_delays_the_first_byte(server: FakeModelServer) -> None:
    server.add(Rule(latency=0.2))

    started = time.monotonic()
    await litellm.acompletion(**route(server, "openai"), messages=user("x"))

    assert time.monotonic() - started >= 0.2


def test_runs_as_a_separate_process() -> None:
    with (
        FakeModelProcess(reply="from another process", latency=0.01) as process,
        httpx.Client(base_url=process.openai_url) as http,
    ):
        body = http.post("/chat/completions", json={"model": "m", "messages": user("x")}).json()
        pid = process.process.pid if process.process else None

    assert body["choices"][0]["message"]["content"] == "from another process"
    assert pid is not None
    assert pid != os.getpid()
