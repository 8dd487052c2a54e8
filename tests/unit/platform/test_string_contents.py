"""Content-part arrays for servers that take string content only, and their refusals.

llama-cpp-python's server (the embedded ``local`` model) fails on an array of parts with a
500, and answers a body it refuses with a 500 too: the first is joined into a string before the
call, the second is a refusal that moves no breaker.
"""

from __future__ import annotations

from typing import Any

import pytest

from spine.platform.errors import BadRequest, PermanentFailure, TransientFailure
from spine.platform.models import ChatRequest, ProviderTarget
from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.openai_upstream import (
    UpstreamStatusError,
    _chat_body,
    _translate,
    string_contents,
)
from spine.platform.settings import load_settings

LOCAL = ProviderTarget(
    provider="local",
    model="smollm2-135m",
    kwargs={"api_base": "http://127.0.0.1:1/v1", "api_key": "none"},
)
COMPAT = ProviderTarget(
    provider="openai-compatible",
    model="m",
    kwargs={"api_base": "http://upstream.test/v1", "api_key": "k"},
)


def text(*texts: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": t} for t in texts]


def test_text_parts_are_joined_into_one_string_by_newlines() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text("hi", "there"), "name": "ann"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "tool", "tool_call_id": "c", "content": text("17 C")},
    ]
    assert string_contents(messages, model="m") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi\nthere", "name": "ann"},
        {"role": "assistant", "content": "no"},
        {"role": "tool", "tool_call_id": "c", "content": "17 C"},
    ]
    # The caller's messages are left as they were (the response cache keys on them).
    assert messages[1]["content"] == text("hi", "there")


def test_messages_without_arrays_are_passed_as_they_are() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": []},
    ]
    assert string_contents(messages, model="m") is messages


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
def test_a_part_that_is_not_text_is_a_400_naming_messages(part: dict[str, Any]) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [*text("b"), part]},
    ]
    with pytest.raises(BadRequest) as caught:
        string_contents(messages, model="smollm2-135m")
    assert caught.value.field == "messages"
    assert "messages.1.content.1" in caught.value.message
    error = GatewayError.of(caught.value)
    assert (error.status, error.body["param"]) == (400, "messages")


def test_only_the_local_model_gets_its_parts_joined() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": text("hi", "you")}])
    assert _chat_body(LOCAL, request, {})["messages"] == [{"role": "user", "content": "hi\nyou"}]
    assert _chat_body(COMPAT, request, {})["messages"] == request.messages


@pytest.mark.parametrize(
    "body",
    [
        "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages', 0, 'content')}",
        "{'error': {'message': '10 validation errors:\\n  {...}', 'type': 'internal_server_error'}}",
    ],
)
def test_a_500_that_is_the_servers_refusal_of_the_body_is_a_400_that_moves_no_breaker(
    body: str,
) -> None:
    settings = load_settings(_env_file=None)
    exc = UpstreamStatusError(500, f"Error code: 500 - {body}")
    translated = _translate(exc, LOCAL, settings)
    assert type(translated) is PermanentFailure
    assert not translated.retryable  # the router counts it as an answer: the model is up
    assert translated.details["cause"] == "UnprocessableEntityError"
    error = GatewayError.of(translated)
    assert (error.status, error.body["code"]) == (400, "provider_rejected_request")


def test_any_other_500_is_still_an_outage() -> None:
    settings = load_settings(_env_file=None)
    exc = UpstreamStatusError(500, "Error code: 500 - can only concatenate str to str")
    assert isinstance(_translate(exc, LOCAL, settings), TransientFailure)
