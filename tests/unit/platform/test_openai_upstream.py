"""The openai SDK path: its errors become the SpineErrors, and causes, LiteLLM's path gives."""

from __future__ import annotations

import base64
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
