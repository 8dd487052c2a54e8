"""The chat-completions request is checked by OpenAI's rules before any model sees it.

Every refusal is a :class:`GatewayError` 400 naming the top-level parameter (``param``), the
message saying where inside it; nothing else escapes :meth:`ChatCompletionRequest.from_body`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.openai_wire import ChatCompletionRequest

USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}


def refusal(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        ChatCompletionRequest.from_body({"model": "auto", **body})
    assert caught.value.status == 400
    assert caught.value.body["type"] == "invalid_request_error"
    return caught.value


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([{"role": "user"}], "messages.0.content"),
        ([{"role": "user", "content": None}], "messages.0.content"),
        ([{"role": "system"}], "messages.0.content"),
        ([{"role": "developer", "content": None}], "messages.0.content"),
        ([USER, {"role": "assistant"}], "messages.1.content"),
        ([USER, {"role": "assistant", "content": None}], "messages.1.content"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": []}], "messages.1.content"),
        ([USER, {"role": "tool", "content": "17 C"}], "messages.1.tool_call_id"),
        ([USER, {"role": "tool", "tool_call_id": "call_1"}], "messages.1.content"),
        ([USER, {"role": "function", "content": "x"}], "messages.1.name"),
        ([{"role": "user", "content": []}], "messages.0.content"),
        ([{"role": "user", "content": 5}], "messages.0.content"),
        ([{"role": "user", "content": [{"type": "video"}]}], "messages.0.content.0"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages.0.content.0.text"),
        ([{"role": "user", "content": ["hi"]}], "messages.0.content.0"),
        ([{"role": "system", "content": [IMAGE]}], "messages.0.content.0"),
        ([{"role": "robot", "content": "x"}], "messages.0.role"),
        ([USER, {"role": "assistant", "tool_calls": [{"id": "c"}]}], "messages.1.tool_calls.0"),
    ],
)
def test_a_message_that_breaks_its_roles_rules_is_refused_naming_where(
    messages: list[Any], where: str
) -> None:
    error = refusal({"messages": messages})
    assert error.body["param"] == "messages"
    assert f"'{where}" in error.body["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"temperature": 2.1}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": "12"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": "true"}}, "stream_options"),
        ({"logprobs": "true"}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"tool_choice": "required"}, "tool_choice"),  # OpenAI's rule: only with tools
        ({"tool_choice": "none", "tools": []}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"seed": "7"}, "seed"),
        ({"user": 7}, "user"),
    ],
)
def test_a_parameter_of_the_wrong_type_or_range_is_refused_naming_it(
    params: dict[str, Any], param: str
) -> None:
    assert refusal({"messages": [USER], **params}).body["param"] == param


@pytest.mark.parametrize(
    "messages",
    [
        [USER],
        [{"role": "developer", "content": "be brief"}, USER],
        [USER, {"role": "assistant", "content": ""}],
        [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
        [
            USER,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "17 C"},
        ],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE]}],
        [{"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "17 C"}]}],
        [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}],
        [{"role": "function", "name": "f", "content": None}],
    ],
)
def test_messages_openai_accepts_are_accepted_and_passed_on_as_sent(
    messages: list[dict[str, Any]],
) -> None:
    request = ChatCompletionRequest.from_body({"model": "auto", "messages": messages})
    assert request.messages_out() == [
        {k: v for k, v in m.items() if v is not None} for m in messages
    ]


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def test_checked_parameters_go_to_the_model_as_given() -> None:
    body = {
        "model": "auto",
        "messages": [USER],
        "presence_penalty": -2,
        "frequency_penalty": 1.5,
        "logprobs": True,
        "top_logprobs": 20,
        "parallel_tool_calls": False,
        "tools": [TOOL],
        "max_completion_tokens": 9,
        "logit_bias": {"50256": -100},
    }
    params = ChatCompletionRequest.from_body(body).params()
    assert params.pop("tools") == [TOOL]
    assert params == {
        "presence_penalty": -2,
        "frequency_penalty": 1.5,
        "logprobs": True,
        "top_logprobs": 20,
        "parallel_tool_calls": False,
        "max_tokens": 9,
        "logit_bias": {"50256": -100},
    }


# -- property: whatever is wrong with a message, the answer is a 400 naming "messages" --------

_PART_NAMES = {"text", "image_url", "input_audio", "file", "refusal"}
_text = st.text(max_size=5)
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
_missing_content = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "tool"])},
    optional={"content": st.none(), "tool_call_id": _text.filter(bool), "name": _text},
)
_bare_assistant: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"role": st.just("assistant")},
    optional={"content": st.none(), "tool_calls": st.just([]), "name": _text},
)
_tool_without_id = st.fixed_dictionaries(
    {"role": st.just("tool"), "content": _text},
    optional={"tool_call_id": st.sampled_from(["", None])},
)
_bad_content = st.fixed_dictionaries(
    {
        "role": _roles,
        "content": st.integers()
        | st.booleans()
        | st.just([])
        | st.dictionaries(_text, _text, max_size=2)
        | st.lists(
            st.fixed_dictionaries({"type": _text.filter(lambda t: t not in _PART_NAMES)}),
            min_size=1,
            max_size=2,
        ),
    }
)
malformed = _missing_content | _bare_assistant | _tool_without_id | _bad_content


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    before=st.lists(st.just(USER), max_size=2),
    bad=malformed,
    after=st.lists(st.just(USER), max_size=2),
)
def test_any_malformed_message_is_a_400_naming_messages(
    before: list[dict[str, Any]], bad: dict[str, Any], after: list[dict[str, Any]]
) -> None:
    error = refusal({"messages": [*before, bad, *after]})
    assert error.body["param"] == "messages"
    assert f"'messages.{len(before)}" in error.body["message"]


@pytest.mark.parametrize(
    ("response_format", "where"),
    [
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {}}, "response_format.json_schema.name"),
        ({"type": "text", "extra": 1}, "response_format.extra"),
    ],
)
def test_a_bad_response_format_names_the_path_in_it(
    response_format: dict[str, Any], where: str
) -> None:
    # pydantic's path holds the union's tag: 'response_format.json_schema.json_schema' was said.
    refused = refusal({"messages": [USER], "response_format": response_format})
    assert refused.body["param"] == "response_format"
    assert refused.body["message"].startswith(f"invalid '{where}': ")


def test_a_bad_logit_bias_names_the_token_or_the_key_at_fault() -> None:
    too_strong = refusal({"messages": [USER], "logit_bias": {"50256": 101}})
    assert too_strong.body["param"] == "logit_bias"
    assert too_strong.body["message"].startswith("invalid 'logit_bias.50256': ")
    # A key is not a field: pydantic's '[key]' in the path was shown as one.
    not_a_token = refusal({"messages": [USER], "logit_bias": {"hello": 1}})
    assert not_a_token.body["param"] == "logit_bias"
    assert not_a_token.body["message"].startswith("invalid key 'hello' in 'logit_bias': ")


def test_a_body_checked_already_is_validated_without_reading_the_bytes_again() -> None:
    checked = {"model": "auto", "messages": [USER]}
    parsed = ChatCompletionRequest.parse(b"not even json", checked=checked)
    assert parsed.model == "auto"
    assert [m.content for m in parsed.messages] == ["hi"]
    # Unchecked, the same bytes are decoded: and refused in OpenAI's words.
    with pytest.raises(GatewayError, match="not valid JSON"):
        ChatCompletionRequest.parse(b"not even json")
    # Checked or not, the request's own rules still apply.
    with pytest.raises(GatewayError, match="unrecognized request argument"):
        ChatCompletionRequest.parse(b"", checked={**checked, "bogus": 1})
