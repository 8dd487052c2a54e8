"""A chat call no model meets is refused naming the parameter at fault, as OpenAI names it.

Too long for every model is ``context_length_exceeded`` (of ``max_tokens`` or ``messages``);
tools, JSON output and images go to a model that can take them, else name ``tools``,
``response_format`` or ``messages``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spine.platform.errors import BadRequest
from spine.platform.models import ChatRequest
from spine.platform.models.openai_errors import GatewayError
from spine.platform.router import Capabilities, ModelCatalog, ModelRouter, ModelSpec
from spine.platform.settings import load_settings

TOY = ModelSpec.for_provider("local", "smollm2-135m", context_window=2048)
CLOUD = ModelSpec(
    name="gpt-4o-mini", provider="openai", model="gpt-4o-mini", context_window=128_000
)
BLIND = ModelSpec(
    name="blind",
    provider="openai",
    model="blind",
    context_window=128_000,
    capabilities=Capabilities(vision=False),
)
EMBEDDER = ModelSpec.for_provider("local-embed", "all-minilm-l6-v2")
USER = [{"role": "user", "content": "hi"}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
        ],
    }
]
TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def router(*specs: ModelSpec) -> ModelRouter:
    settings = load_settings(
        _env_file=None, openai_api_key="sk-test", local_model={"url": "http://127.0.0.1:1/v1"}
    )
    return ModelRouter(settings, catalog=ModelCatalog(specs))


def refused(models: ModelRouter, messages: list[dict[str, Any]], **params: Any) -> GatewayError:
    with pytest.raises(BadRequest) as caught:
        models.plan_chat(ChatRequest.of(messages, **params))
    return GatewayError.of(caught.value)


@pytest.mark.parametrize(
    ("messages", "params", "param"),
    [
        (USER, {"max_tokens": 10**9}, "max_tokens"),
        ([{"role": "user", "content": "word " * 5000}], {}, "messages"),
        ([{"role": "user", "content": "word " * 5000}], {"max_tokens": 10}, "messages"),
    ],
    ids=["answer", "prompt", "prompt-with-answer"],
)
def test_too_long_for_every_model_is_context_length_exceeded_naming_the_parameter(
    messages: list[dict[str, Any]], params: dict[str, Any], param: str
) -> None:
    error = refused(router(TOY, EMBEDDER), messages, **params)
    assert error.status == 400
    assert (error.body["code"], error.body["param"]) == ("context_length_exceeded", param)
    assert "2048" in error.body["message"]


def test_tools_no_model_can_call_are_refused_naming_tools() -> None:
    error = refused(router(TOY, EMBEDDER), USER, tools=TOOLS)
    assert (error.status, error.body["param"], error.body["code"]) == (400, "tools", None)


def test_images_go_to_a_model_that_reads_them() -> None:
    models = router(TOY, CLOUD)
    assert [s.name for s in models.plan_chat(ChatRequest.of(IMAGE)).models] == ["gpt-4o-mini"]
    assert TOY.name in [s.name for s in models.plan_chat(ChatRequest.of(USER)).models]


def test_images_no_model_reads_are_refused_naming_messages() -> None:
    error = refused(router(TOY, BLIND), IMAGE)
    assert (error.status, error.body["param"]) == (400, "messages")
    assert "cannot read images" in error.body["message"]
    # Named explicitly, the model that cannot read them is refused the same way.
    explicit = refused(router(TOY, CLOUD), IMAGE, model=TOY.name)
    assert (explicit.status, explicit.body["param"]) == (400, "messages")


def test_the_embedded_model_declares_it_reads_no_images() -> None:
    assert not TOY.capabilities.vision
    assert CLOUD.capabilities.vision
