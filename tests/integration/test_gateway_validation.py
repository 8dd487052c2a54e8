"""The gateway refuses malformed chat requests itself, so one client's bad input never blocks others.

The platform's only model is the embedded ``local`` one (``smollm2-135m``, a 2,048-token
window, no tools, no images), played by the fake model server answering as llama-cpp-python's
server does: a body it cannot validate is a 500 ("3 validation errors: ..."). A refusal must be
a 400 in OpenAI's shape naming the parameter, made before any model is called; and however
many a client sends, the model's breaker stays closed for everyone else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from support.fake_models import FakeModelServer, ModelRequest, Rule
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

LOCAL = "smollm2-135m"
HELLO: ChatCompletionMessageParam = {"role": "user", "content": "hello gateway"}
OPENAI_ERROR = {"message", "type", "param", "code"}
# What llama-cpp-python's server answers a body its own request model refuses.
LLAMA_REFUSAL = (
    "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages', 0, 'content'), "
    "'msg': 'Field required'}"
)


def llama_cpp_would_refuse(request: ModelRequest) -> bool:
    """Whether llama-cpp-python's server would answer this body with its 500."""
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, str) and not message.get("tool_calls"):
            return True
        if message.get("role") == "tool" and not message.get("tool_call_id"):
            return True
    penalties = (request.body.get(k, 0) for k in ("presence_penalty", "frequency_penalty"))
    return any(not -2 <= p <= 2 for p in penalties)


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    models.add(Rule(when=llama_cpp_would_refuse, status=500, error=LLAMA_REFUSAL))
    async with running_platform(
        services,
        pg_url,
        models,
        workers=0,
        ollama_url=None,
        default_provider="local",
        local_model={"url": models.openai_url},
    ) as running:
        yield running


async def chat(spine: RunningPlatform, **body: Any) -> httpx.Response:
    return await spine.client.post("/v1/chat/completions", json={"model": LOCAL, **body})


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= OPENAI_ERROR
    return error


MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": None}]}, "messages"),
    ({"messages": [HELLO, {"role": "assistant"}]}, "messages"),
    ({"messages": [HELLO, {"role": "tool", "content": "17 C"}]}, "messages"),
    ({"messages": [HELLO, {"role": "tool", "tool_call_id": "call_1"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages"),
    ({"messages": [HELLO], "presence_penalty": 5}, "presence_penalty"),
    ({"messages": [HELLO], "frequency_penalty": -3}, "frequency_penalty"),
    ({"messages": [HELLO], "temperature": 3}, "temperature"),
    ({"messages": [HELLO], "top_p": 2}, "top_p"),
    ({"messages": [HELLO], "n": 0}, "n"),
    ({"messages": [HELLO], "max_tokens": 0}, "max_tokens"),
    ({"messages": [HELLO], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [HELLO], "stream": "yes"}, "stream"),
    ({"messages": [HELLO], "max_tokens": True}, "max_tokens"),
    ({"messages": [HELLO], "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": [HELLO], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [HELLO], "logit_bias": {"50256": 101}}, "logit_bias"),
    ({"messages": [HELLO], "logit_bias": {"hello": 1}}, "logit_bias"),
    ({"messages": [HELLO], "logit_bias": {"1": "1"}}, "logit_bias"),
    ({"messages": [HELLO], "logit_bias": [1, 2]}, "logit_bias"),
]


@pytest.mark.parametrize(
    ("body", "param"), MALFORMED, ids=[f"{i}-{p}" for i, (_, p) in enumerate(MALFORMED)]
)
async def test_a_malformed_request_is_a_400_naming_the_parameter_before_any_model_call(
    spine: RunningPlatform, models: FakeModelServer, body: dict[str, Any], param: str
) -> None:
    error = openai_error(await chat(spine, **body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "validation error" not in error["message"]  # the model's own words never show
    assert models.count() == 0


async def test_malformed_requests_never_cool_the_model_down_for_anyone(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    for body, _ in MALFORMED[:6] * 2:  # four times the breaker's threshold
        assert (await chat(spine, **body)).status_code == 400
    answer = await client.chat.completions.create(model=LOCAL, messages=[HELLO])
    assert answer.choices[0].message.content == "echo: hello gateway"
    routed = await client.chat.completions.create(model="auto", messages=[HELLO])
    assert routed.model == LOCAL


async def test_a_body_the_model_server_refuses_is_a_400_and_cools_nothing_down(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    # Past the gateway's checks, refused by the server all the same (a field it validates).
    models.add(Rule(containing="refuse me", status=500, error=LLAMA_REFUSAL))
    for _ in range(5):
        response = await chat(spine, messages=[{"role": "user", "content": "refuse me"}])
        error = openai_error(response, 400)
        assert error["code"] == "provider_rejected_request"
    assert models.count() == 5
    answer = await client.chat.completions.create(model=LOCAL, messages=[HELLO])
    assert answer.choices[0].message.content == "echo: hello gateway"


async def test_text_parts_reach_the_local_model_as_one_string(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    answer = await client.chat.completions.create(
        model="auto",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}],
            },
        ],
    )
    assert answer.choices[0].message.content == "echo: hello\nthere"
    sent = models.last_call.request.messages
    assert sent == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello\nthere"},
    ]


@pytest.mark.parametrize("model", [LOCAL, "auto"])
async def test_an_image_for_a_model_that_reads_none_is_a_400_naming_messages(
    client: AsyncOpenAI, models: FakeModelServer, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
                    ],
                }
            ],
        )
    assert caught.value.param == "messages"
    assert "images" in caught.value.message
    assert models.count() == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [HELLO], "max_tokens": 10**9}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "messages"),
    ],
    ids=["max_tokens", "prompt"],
)
async def test_too_long_for_the_model_is_context_length_exceeded_naming_the_parameter(
    spine: RunningPlatform, models: FakeModelServer, body: dict[str, Any], param: str
) -> None:
    error = openai_error(await chat(spine, **{**body, "model": "auto"}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", param)
    assert models.count() == 0


async def test_tools_no_model_can_call_are_a_400_naming_tools(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    for model in ("auto", LOCAL):
        error = openai_error(await chat(spine, model=model, messages=[HELLO], tools=tools), 400)
        assert error["param"] == "tools"
    assert models.count() == 0


async def test_one_model_is_retrieved_as_the_list_shows_it(
    spine: RunningPlatform, client: AsyncOpenAI
) -> None:
    model = await client.models.retrieve(LOCAL)
    assert (model.id, model.object, model.owned_by) == (LOCAL, "model", "local")
    listed = (await spine.client.get("/v1/models")).json()["data"]
    one = (await spine.client.get(f"/v1/models/{LOCAL}")).json()
    assert one == next(m for m in listed if m["id"] == LOCAL)
    assert one["spine"]["capabilities"]["vision"] is False

    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("no-such-model")
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/nowhere", 404),
        ("POST", "/v1/models", 405),
        ("GET", "/v1/chat/completions", 405),
        ("GET", "/v1/embeddings/nowhere", 404),
        ("POST", "/v1/moderations", 404),  # OpenAI APIs not served: the client is told so
        ("POST", "/v1/completions", 404),
    ],
)
async def test_every_gateway_path_answers_errors_in_openais_shape(
    spine: RunningPlatform, method: str, path: str, status: int
) -> None:
    response = await spine.client.request(method, path)
    error = openai_error(response, status)
    assert error["type"] == "invalid_request_error"
    assert path in error["message"] or status == 405
    if status == 405:
        assert method not in response.headers["allow"]
    if path in ("/v1/moderations", "/v1/completions"):
        assert "serves OpenAI's chat completions" in error["message"]


# -- property: whatever is wrong with the messages, a 400 and no model call ---------------------

_text = st.text(max_size=4)
_malformed_message: st.SearchStrategy[dict[str, Any]] = (
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user"])},
        optional={"content": st.none()},
    )
    | st.fixed_dictionaries({"role": st.just("assistant")}, optional={"tool_calls": st.just([])})
    | st.fixed_dictionaries({"role": st.just("tool"), "content": _text})
    | st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "tool"]),
            "content": st.integers() | st.just([]) | st.lists(st.builds(dict), min_size=1),
        }
    )
)
_message_lists = st.tuples(
    st.lists(st.just(HELLO), max_size=2), _malformed_message, st.lists(st.just(HELLO), max_size=2)
).map(lambda parts: [*parts[0], parts[1], *parts[2]])


def post_malformed(url: str, key: str) -> list[str]:
    """Post generated malformed message lists; return the answers that were not a 400."""
    wrong: list[str] = []

    @given(messages=_message_lists)
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def post(messages: list[dict[str, Any]]) -> None:
        response = http.post(
            "/v1/chat/completions", content=json.dumps({"model": "auto", "messages": messages})
        )
        if response.status_code != 400 or response.json()["error"]["param"] != "messages":
            wrong.append(f"{messages!r}: {response.status_code} {response.text[:200]}")

    with httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    ) as http:
        post()
    return wrong


async def test_no_malformed_message_list_reaches_the_model(
    spine: RunningPlatform, client: AsyncOpenAI, models: FakeModelServer
) -> None:
    wrong = await asyncio.to_thread(post_malformed, spine.url, spine.key)
    assert not wrong, "\n".join(wrong[:5])
    assert models.count() == 0
    answer = await client.chat.completions.create(model="auto", messages=[HELLO])
    assert answer.choices[0].message.content == "echo: hello gateway"
