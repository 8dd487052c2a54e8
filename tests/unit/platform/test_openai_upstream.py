"""The OpenAI-protocol path: its failures become the SpineErrors, and causes, LiteLLM's path
gives; answers (whole, streamed, embeddings) are read from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    ServiceUnavailable,
    SpineError,
    TransientFailure,
)
from spine.platform.models import ChatRequest, EmbeddingRequest, ProviderTarget
from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.openai_upstream import (
    OpenAIUpstream,
    UpstreamStatusError,
    _chat_body,
    _floats,
    _proxy_for,
    _translate,
    base_url,
    wire_model,
)
from spine.platform.settings import load_settings

SECRET = "sk-upstream-secret"
TARGET = ProviderTarget(
    provider="openai-compatible",
    model="m",
    kwargs={"api_base": "http://upstream.test/v1", "api_key": SECRET},
)


def status(code: int, body: object = None) -> Exception:
    # Shaped as the adapter shapes it: the message carries the error body (and here the key).
    return UpstreamStatusError(code, f"Error code: {code} - {body} (key {SECRET})")


@pytest.mark.parametrize(
    ("exc", "kind", "cause", "http"),
    [
        (TimeoutError(), TransientFailure, "Timeout", 502),
        (aiohttp.ServerTimeoutError("read"), TransientFailure, "Timeout", 502),
        (aiohttp.ServerDisconnectedError(), TransientFailure, "APIConnectionError", 502),
        (aiohttp.ClientPayloadError("cut"), TransientFailure, "APIConnectionError", 502),
        (status(429), TransientFailure, "RateLimitError", 429),
        (status(500), TransientFailure, "InternalServerError", 502),
        (status(502), TransientFailure, "BadGatewayError", 502),
        (status(503), TransientFailure, "ServiceUnavailableError", 502),
        (status(408), TransientFailure, "Timeout", 502),
        (
            status(
                400,
                {
                    "message": "This model's maximum context length is 8192 tokens.",
                    "code": "context_length_exceeded",
                },
            ),
            ContextWindowExceeded,
            "ContextWindowExceededError",
            400,
        ),
        (status(400), PermanentFailure, "BadRequestError", 400),
        (status(422), PermanentFailure, "UnprocessableEntityError", 400),
        (status(404), PermanentFailure, "NotFoundError", 404),
        (status(418), PermanentFailure, "APIStatusError", 502),
        (status(401), ProviderNotConfigured, None, 503),
        (UpstreamStatusError(None, "overloaded"), PermanentFailure, "APIError", 502),
        (json.JSONDecodeError("bad", "{", 1), PermanentFailure, "JSONDecodeError", 502),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_failures_are_translated_like_litellm_errors(
    exc: Exception, kind: type[SpineError], cause: str | None, http: int
) -> None:
    settings = load_settings(_env_file=None)
    translated = _translate(exc, TARGET, settings)
    assert type(translated) is kind
    assert isinstance(translated, SpineError)
    assert translated.details.get("cause") == cause
    assert translated.details.get("provider") == "openai-compatible"
    assert SECRET not in translated.message
    assert GatewayError.of(translated).status == http


def test_unset_parameters_stay_unset_and_unknown_ones_go_in_the_body() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    params = {"temperature": 0.2, "seed": None, "top_k": 5, "user": "u"}
    body = _chat_body(TARGET, request, params)
    # top_k has no SDK argument: sent in the body as LiteLLM would.
    assert body == {
        "temperature": 0.2,
        "top_k": 5,
        "user": "u",
        "model": "m",
        "messages": request.messages,
    }


@pytest.mark.parametrize(
    ("model", "api_base", "wire", "base"),
    [
        ("llama3.2", "http://127.0.0.1:11434", "llama3.2", "http://127.0.0.1:11434/v1"),
        ("ollama/llama3.2", "http://o:11434/", "llama3.2", "http://o:11434/v1"),
        ("ollama_chat/qwen3:4b", "http://o:11434/v1", "qwen3:4b", "http://o:11434/v1"),
    ],
)
def test_ollama_is_called_at_its_openai_routes_by_its_own_model_name(
    model: str, api_base: str, wire: str, base: str
) -> None:
    target = ProviderTarget(provider="ollama", model=model, kwargs={"api_base": api_base})
    assert (wire_model(target), base_url(target)) == (wire, base)


def test_other_providers_keep_their_model_name_and_base() -> None:
    target = ProviderTarget(
        provider="openai-compatible", model="ollama/x", kwargs={"api_base": "http://h/v1/"}
    )
    assert (wire_model(target), base_url(target)) == ("ollama/x", "http://h/v1/")


def test_the_proxy_the_environment_names_is_used_unless_no_proxy_covers_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert _proxy_for("https://api.openai.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "ollama.internal,127.0.0.1")
    assert _proxy_for("https://api.openai.com/v1/chat/completions") == (
        "http://proxy.internal:3128"
    )
    assert _proxy_for("https://ollama.internal/v1/embeddings") is None
    assert _proxy_for("http://127.0.0.1:11434/v1/chat/completions") is None
    assert _proxy_for("http://plain.example/v1/chat/completions") is None  # HTTPS_PROXY only


def test_vectors_are_read_as_base64_or_as_the_floats_a_server_sent_instead() -> None:
    vector = [0.5, -1.25, 3.0]
    packed = base64.b64encode(struct.pack("<3f", *vector)).decode()
    assert _floats(packed) == vector
    assert _floats([1, 2.5]) == [1.0, 2.5]


# -- answers read from a real server ---------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[ProviderTarget]]]:
    """Serve one handler at ``/v1/chat/completions`` and ``/v1/embeddings`` on 127.0.0.1."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> ProviderTarget:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        app.router.add_post("/v1/embeddings", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return ProviderTarget(
            provider="openai-compatible",
            model="m",
            kwargs={"api_base": f"http://127.0.0.1:{port}/v1", "api_key": SECRET},
        )

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    adapter = OpenAIUpstream(load_settings(_env_file=None))
    yield adapter
    await adapter.close()


REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])


def _sse_handler(*events: object, pieces: int = 1) -> Handler:
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)

    async def handler(request: web.Request) -> web.StreamResponse:
        sent = await request.json()
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        assert request.headers["Authorization"] == f"Bearer {SECRET}"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        data = body.encode()
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):  # events split anywhere, as TCP may
            await response.write(data[start : start + step])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    return handler


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@pytest.mark.parametrize("pieces", [1, 7, 500])
async def test_a_stream_is_read_into_deltas_text_tool_calls_and_usage(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream, pieces: int
) -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "add", "arguments": '{"a":'}}
    events = [
        _chunk({"role": "assistant", "content": "Sum"}),
        _chunk({"content": "ming ✓"}),
        _chunk({"tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        "[DONE]",
    ]
    target = await serve(_sse_handler(*events, pieces=pieces))
    deltas = [d async for d in upstream.stream(target, REQUEST)]
    assert "".join(d.text for d in deltas) == "Summing ✓"
    parts = [p for d in deltas for p in d.tool_calls]
    assert parts[0] == {"index": 0, "id": "c1", "type": "function", "function": call["function"]}
    assert parts[1] == {"index": 0, "function": {"arguments": "1}"}}
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert (deltas[-1].input_tokens, deltas[-1].output_tokens) == (7, 3)


async def test_a_chunk_longer_than_aiohttps_line_limit_is_read_whole(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    arguments = json.dumps({"text": "x" * 300_000})  # one tool call's arguments in one event
    call = {"index": 0, "id": "c1", "function": {"name": "save", "arguments": arguments}}
    target = await serve(_sse_handler(_chunk({"tool_calls": [call]}, "tool_calls"), "[DONE]"))
    deltas = [d async for d in upstream.stream(target, REQUEST)]
    assert deltas[0].tool_calls[0]["function"]["arguments"] == arguments


async def test_an_error_event_in_a_stream_fails_the_call_without_the_key(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    events = [_chunk({"content": "a"}), {"error": {"message": f"overloaded ({SECRET})"}}]
    target = await serve(_sse_handler(*events))
    seen: list[str] = []
    with pytest.raises(PermanentFailure) as failed:
        async for delta in upstream.stream(target, REQUEST):
            seen.append(delta.text)
    assert seen == ["a"]
    assert "overloaded" in failed.value.message and SECRET not in failed.value.message


async def test_a_stream_of_broken_json_fails_the_call(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    target = await serve(_sse_handler("{not json"))
    with pytest.raises(PermanentFailure):
        _ = [d async for d in upstream.stream(target, REQUEST)]


async def test_a_stream_answered_as_json_fails_with_the_reason(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"choices": []})

    target = await serve(handler)
    with pytest.raises(PermanentFailure, match="not text/event-stream"):
        _ = [d async for d in upstream.stream(target, REQUEST)]


@pytest.mark.parametrize(
    ("code", "kind", "cause"),
    [
        (503, TransientFailure, "ServiceUnavailableError"),
        (429, TransientFailure, "RateLimitError"),
        (400, PermanentFailure, "BadRequestError"),
        (401, ProviderNotConfigured, None),
    ],
)
async def test_an_error_status_fails_whole_and_streamed_calls_alike(
    serve: Callable[[Handler], Awaitable[ProviderTarget]],
    upstream: OpenAIUpstream,
    code: int,
    kind: type[SpineError],
    cause: str | None,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"no ({SECRET})"}}, status=code)

    target = await serve(handler)
    with pytest.raises(kind) as whole:
        await upstream.call(target, REQUEST)
    with pytest.raises(kind) as streamed:
        _ = [d async for d in upstream.stream(target, REQUEST)]
    for failed in (whole.value, streamed.value):
        assert failed.details.get("cause") == cause
        assert SECRET not in failed.message


async def test_a_refused_connection_and_a_silent_server_are_transient(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    target = await serve(silent)
    quick = ChatRequest(messages=REQUEST.messages, timeout=0.2)
    with pytest.raises(TransientFailure) as slow:
        await upstream.call(target, quick)
    release.set()
    assert slow.value.details.get("cause") == "Timeout"
    closed = ProviderTarget(
        provider="openai-compatible", model="m", kwargs={"api_base": "http://127.0.0.1:9/v1"}
    )
    with pytest.raises(TransientFailure) as refused:
        await upstream.call(closed, REQUEST)
    assert refused.value.details.get("cause") == "APIConnectionError"


async def test_a_whole_answer_is_read_with_its_tool_calls_and_usage(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    answer = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c9",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }

    async def handler(request: web.Request) -> web.Response:
        sent = await request.json()
        assert sent == {"model": "m", "messages": REQUEST.messages}
        return web.json_response(answer)

    completion = await upstream.call(await serve(handler), REQUEST)
    assert completion.text == ""
    assert completion.tool_calls == [
        {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert (completion.input_tokens, completion.output_tokens) == (5, 2)
    assert completion.finish_reason == "tool_calls"

    async def empty(request: web.Request) -> web.Response:
        return web.json_response({})

    with pytest.raises(PermanentFailure, match="without a choice"):
        await upstream.call(await serve(empty), REQUEST)


async def test_embeddings_come_back_in_input_order_from_base64(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    vectors = {0: [0.5, 1.0], 1: [-2.0, 0.25]}

    async def handler(request: web.Request) -> web.Response:
        sent = await request.json()
        assert sent["encoding_format"] == "base64" and sent["input"] == ["a", "b"]
        rows = [
            {"index": i, "embedding": base64.b64encode(struct.pack("<2f", *vectors[i])).decode()}
            for i in (1, 0)  # out of order, as a server may answer
        ]
        return web.json_response({"data": rows, "usage": {"prompt_tokens": 4}})

    embedding = await upstream.embed(await serve(handler), EmbeddingRequest(texts=["a", "b"]))
    assert embedding.vectors == [vectors[0], vectors[1]]
    assert embedding.input_tokens == 4


def test_a_backing_service_away_and_models_cooling_down_are_told_apart() -> None:
    # A database outage once answered code models_unavailable, as if every model had failed.
    database = GatewayError.of(ServiceUnavailable("the database is unreachable"))
    cooling = GatewayError.of(TransientFailure("every model that could answer is cooling down"))
    assert (database.status, database.body["code"]) == (503, "service_unavailable")
    assert (cooling.status, cooling.body["code"]) == (503, "models_unavailable")


def test_the_local_models_server_away_is_not_advice_to_configure_a_model() -> None:
    local = ProviderTarget(
        provider="local", model="smollm2-135m", kwargs={"api_base": "http://127.0.0.1:1/v1"}
    )
    settings = load_settings(_env_file=None)
    translated = _translate(aiohttp.ClientConnectionError("reset by peer"), local, settings)
    assert "restarts it" in str(translated)
    assert "install" not in str(translated)
    elsewhere = _translate(aiohttp.ClientConnectionError("refused"), TARGET, settings)
    assert "GENAI_OLLAMA_URL" in str(elsewhere)
    # Reached, then cut off: the server is configured and answered; no advice to configure it.
    for reached in (aiohttp.ClientPayloadError("not completed"), aiohttp.ServerDisconnectedError()):
        assert "GENAI_" not in str(_translate(reached, TARGET, settings))


# Escaped, as json.dumps writes them: a NUL and a lone surrogate are valid JSON, not storable.
ODD = "a\x00b \ud800c 😀"
MENDED = "a\ufffdb \ufffdc 😀"


async def test_what_an_answer_holds_that_cannot_be_stored_is_mended(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    call = {"id": "c\x00", "type": "function", "function": {"name": "f\ud800", "arguments": ODD}}
    answer = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": ODD, "tool_calls": [call]},
            }
        ]
    }

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    completion = await upstream.call(await serve(handler), REQUEST)
    assert completion.text == MENDED
    assert completion.tool_calls == [
        {"id": "c\ufffd", "type": "function", "function": {"name": "f\ufffd", "arguments": MENDED}}
    ]

    streamed = [_chunk({"content": ODD}), _chunk({"tool_calls": [{"index": 0, **call}]}), "[DONE]"]
    deltas = [d async for d in upstream.stream(await serve(_sse_handler(*streamed)), REQUEST)]
    assert "".join(d.text for d in deltas) == MENDED
    assert deltas[1].tool_calls[0]["function"] == {"name": "f\ufffd", "arguments": MENDED}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("encoding", ["base64", "floats"])
async def test_a_vector_holding_a_number_that_is_not_finite_fails_the_call(
    serve: Callable[[Handler], Awaitable[ProviderTarget]],
    upstream: OpenAIUpstream,
    bad: float,
    encoding: str,
) -> None:
    vector = [0.5, bad]

    async def handler(request: web.Request) -> web.Response:
        packed = base64.b64encode(struct.pack("<2f", *vector)).decode()
        row = {"index": 0, "embedding": packed if encoding == "base64" else vector}
        # json.dumps writes NaN and Infinity, as some servers do; json.loads reads them.
        body = json.dumps({"data": [row], "usage": {"prompt_tokens": 1}})
        return web.Response(body=body.encode(), content_type="application/json")

    with pytest.raises(PermanentFailure, match="not finite"):
        await upstream.embed(await serve(handler), EmbeddingRequest(texts=["a"]))


async def test_an_error_body_that_cannot_be_stored_is_mended_in_the_message(
    serve: Callable[[Handler], Awaitable[ProviderTarget]], upstream: OpenAIUpstream
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, body=b"bad \x00 request \xff here")

    with pytest.raises(PermanentFailure) as refused:
        await upstream.call(await serve(handler), REQUEST)
    assert "bad \ufffd request \ufffd here" in refused.value.message
