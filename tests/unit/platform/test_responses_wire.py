"""The Responses API read as a chat call, and the answer written back as OpenAI writes it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.platform.errors import ServiceUnavailable
from spine.platform.models import Completion, CompletionDelta
from spine.platform.models.openai_errors import GatewayError
from spine.platform.models.responses_wire import (
    ResponseEvents,
    ResponsesRequest,
    answer_message,
    response_body,
)

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def asked(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.from_body({"model": "auto", "input": "hi", **body})


def refused(**body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        asked(**body).to_chat()
    assert caught.value.status == 400
    return caught.value


def test_the_request_becomes_the_chat_call_it_asks_for() -> None:
    chat = asked(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "look"}, IMAGE]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "17 C"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "18 C"}],
            },
        ],
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=64,
        temperature=0.5,
        reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "W", "schema": {"type": "object"}}},
        metadata={"run": "7"},
        store=True,
        spine_strategy="cheapest",
    ).to_chat()
    messages = chat.messages_out()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": IMAGE["image_url"], "detail": "low"}},
    ]
    # The two calls made together are one assistant turn, after the text of that turn.
    assert messages[2]["content"] == [{"type": "text", "text": "A cat."}]
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "17 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "18 C"},
    ]
    params = chat.params()
    assert params["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    assert params["tool_choice"] == "required"
    assert params["max_tokens"] == 64
    assert params["temperature"] == 0.5
    assert params["reasoning_effort"] == "low"
    assert params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "W", "schema": {"type": "object"}},
    }
    assert "metadata" not in params and "store" not in params
    assert chat.spine_strategy == "cheapest"


IMAGE = {"type": "input_image", "image_url": "https://example.test/cat.png", "detail": "low"}


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        ({"conversation": "conv_1"}, "conversation", "'previous_response_id'"),
        ({"background": True}, "background", "not supported"),
        ({"previous_response_id": ""}, "previous_response_id", "at least 1"),
        ({"tools": [{"type": "file_search"}]}, "tools", "'tools.0.type'"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input", "'input.0'"),
        ({"input": [{"role": "user"}]}, "input", "'input.0.content'"),
        ({"input": [{"role": "system", "content": [IMAGE]}]}, "input", "'input.0.content.0'"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input", "'input.0.call_id'"),
        ({"input": {"role": "user"}}, "input", "a string or an array"),
        ({"tool_choice": {"type": "function", "name": "x"}}, "tool_choice", "only allowed"),
        ({"tools": [TOOL], "tool_choice": "always"}, "tool_choice", '"required"'),
        ({"text": {"format": {"type": "json_schema", "name": "W"}}}, "text", "'schema'"),
        ({"reasoning": {"effort": "huge"}}, "reasoning", "'reasoning.effort'"),
        ({"top_p": 2}, "top_p", "'top_p'"),
        ({"unknown": 1}, "unknown", "unrecognized"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_parameter(
    body: dict[str, Any], param: str, said: str
) -> None:
    error = refused(**body)
    assert error.body["param"] == param
    assert said in error.body["message"]


def test_a_whole_answer_is_a_response_with_its_items() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    answer = Completion(
        text="", model="m", provider="p", input_tokens=5, output_tokens=2, tool_calls=calls
    )
    body = response_body(answer, asked(tools=[TOOL]), response_id="resp_1", created=9)
    assert [item["type"] for item in body["output"]] == ["function_call", "function_call"]
    assert [item["call_id"] for item in body["output"]] == ["call_a", "call_b"]
    assert body["output"][0]["arguments"] == '{"x":1}'
    assert body["usage"]["total_tokens"] == 7
    assert (body["status"], body["created_at"], body["model"]) == ("completed", 9, "m")
    cut = Completion(text="one two", model="m", provider="p", finish_reason="length")
    cut_body = response_body(cut, asked(), response_id="resp_2", created=9)
    assert cut_body["status"] == "incomplete"
    assert cut_body["output"][0]["content"][0]["text"] == "one two"


# A streamed answer: pieces of text and of up to three tool calls, in any interleaving.
pieces = st.lists(
    st.one_of(
        st.text(min_size=1, max_size=5).map(lambda text: ("text", text)),
        st.tuples(st.integers(0, 2), st.text(max_size=5)).map(lambda call: ("call", call)),
    ),
    max_size=20,
)


@given(pieces)
def test_streamed_events_open_each_item_before_its_pieces_and_close_it_before_the_end(
    stream: list[tuple[str, Any]],
) -> None:
    events = ResponseEvents(asked(), response_id="resp_k", created=1, model="m")
    frames = events.opening()
    text, named = "", set()
    arguments: dict[int, str] = {}
    for kind, value in stream:
        if kind == "text":
            text += value
            frames += events.delta(CompletionDelta(text=value))
        else:
            index, piece = value
            function: dict[str, Any] = {"arguments": piece}
            call: dict[str, Any] = {"index": index, "function": function}
            if index not in named:  # the first piece of a call names it
                named.add(index)
                call["id"] = f"call_{index}"
                function["name"] = f"f{index}"
            arguments[index] = arguments.get(index, "") + piece
            frames += events.delta(CompletionDelta(tool_calls=[call]))
    frames += asyncio.run(events.ended(3, 4))
    sent = [
        json.loads(line[6:]) for line in frames.decode().splitlines() if line.startswith("data: ")
    ]
    assert [event["sequence_number"] for event in sent] == list(range(len(sent)))
    assert sent[0]["type"] == "response.created" and sent[-1]["type"] == "response.completed"
    opened: set[int] = set()
    closed: set[int] = set()
    for event in sent[1:-1]:
        at = event.get("output_index")
        if event["type"] == "response.output_item.added":
            assert at not in opened
            opened.add(at)
        elif event["type"] == "response.output_item.done":
            closed.add(at)
        elif at is not None:
            assert at in opened and at not in closed  # a piece of an open item
    assert opened == closed == set(range(len(sent[-1]["response"]["output"])))
    final = sent[-1]["response"]
    messages = [item for item in final["output"] if item["type"] == "message"]
    calls = {item["call_id"]: item for item in final["output"] if item["type"] == "function_call"}
    # The message is there when there is text, or nothing else (an empty answer).
    assert len(messages) == (1 if text or not arguments else 0)
    assert "".join(m["content"][0]["text"] for m in messages) == text
    assert {call_id: call["arguments"] for call_id, call in calls.items()} == {
        f"call_{index}": joined for index, joined in arguments.items()
    }
    assert {call["name"] for call in calls.values()} == {f"f{index}" for index in arguments}
    assert final["usage"]["total_tokens"] == 7


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
# Values shaped like the API's, so that most of them reach the checks past the first.
texts = st.text(max_size=4)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    optional={"text": texts | json_values, "image_url": texts, "refusal": texts},
)
items = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": texts | st.lists(parts, max_size=2) | json_values,
        },
        optional={"type": st.just("message")},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": texts, "name": texts, "arguments": texts},
        optional={"id": texts | json_values, "status": json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": texts},
        optional={"output": texts | st.lists(parts, max_size=2) | json_values},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "x"])}),
    json_values,
)
formats = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema", "x"])},
    optional={"name": st.sampled_from(["W", "bad name"]), "schema": json_values},
)
bodies = st.fixed_dictionaries(
    {"model": st.just("auto"), "input": texts | st.lists(items, min_size=1, max_size=4)},
    optional={
        "instructions": texts,
        "tools": st.lists(st.just(TOOL) | json_values, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"])
        | st.just({"type": "function", "name": "get_weather"})
        | json_values,
        "text": st.fixed_dictionaries({"format": formats}),
        "max_output_tokens": st.integers(-1, 100),
        "metadata": st.dictionaries(st.text(max_size=4), texts | json_values, max_size=2),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "x"])}),
        "input_extra": json_values,
    },
)


@settings(max_examples=300)
@given(bodies)
def test_any_body_is_a_chat_call_or_a_400_never_another_error(body: dict[str, Any]) -> None:
    try:
        chat = ResponsesRequest.from_body(body).to_chat()
    except GatewayError as exc:
        refusal = exc
    else:
        assert chat.messages_out()
        hypothesis.event("accepted")
        return
    assert refusal.status == 400
    assert refusal.body["message"]
    hypothesis.event(f"refused: {refusal.body['param']}")


def test_a_kept_conversation_ends_with_the_answer_as_the_assistants_message() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    answer = Completion(text="Let me look.", model="m", provider="p", tool_calls=calls)
    output = response_body(answer, asked(tools=[TOOL]), response_id="resp_3", created=1)["output"]
    assert answer_message(output) == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": calls,
    }
    only_calls = response_body(
        Completion(text="", model="m", provider="p", tool_calls=calls),
        asked(tools=[TOOL]),
        response_id="resp_4",
        created=1,
    )["output"]
    assert answer_message(only_calls)["content"] is None


def test_a_stream_that_cannot_be_kept_ends_failed_not_completed() -> None:
    async def unkept(body: dict[str, Any]) -> None:
        raise ServiceUnavailable("database unavailable")

    events = ResponseEvents(asked(), response_id="resp_5", created=1, model="m", keep=unkept)
    frames = events.opening() + events.delta(CompletionDelta(text="hi"))
    frames += asyncio.run(events.ended(1, 1))
    kinds = [line[7:] for line in frames.decode().splitlines() if line.startswith("event: ")]
    assert kinds[-2:] == ["response.output_item.done", "response.failed"]
    assert "response.completed" not in kinds


def test_openais_bookkeeping_is_accepted_and_not_sent_on() -> None:
    bookkeeping = {
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "top_logprobs": 2,
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "service_tier": "auto",
        "safety_identifier": "u1",
        "max_tool_calls": 3,
        "store": False,
    }
    params = asked(**bookkeeping).to_chat().params()
    assert not set(bookkeeping) & set(params)
