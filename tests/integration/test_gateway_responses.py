"""OpenAI's Responses API (``POST /v1/responses``), driven by the official ``openai`` client.

It is served as a chat call through the router: the fake model server (Ollama and OpenAI, as
in ``test_gateway.py``) sees a chat-completions request, and the client reads a response.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from support.fake_models import FakeModelServer, Rule, ToolCall
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

LOCAL, CLOUD = "llama3.2", "gpt-4o-mini"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    async with running_platform(
        services,
        pg_url,
        models,
        openai_api_key="sk-test-dummy",
        openai_base_url=models.openai_url,
        fallback_chain="ollama,openai",
    ) as running:
        yield running


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_a_response_is_a_routed_chat_call(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    raw = await client.responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="hello responses", max_output_tokens=50
    )
    response = raw.parse()
    assert response.output_text == "echo: hello responses"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.model == model
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    assert raw.headers["x-spine-model"] == model
    assert raw.headers["x-spine-cache"] == "miss"
    sent = models.last_call.request
    assert sent.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello responses"},
    ]
    assert sent.body["max_tokens"] == 50

    # The response is rated by its id, as a chat completion is.
    rated = await spine.client.post(
        "/v1/feedback", json={"target": {"completion_id": response.id}, "score": 1.0}
    )
    assert rated.status_code == 201, rated.text
    assert len(rated.json()["call_ids"]) == 1

    # The same request again is answered from the cache, as a chat call would be.
    again = await client.responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="hello responses", max_output_tokens=50
    )
    assert again.headers["x-spine-cache"] == "hit"
    assert again.parse().output_text == "echo: hello responses"
    assert models.count() == 1


async def test_a_conversation_of_items_and_a_function_call_round_trip(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    calls_then_answers(models, "It is 17 C in Paris.")
    conversation: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": "Hello! Ask me anything."},
        {"type": "message", "role": "user", "content": "weather in Paris?"},
    ]
    response = await client.responses.create(model=CLOUD, input=conversation, tools=[WEATHER])
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and response.output_text == ""
    call = calls[0]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    sent = models.last_call.request
    assert sent.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "the weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert [m["role"] for m in sent.messages] == ["user", "assistant", "user"]
    assert sent.messages[0]["content"] == [{"type": "text", "text": "hi"}]

    # The call and its output go back as items; the model sees a tool call and its answer.
    conversation += [
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "17 C"},
    ]
    followed = await client.responses.create(model=CLOUD, input=conversation, tools=[WEATHER])
    assert followed.output_text == "It is 17 C in Paris."
    sent = models.last_call.request
    assert sent.messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert sent.messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "17 C"}


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_a_streamed_response_sends_openais_events_in_order(
    client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    stream = await client.responses.create(model=model, input="stream this please", stream=True)
    kinds: list[str] = []
    text = ""
    sequence: list[int] = []
    final: Any = None
    async for event in stream:
        kinds.append(event.type)
        sequence.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert text == "echo: stream this please"
    assert sequence == list(range(len(kinds)))
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == text
    assert final.usage.output_tokens == 4

    # The SDK's own accumulator reads the same events into the same response.
    async with client.responses.stream(model=model, input="stream this please") as helper:
        done = await helper.get_final_response()
    assert done.output_text == text


async def test_a_streamed_function_call_and_a_forced_tool(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            containing="weather",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Oslo"})],
        )
    )
    async with client.responses.stream(
        model=CLOUD,
        input="weather in Oslo?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        arguments = ""
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments += event.delta
        final = await stream.get_final_response()
    assert json.loads(arguments) == {"city": "Oslo"}
    call = final.output[0]
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    forced = models.last_call.request.body["tool_choice"]
    assert forced == {"type": "function", "function": {"name": "get_weather"}}


def calls_then_answers(models: FakeModelServer, answer: str) -> None:
    """Script the model: asked about the weather, it calls get_weather for Paris; shown the
    call's result, it gives ``answer``."""
    models.add(
        Rule(
            containing="weather",
            when=lambda request: request.last_role != "tool",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Paris"})],
        ),
        Rule(when=lambda request: request.last_role == "tool", reply=answer),
    )


def text_of(item: Any) -> str:
    """The text of a listed input message (its content is a list of parts)."""
    return str(item.content[0].text)


class Weather(BaseModel):
    city: str
    degrees: int


async def test_structured_output_is_parsed_by_the_client(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(containing="forecast", reply='{"city": "Paris", "degrees": 17}'))
    parsed = await client.responses.parse(
        model=CLOUD, input="the forecast for Paris", text_format=Weather
    )
    assert parsed.output_parsed == Weather(city="Paris", degrees=17)
    sent = models.last_call.request.body["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["schema"]["properties"]["degrees"]["type"] == "integer"


async def test_an_answer_cut_at_max_output_tokens_is_incomplete(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(containing="long", reply="one two three four five six seven eight"))
    response = await client.responses.create(model=CLOUD, input="a long one", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"conversation": "conv_abc"}, "conversation"),
        ({"previous_response_id": 7}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input"),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input",
        ),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema"}}}, "text"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
async def test_a_bad_request_is_a_400_naming_the_parameter(
    spine: RunningPlatform, models: FakeModelServer, extra: dict[str, Any], param: str
) -> None:
    body = {"model": CLOUD, "input": "hi", **extra}
    answer = await spine.client.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert models.count() == 0


async def test_a_kept_response_is_continued_read_listed_and_deleted_by_its_tenant_only(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    first = await client.responses.create(
        model=CLOUD, instructions="Be brief.", input="my name is Ada"
    )
    assert first.to_dict()["store"] is True
    # Continued at once: the model sees the kept conversation, then the new input; the
    # earlier instructions do not carry over (OpenAI's rule), the new ones come first.
    second = await client.responses.create(
        model=CLOUD,
        instructions="Answer in French.",
        input=[{"role": "user", "content": "what is my name?"}],
        previous_response_id=first.id,
    )
    assert second.previous_response_id == first.id
    assert models.last_call.request.messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]

    kept = await client.responses.retrieve(first.id)
    assert kept.model_dump() == first.model_dump()
    items = await client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].id.startswith("item_")
    three = await client.responses.create(
        model=CLOUD,
        input=[{"role": "user", "content": word} for word in ("one", "two", "three")],
    )
    newest = await client.responses.input_items.list(three.id)
    assert [text_of(item) for item in newest.data] == ["three", "two", "one"]
    page = await client.responses.input_items.list(three.id, order="asc", limit=2)
    assert (len(page.data), page.has_more) == (2, True)
    rest = await client.responses.input_items.list(three.id, order="asc", after=page.data[-1].id)
    assert [text_of(item) for item in rest.data] == ["three"]
    for query, param in (
        ({"limit": 0}, "limit"),
        ({"order": "up"}, "order"),
        ({"after": "x"}, "after"),
    ):
        bad = await spine.client.get(f"/v1/responses/{three.id}/input_items", params=query)
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, param)

    other_key = await spine.new_key("globex")
    async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=other_key, max_retries=0) as other:
        for attempt in (
            other.responses.retrieve(first.id),
            other.responses.delete(first.id),
            other.responses.input_items.list(first.id),
            other.responses.create(model=CLOUD, input="hi", previous_response_id=first.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await attempt

    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.retrieve(first.id)
    assert caught.value.body["code"] == "response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(model=CLOUD, input="hi", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    # Not kept when asked not to be.
    unkept = await client.responses.create(model=CLOUD, input="forget me", store=False)
    assert unkept.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unkept.id)
    async with httpx.AsyncClient(base_url=spine.url) as anonymous:
        refused = await anonymous.get(f"/v1/responses/{second.id}")
    assert refused.status_code == 401


async def test_a_function_call_is_answered_by_continuing_its_streamed_response(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    calls_then_answers(models, "17 C in Paris.")
    async with client.responses.stream(
        model=CLOUD, input="weather in Paris?", tools=[WEATHER]
    ) as stream:
        first = await stream.get_final_response()
    call = first.output[0]
    assert call.type == "function_call"
    # Kept before response.completed was sent: continued at once, with the call's output.
    answer = await client.responses.create(
        model=CLOUD,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "17 C"}],
        tools=[WEATHER],
    )
    assert answer.output_text == "17 C in Paris."
    sent = models.last_call.request.messages
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "17 C"}


async def test_a_stream_failing_after_its_first_tokens_ends_with_response_failed(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(model=CLOUD, disconnect_after=2, reply="one two three four five"))
    stream = await client.responses.create(model=CLOUD, input="count", stream=True)
    events = [event async for event in stream]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "one two"
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error is not None
    assert last.response.error.code == "server_error"
    assert "one two" not in last.response.error.message  # the failure, not the answer
    assert models.count(model=CLOUD) == 1  # no second answer spliced on
