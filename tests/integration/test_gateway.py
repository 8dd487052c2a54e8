"""The OpenAI-compatible gateway, driven by the official ``openai`` client.

The fake model server is Ollama (``llama3.2``, and what ``/api/tags`` lists, such as
``ollama/gpt-4o-mini``), OpenAI (``gpt-4o-mini`` at its ``/v1``) and an OpenAI-compatible
provider from a models file (``compat``).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from support.fake_models import FakeModelServer, Rule, ToolCall
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

LOCAL, CLOUD = "llama3.2", "gpt-4o-mini"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello gateway"}]
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        "  - name: compat\n"
        "    provider: openai-compatible\n"
        f"    model: {CLOUD}\n"
        f"    api_base: {models.openai_url}\n"
    )
    async with running_platform(
        services,
        pg_url,
        models,
        openai_api_key="sk-test-dummy",
        openai_base_url=models.openai_url,
        fallback_chain="ollama,openai",
        models_file=models_file,
    ) as running:
        yield running


def ollama_fails(request: Any) -> bool:
    # Ollama's calls come to the OpenAI routes with Ollama's key.
    return bool(request.api_key == "ollama")


async def test_a_plain_completion_names_who_answered(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    raw = await client.chat.completions.with_raw_response.create(model=LOCAL, messages=HELLO)
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == LOCAL
    assert answer.choices[0].message.content == "echo: hello gateway"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens == 3
    assert raw.headers["x-spine-model"] == LOCAL
    assert raw.headers["x-spine-provider"] == "ollama"
    assert raw.headers["x-spine-strategy"] == "explicit"
    assert raw.headers["x-spine-fallback"] == LOCAL
    # Through Ollama's OpenAI-compatible routes, with its key.
    called = models.last_call.request
    assert (called.path, called.api_key) == ("/v1/chat/completions", "ollama")


async def test_auto_follows_the_strategy_from_the_body_or_the_header(
    client: AsyncOpenAI,
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_body={"spine_strategy": "quality"}
    )
    assert (raw.headers["x-spine-model"], raw.headers["x-spine-provider"]) == (CLOUD, "openai")
    assert raw.headers["x-spine-strategy"] == "quality"
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_headers={"X-Spine-Strategy": "local_first"}
    )
    assert raw.headers["x-spine-model"] == LOCAL
    assert raw.headers["x-spine-strategy"] == "local_first"
    answer = await client.chat.completions.create(model="compat", messages=HELLO)
    assert (answer.model, answer.choices[0].message.content) == ("compat", "echo: hello gateway")


async def test_a_tenant_has_its_own_default_strategy(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with running_platform(
        services,
        pg_url,
        models,
        openai_api_key="sk-test-dummy",
        openai_base_url=models.openai_url,
        tenant_strategies="acme=quality",
    ) as spine:
        globex = await spine.new_key("globex")
        for key, expected in ((spine.key, ("quality", CLOUD)), (globex, ("local_first", LOCAL))):
            async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=key, max_retries=0) as c:
                raw = await c.chat.completions.with_raw_response.create(
                    model="auto", messages=HELLO
                )
                got = (raw.headers["x-spine-strategy"], raw.headers["x-spine-model"])
                assert got == expected
        # The request's own choice still wins over its tenant's.
        response = await spine.client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": HELLO},
            headers={"X-Spine-Strategy": "local_first"},
        )
        assert response.headers["x-spine-model"] == LOCAL


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_a_streamed_completion_assembles_and_ends_with_usage(
    client: AsyncOpenAI, model: str
) -> None:
    stream = await client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello gateway"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {model}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_tool_calls_come_back(
    client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    models.add(
        Rule(
            containing="weather",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Paris"})],
        )
    )
    answer = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert models.last_call.request.tools[0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_streamed_tool_calls_assemble(
    client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    models.add(
        Rule(
            containing="weather",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Oslo"})],
        )
    )
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, arguments, finish = "", "", None
    async for c in stream:
        for part in c.choices[0].delta.tool_calls or []:
            name += (part.function and part.function.name) or ""
            arguments += (part.function and part.function.arguments) or ""
        finish = c.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Oslo"}, "tool_calls")


@pytest.mark.parametrize("model", [LOCAL, CLOUD])
async def test_the_deprecated_functions_api_is_answered_in_its_own_form(
    client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    models.add(
        Rule(
            containing="weather",
            when=lambda request: request.last_role != "tool",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Paris"})],
        ),
        Rule(when=lambda request: request.last_role == "tool", reply="It is 17 C in Paris."),
    )
    function = WEATHER_TOOL["function"]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather in Paris?"}]
    answer = await client.chat.completions.create(
        model=model, messages=messages, functions=[function], function_call="auto"
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}
    sent = models.last_call.request
    assert sent.tools == [{"type": "function", "function": function}]
    assert sent.body.get("tool_choice") in ("auto", None)  # LiteLLM may leave "auto" out
    assert "functions" not in sent.body

    # The call's result goes back as the deprecated API writes it; the model sees a tool turn.
    call = choice.message.function_call
    messages += [
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": call.name, "arguments": call.arguments},
        },
        {"role": "function", "name": "get_weather", "content": "17 C"},
    ]
    followed = await client.chat.completions.create(
        model=model, messages=messages, functions=[function]
    )
    assert followed.choices[0].message.content == "It is 17 C in Paris."
    assert followed.choices[0].finish_reason == "stop"
    sent = models.last_call.request
    assert sent.last_role == "tool"
    assert sent.messages[-1]["content"] == "17 C"

    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Oslo, streamed?"}],
        functions=[function],
        function_call={"name": "get_weather"},
        stream=True,
    )
    name, arguments, finish = "", "", None
    async for c in stream:
        assert not c.choices[0].delta.tool_calls
        piece = c.choices[0].delta.function_call
        name += (piece and piece.name) or ""
        arguments += (piece and piece.arguments) or ""
        finish = c.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == (
        "get_weather",
        {"city": "Paris"},
        "function_call",
    )
    forced = models.last_call.request.body.get("tool_choice")
    assert forced == {"type": "function", "function": {"name": "get_weather"}}


async def test_falls_back_across_providers_on_a_500(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(when=ollama_fails, status=500))
    raw = await client.chat.completions.with_raw_response.create(model=LOCAL, messages=HELLO)
    assert raw.parse().choices[0].message.content == "echo: hello gateway"
    assert raw.headers["x-spine-fallback"] == f"{LOCAL}>ollama/{CLOUD}>{CLOUD}"
    assert raw.headers["x-spine-provider"] == "openai"


async def test_a_stream_failing_before_its_first_token_falls_back(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(when=ollama_fails, status=500))
    raw = await client.chat.completions.with_raw_response.create(
        model=LOCAL, messages=HELLO, stream=True
    )
    assert raw.headers["x-spine-fallback"] == f"{LOCAL}>ollama/{CLOUD}>{CLOUD}"
    assert raw.headers["content-type"].startswith("text/event-stream")
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "echo: hello gateway"
    assert models.count(model=LOCAL) == 1


async def test_a_stream_failing_after_tokens_ends_with_an_error_event(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(model=CLOUD, disconnect_after=2, reply="one two three four five"))
    stream = await client.chat.completions.create(model=CLOUD, messages=HELLO, stream=True)
    seen = ""
    with pytest.raises(openai.APIError) as caught:
        async for c in stream:
            seen += c.choices[0].delta.content or ""
    assert seen == "one two"
    assert caught.value.body["code"] == "provider_error"  # type: ignore[index]
    assert "GENAI_" not in caught.value.message  # it was reached: no advice to configure it
    assert models.count(model=CLOUD) == 1  # no second answer spliced on

    async with spine.client.stream(
        "POST", "/v1/chat/completions", json={"model": CLOUD, "messages": HELLO, "stream": True}
    ) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][5:])["error"]["type"] == "upstream_error"


async def test_bad_requests_are_4xx_naming_the_problem(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    assert "no-such-model" in missing.value.message

    with pytest.raises(openai.BadRequestError) as empty:
        await client.chat.completions.create(model=LOCAL, messages=[])
    assert empty.value.param == "messages"

    # Typed Any: the client's types rightly refuse what the server must refuse too.
    xml_format: Any = {"type": "xml"}
    with pytest.raises(openai.BadRequestError) as bad_format:
        await client.chat.completions.create(
            model=LOCAL, messages=HELLO, response_format=xml_format
        )
    assert bad_format.value.param == "response_format"

    with pytest.raises(openai.BadRequestError) as unknown:
        await client.chat.completions.create(
            model=LOCAL, messages=HELLO, extra_body={"frobnicate": 1}
        )
    assert (unknown.value.param, unknown.value.code) == ("frobnicate", "unknown_parameter")

    models.add(Rule(status=400))  # every model: "maximum context length is 8192 tokens"
    with pytest.raises(openai.BadRequestError) as overflow:
        await client.chat.completions.create(model=CLOUD, messages=HELLO)
    assert overflow.value.code == "context_length_exceeded"

    raw = await spine.client.post(
        "/v1/chat/completions", json={"model": LOCAL, "messages": HELLO, "temperature": 9}
    )
    assert raw.status_code == 400
    assert raw.json()["error"]["param"] == "temperature"
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


async def test_provider_failures_are_502(client: AsyncOpenAI, models: FakeModelServer) -> None:
    models.add(Rule(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=CLOUD, messages=HELLO)
    assert caught.value.status_code == 502
    assert "sk-test-dummy" not in caught.value.message


async def test_waits_the_client_is_told_are_the_providers_and_the_breakers(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(status=429, retry_after=7))  # every model the call may fall back to
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=CLOUD, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "7"  # the provider's, passed on
    models.reset()

    models.add(Rule(status=500))
    cooling: openai.APIStatusError | None = None
    for _ in range(10):  # failures until every model's breaker is open
        try:
            await client.chat.completions.create(model=CLOUD, messages=HELLO)
        except openai.APIStatusError as exc:
            if exc.status_code == 503:
                cooling = exc
                break
    assert cooling is not None and cooling.code == "models_unavailable"
    said = float(cooling.message.rsplit("the next probe is in ", 1)[1].split(" s")[0])
    # The breaker's wait, not a fixed 2 s the client would spend its retries on.
    assert int(cooling.response.headers["retry-after"]) == max(math.ceil(said), 1)


async def test_a_key_is_required(spine: RunningPlatform, models: FakeModelServer) -> None:
    async with httpx.AsyncClient(base_url=spine.url) as anonymous:
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            resp = await anonymous.request(method, path, json={"model": LOCAL, "messages": HELLO})
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "invalid_api_key"
    async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key="spn_nope_nope") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model=LOCAL, messages=HELLO)
    assert models.count() == 0


async def test_models_lists_the_catalog(spine: RunningPlatform, client: AsyncOpenAI) -> None:
    listed = [m.id async for m in client.models.list()]
    assert {LOCAL, CLOUD, "compat", f"ollama/{CLOUD}", "nomic-embed-text"} <= set(listed)
    body = (await spine.client.get("/v1/models")).json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id[LOCAL]["object"] == "model"
    assert by_id[LOCAL]["owned_by"] == "ollama"
    assert by_id[LOCAL]["spine"]["tags"] == ["local"]
    assert by_id["nomic-embed-text"]["spine"]["capabilities"]["embeddings"] is True
    assert by_id["compat"]["spine"]["provider"] == "openai-compatible"
    assert by_id[CLOUD]["spine"]["context_window"] == 128_000


async def test_a_parameter_the_chosen_model_cannot_take_is_a_400_naming_it(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    # LiteLLM passes no logit_bias to Ollama: asking llama3.2 for it is refused before a call.
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=LOCAL, messages=HELLO, logit_bias={"1": 1}, presence_penalty=0.5
        )
    assert refused.value.param == "logit_bias"
    assert "logit_bias" in refused.value.message
    assert "presence_penalty" in refused.value.message
    assert models.count() == 0
    # Routed, the same request goes to a model that takes it.
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, logit_bias={"1": 1}
    )
    assert raw.headers["x-spine-provider"] != "ollama"


async def test_an_answer_that_cannot_be_encoded_is_mended_whole_or_streamed(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    # Sent escaped (the fake server writes ASCII JSON): valid JSON, not valid UTF-8 text.
    models.add(Rule(containing="odd", reply="a\x00b \ud800c 😀"))
    mended = "a\ufffdb \ufffdc 😀"
    odd: list[ChatCompletionMessageParam] = [{"role": "user", "content": "odd one"}]
    answer = await client.chat.completions.create(model=LOCAL, messages=odd)
    assert answer.choices[0].message.content == mended
    streamed = await client.chat.completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "odd two"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in streamed if c.choices]
    assert "".join(parts) == mended
    again = await client.chat.completions.with_raw_response.create(model=LOCAL, messages=odd)
    assert again.headers["x-spine-cache"] == "hit"  # it was cached, as any answer is
    assert again.parse().choices[0].message.content == mended
