"""The deprecated ``functions`` API is served as tools, and answered in its own form.

Clients written before tools (and the official client's ``functions=``) send ``functions`` and
``function_call``, and read the answer's ``message.function_call`` with ``finish_reason:
"function_call"``. Every provider takes tools, so the request goes on as tools (the history's
function calls and results as tool calls and tool messages) and the answer comes back as a
function call.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spine.platform.models import Completion
from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.openai_wire import ChatCompletionRequest, completion_body

USER = {"role": "user", "content": "weather in Paris?"}
WEATHER = {"name": "get_weather", "parameters": {"type": "object"}}
CLOCK = {"name": "get_time", "description": "the time now"}


def parsed(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.from_body({"model": "auto", "messages": [USER], **body})


def refused(**body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parsed(**body)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("function_call", "tool_choice"),
    [
        (None, None),
        ("auto", "auto"),
        ("none", "none"),
        ({"name": "get_time"}, {"type": "function", "function": {"name": "get_time"}}),
    ],
)
def test_functions_go_to_the_model_as_tools(function_call: Any, tool_choice: Any) -> None:
    body: dict[str, Any] = {"functions": [WEATHER, CLOCK]}
    if function_call is not None:
        body["function_call"] = function_call
    request = parsed(**body)
    params = request.params()
    assert request.uses_functions
    assert params["tools"] == [
        {"type": "function", "function": WEATHER},
        {"type": "function", "function": CLOCK},
    ]
    assert params.get("tool_choice") == tool_choice
    assert "functions" not in params and "function_call" not in params
    assert not parsed(tools=[{"type": "function", "function": WEATHER}]).uses_functions


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        ({"function_call": "auto"}, "function_call", "only allowed when functions"),
        (
            {"functions": [WEATHER], "tools": [{"type": "function", "function": CLOCK}]},
            "functions",
            "not both",
        ),
        ({"functions": [WEATHER], "function_call": {"name": "nope"}}, "function_call", "'nope'"),
        ({"functions": [WEATHER], "function_call": "required"}, "function_call", '"none"'),
        ({"functions": [WEATHER], "function_call": {"name": 5}}, "function_call", '"auto"'),
        ({"functions": [WEATHER], "function_call": {"name": "x", "a": 1}}, "function_call", ""),
        ({"functions": []}, "functions", "at least 1"),
        ({"functions": [{"name": "has space"}]}, "functions", "functions.0.name"),
        ({"functions": [{"description": "no name"}]}, "functions", "functions.0.name"),
        ({"functions": "get_weather"}, "functions", ""),
    ],
)
def test_a_bad_functions_request_is_a_400_naming_the_parameter(
    body: dict[str, Any], param: str, said: str
) -> None:
    error = refused(**body)
    assert error.body["param"] == param
    assert said in error.body["message"]


def test_the_history_of_function_calls_goes_on_as_tool_calls_and_tool_messages() -> None:
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    request = parsed(
        messages=[
            USER,
            {"role": "assistant", "content": None, "function_call": call},
            {"role": "function", "name": "get_weather", "content": "17 C"},
            {"role": "assistant", "content": "It is 17 C."},
            {"role": "user", "content": "and the time?"},
            {"role": "assistant", "content": "Let me look.", "function_call": call},
            {"role": "function", "name": "get_weather", "content": None},
        ],
        functions=[WEATHER],
    )
    out = request.messages_out()
    assert out[1] == {
        "role": "assistant",
        "tool_calls": [{"id": "call_function_1", "type": "function", "function": call}],
    }
    assert out[2] == {"role": "tool", "tool_call_id": "call_function_1", "content": "17 C"}
    assert out[3:5] == [
        {"role": "assistant", "content": "It is 17 C."},
        {"role": "user", "content": "and the time?"},
    ]
    assert out[5]["content"] == "Let me look."
    assert out[5]["tool_calls"][0]["id"] == "call_function_5"
    assert out[6] == {"role": "tool", "tool_call_id": "call_function_5", "content": ""}
    # The same conversation is the same request: its cache key does not change.
    assert request.messages_out() == out


def test_an_assistant_function_call_needs_its_name_and_arguments() -> None:
    error = refused(messages=[USER, {"role": "assistant", "function_call": {"name": "f"}}])
    assert error.body["param"] == "messages"
    assert "messages.1.function_call.arguments" in error.body["message"]


# A conversation as the deprecated API writes one: turns, each maybe a call and its result.
turns = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.sampled_from(["get_weather", "get_time"])),
    max_size=8,
)


@given(turns)
def test_every_tool_message_answers_the_one_tool_call_just_before_it(
    conversation: list[tuple[bool, bool, str]],
) -> None:
    messages: list[dict[str, Any]] = [USER]
    for calls, answered, name in conversation:
        if calls:
            messages.append(
                {"role": "assistant", "function_call": {"name": name, "arguments": "{}"}}
            )
        if answered:
            messages.append({"role": "function", "name": name, "content": "done"})
        messages.append({"role": "user", "content": "go on"})
    out = parsed(messages=messages, functions=[WEATHER, CLOCK]).messages_out()
    assert len(out) == len(messages)
    for index, message in enumerate(out):
        following = out[index + 1]["role"] if index + 1 < len(out) else None
        if message["role"] == "assistant":
            # A call without its result stays as sent: a tool call must be answered at once.
            assert ("function_call" in message) == (following != "tool")
        if message["role"] == "tool":
            before = out[index - 1]
            assert before["role"] == "assistant"
            assert message["tool_call_id"] == before["tool_calls"][0]["id"]
        if message["role"] == "function":  # a result with no call before it: as it was sent
            assert out[index - 1]["role"] != "assistant"
    ids = [m["tool_calls"][0]["id"] for m in out if "tool_calls" in m]
    assert len(ids) == len(set(ids))


def answer(**fields: Any) -> Completion:
    return Completion(
        text=fields.pop("text", ""),
        model="m",
        provider="p",
        input_tokens=3,
        output_tokens=2,
        **fields,
    )


def test_an_answer_to_a_functions_request_is_a_function_call() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    body = completion_body(answer(tool_calls=calls), completion_id="x", created=0, functions=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": "{}"}
    assert choice["message"]["content"] is None
    assert "tool_calls" not in choice["message"]
    as_tools = completion_body(answer(tool_calls=calls), completion_id="x", created=0)
    assert as_tools["choices"][0]["message"]["tool_calls"] == calls
    assert as_tools["choices"][0]["finish_reason"] == "tool_calls"
    text = completion_body(answer(text="hi"), completion_id="x", created=0, functions=True)
    assert text["choices"][0]["finish_reason"] == "stop"
    assert "function_call" not in text["choices"][0]["message"]
