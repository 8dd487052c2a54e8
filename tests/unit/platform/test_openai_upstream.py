"""The openai SDK path: its errors become the SpineErrors, and causes, LiteLLM's path gives."""

from __future__ import annotations

import base64
import json
import struct

import httpx2
import openai
import pytest

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    SpineError,
    TransientFailure,
)
from spine.platform.models import ChatRequest, ProviderTarget
from spine.platform.models.openai_upstream import (
    OpenAIUpstream,
    _chat_body,
    _floats,
    _translate,
    base_url,
    wire_model,
)
from spine.platform.models.openai_wire import GatewayError
from spine.platform.settings import load_settings

# httpx2, not httpx: the openai SDK installed here is built on it, as are its errors.
REQUEST = httpx2.Request("POST", "http://upstream.test/v1/chat/completions")
SECRET = "sk-upstream-secret"
TARGET = ProviderTarget(
    provider="openai-compatible",
    model="m",
    kwargs={"api_base": "http://upstream.test/v1", "api_key": SECRET},
)


def status(kind: type[openai.APIStatusError], code: int, body: object = None) -> Exception:
    # Shaped as the SDK shapes it: the message carries the error body.
    response = httpx2.Response(code, request=REQUEST)
    return kind(f"Error code: {code} - {body} (key {SECRET})", response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "kind", "cause", "http"),
    [
        (openai.APITimeoutError(request=REQUEST), TransientFailure, "Timeout", 502),
        (openai.APIConnectionError(request=REQUEST), TransientFailure, "APIConnectionError", 502),
        (status(openai.RateLimitError, 429), TransientFailure, "RateLimitError", 429),
        (status(openai.InternalServerError, 500), TransientFailure, "InternalServerError", 502),
        (status(openai.InternalServerError, 502), TransientFailure, "BadGatewayError", 502),
        (
            status(openai.InternalServerError, 503),
            TransientFailure,
            "ServiceUnavailableError",
            502,
        ),
        (
            status(
                openai.BadRequestError,
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
        (status(openai.BadRequestError, 400), PermanentFailure, "BadRequestError", 400),
        (
            status(openai.UnprocessableEntityError, 422),
            PermanentFailure,
            "UnprocessableEntityError",
            400,
        ),
        (status(openai.NotFoundError, 404), PermanentFailure, "NotFoundError", 404),
        (status(openai.AuthenticationError, 401), ProviderNotConfigured, None, 503),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_sdk_errors_are_translated_like_litellm_errors(
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


def test_vectors_are_read_as_base64_or_as_the_floats_a_server_sent_instead() -> None:
    vector = [0.5, -1.25, 3.0]
    packed = base64.b64encode(struct.pack("<3f", *vector)).decode()
    assert _floats(packed) == vector
    assert _floats([1, 2.5]) == [1.0, 2.5]


# -- answers read as JSON (not into the SDK's types) ---------------------------------------------


def _upstream_answering(handler: object) -> tuple[OpenAIUpstream, ChatRequest]:
    upstream = OpenAIUpstream(load_settings(_env_file=None))
    transport = httpx2.MockTransport(handler)  # type: ignore[arg-type]
    upstream._clients[(base_url(TARGET), SECRET)] = openai.AsyncOpenAI(
        api_key=SECRET,
        base_url=base_url(TARGET),
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    return upstream, ChatRequest(messages=[{"role": "user", "content": "hi"}])


def _sse(*events: object) -> httpx2.Response:
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, text=body)


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def test_a_stream_is_read_into_deltas_text_tool_calls_and_usage() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "add", "arguments": '{"a":'}}
    events = [
        _chunk({"role": "assistant", "content": "Sum"}),
        _chunk({"content": "ming"}),
        _chunk({"tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        "[DONE]",
    ]
    upstream, request = _upstream_answering(lambda _request: _sse(*events))
    deltas = [d async for d in upstream.stream(TARGET, request)]
    assert "".join(d.text for d in deltas) == "Summing"
    parts = [p for d in deltas for p in d.tool_calls]
    assert parts[0] == {"index": 0, "id": "c1", "type": "function", "function": call["function"]}
    assert parts[1] == {"index": 0, "function": {"arguments": "1}"}}
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert (deltas[-1].input_tokens, deltas[-1].output_tokens) == (7, 3)


async def test_an_error_event_in_a_stream_fails_the_call_without_the_key() -> None:
    events = [_chunk({"content": "a"}), {"error": {"message": f"overloaded ({SECRET})"}}]
    upstream, request = _upstream_answering(lambda _request: _sse(*events))
    seen: list[str] = []
    with pytest.raises(PermanentFailure) as failed:
        async for delta in upstream.stream(TARGET, request):
            seen.append(delta.text)
    assert seen == ["a"]
    assert "overloaded" in failed.value.message and SECRET not in failed.value.message


async def test_a_stream_of_broken_json_fails_the_call() -> None:
    upstream, request = _upstream_answering(lambda _request: _sse("{not json"))
    with pytest.raises(SpineError):
        _ = [d async for d in upstream.stream(TARGET, request)]


async def test_a_whole_answer_is_read_with_its_tool_calls_and_usage() -> None:
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
    upstream, request = _upstream_answering(lambda _request: httpx2.Response(200, json=answer))
    completion = await upstream.call(TARGET, request)
    assert completion.text == ""
    assert completion.tool_calls == [
        {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert (completion.input_tokens, completion.output_tokens) == (5, 2)
    assert completion.finish_reason == "tool_calls"
    no_choice, request = _upstream_answering(lambda _request: httpx2.Response(200, json={}))
    with pytest.raises(PermanentFailure, match="without a choice"):
        await no_choice.call(TARGET, request)
