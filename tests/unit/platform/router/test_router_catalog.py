"""The model catalog: settings, the models file and its errors, filtering, Ollama discovery."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.router import (
    Capabilities,
    ModelCatalog,
    ModelSpec,
    Requirements,
    discover_ollama,
)
from spine.platform.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def settings(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


# -- from settings -----------------------------------------------------------------------------


def test_nothing_configured_gives_an_empty_catalog() -> None:
    assert len(ModelCatalog.from_settings(settings())) == 0


def test_each_configured_provider_brings_its_default_model() -> None:
    catalog = ModelCatalog.from_settings(
        settings(
            ollama_url="http://127.0.0.1:11434",
            openai_api_key="sk-x",
            groq_api_key="gsk-x",
            models={"openai": "gpt-4.1-mini"},
        )
    )
    assert catalog.names == ["gpt-4.1-mini", "llama-3.1-8b-instant", "llama3.2"]
    llama = catalog.get("llama3.2")
    assert llama is not None
    assert (llama.provider, llama.local, llama.input_price) == ("ollama", True, Decimal(0))
    hosted = catalog.get("gpt-4.1-mini")
    assert hosted is not None
    assert (hosted.provider, hosted.local, hosted.input_price) == ("openai", False, None)
    assert hosted.quality > llama.quality
    assert catalog.get("llama3.2:latest") is llama


def test_a_name_two_providers_share_is_qualified_by_provider() -> None:
    catalog = ModelCatalog.from_settings(
        settings(
            ollama_url="http://127.0.0.1:11434",
            openai_api_key="sk-x",
            models={"ollama": "same", "openai": "same"},
        )
    )
    assert catalog.names == ["openai/same", "same"]
    openai = catalog.get("openai/same")
    assert openai is not None
    assert openai.model == "same"


# -- the models file ---------------------------------------------------------------------------


MODELS = """
models:
  - name: smart
    provider: openai
    model: gpt-4o
    input_price: "0.0000025"
    output_price: 0.00001
    quality: 0.9
    context_window: 128000
  - name: gpt-4o-mini          # describes the default model of the openai provider
    provider: openai
    input_price: "0.00000015"
    output_price: "0.0000006"
    quality: 0.7
  - name: tiny
    provider: ollama
    model: "qwen2.5:0.5b"
    context_window: 4096
    capabilities: {tools: false}
  - name: vllm
    provider: openai-compatible
    model: Qwen/Qwen2.5-7B
    api_base: http://127.0.0.1:8000/v1
    api_key: not-shown
    tags: [local]
  - name: claude-big
    provider: anthropic
    model: claude-sonnet-4
"""


def test_the_models_file_adds_and_overrides_entries(tmp_path: Path) -> None:
    path = write(tmp_path, MODELS)
    catalog = ModelCatalog.from_settings(
        settings(ollama_url="http://127.0.0.1:11434", openai_api_key="sk-x", models_file=path)
    )
    # anthropic is not configured: its entry is skipped.
    assert catalog.names == ["gpt-4o-mini", "llama3.2", "smart", "tiny", "vllm"]
    smart = catalog.get("smart")
    assert smart is not None
    assert smart.input_price == Decimal("0.0000025")
    assert smart.output_price == Decimal("0.00001")
    mini = catalog.get("gpt-4o-mini")
    assert mini is not None
    assert (mini.model, mini.quality) == ("gpt-4o-mini", 0.7)  # model defaults to the name
    tiny = catalog.get("tiny")
    assert tiny is not None
    assert tiny.local and not tiny.capabilities.tools and tiny.capabilities.json_output
    vllm = catalog.get("vllm")
    assert vllm is not None and vllm.local
    assert "not-shown" not in repr(vllm)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [", "not valid YAML"),
        ("- name: x", "expected a mapping with a 'models' list"),
        ("models:\n  - just-a-name", r"models\[0\]: expected a mapping"),
        (
            "models:\n  - name: a\n    provider: openai\n  - name: b\n    provider: azure",
            r"models\[1\] \('b'\): provider: Input should be",
        ),
        (
            "models:\n  - name: a\n    provider: openai\n    quality: 2",
            r"models\[0\] \('a'\): quality: Input should be less than or equal to 1",
        ),
        (
            "models:\n  - name: a\n    provider: openai\n    input_price: cheap",
            r"models\[0\] \('a'\): input_price",
        ),
        (
            "models:\n  - name: a\n    provider: openai\n    contxt_window: 5",
            r"contxt_window: Extra inputs are not permitted",
        ),
        (
            "models:\n  - name: a\n    provider: openai-compatible",
            r"models\[0\] \('a'\): entry: Value error, an openai-compatible model needs api_base",
        ),
        (
            "models:\n  - name: a\n    provider: openai\n  - name: a\n    provider: ollama",
            r"models\[1\] \('a'\): the name 'a' is used twice",
        ),
    ],
    ids=[
        "yaml",
        "shape",
        "entry",
        "provider",
        "quality",
        "price",
        "typo",
        "compatible-base",
        "duplicate",
    ],
)
def test_a_bad_models_file_names_the_file_and_the_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=expected) as caught:
        ModelCatalog.from_settings(settings(openai_api_key="sk-x", models_file=path))
    assert f"GENAI_MODELS_FILE={path}" in caught.value.message
    assert caught.value.field == "GENAI_MODELS_FILE"


def test_a_missing_models_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match="cannot read it"):
        ModelCatalog.from_settings(settings(models_file=missing))


def test_a_models_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    latin = tmp_path / "models.yaml"
    latin.write_bytes("- name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigurationError, match="not UTF-8") as caught:
        ModelCatalog.from_settings(settings(models_file=latin))
    assert caught.value.field == "GENAI_MODELS_FILE"


def test_the_models_file_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GENAI_MODELS_FILE", str(tmp_path / "m.yaml"))
    monkeypatch.setenv("GENAI_ROUTING_STRATEGY", "speed")
    loaded = settings()
    assert loaded.models_file == tmp_path / "m.yaml"
    assert loaded.routing_strategy == "speed"
    monkeypatch.setenv("GENAI_ROUTING_STRATEGY", "fastest")
    with pytest.raises(ConfigurationError, match="GENAI_ROUTING_STRATEGY"):
        settings()


def test_unknown_prices_and_windows_are_filled_from_known_facts() -> None:
    catalog = ModelCatalog(
        [
            ModelSpec(name="a", provider="openai", model="gpt-x"),
            ModelSpec(name="b", provider="openai", model="gpt-y", input_price=1, context_window=9),
            ModelSpec(name="c", provider="groq", model="unknown"),
        ]
    )
    facts: dict[tuple[str, str], dict[str, float]] = {
        ("openai", "gpt-x"): {
            "input_cost_per_token": 1.5e-07,
            "output_cost_per_token": 6e-07,
            "max_input_tokens": 128000,
        },
        ("openai", "gpt-y"): {"input_cost_per_token": 5, "max_input_tokens": 100},
    }
    assert catalog.fill_unknown(lambda p, m: facts.get((p, m))) == 1  # only a gains
    a, b, c = (catalog.get(n) for n in "abc")
    assert a is not None and b is not None and c is not None
    assert (a.input_price, a.output_price, a.context_window) == (
        Decimal("1.5E-7"),
        Decimal("6E-7"),
        128000,
    )
    # What b's spec already said is kept.
    assert (b.input_price, b.output_price, b.context_window) == (Decimal(1), None, 9)
    assert (c.input_price, c.context_window) == (None, None)


# -- filtering ---------------------------------------------------------------------------------


def model(name: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name=name, provider="openai", model=name, **fields)


CATALOG = ModelCatalog(
    [
        model("small", context_window=4096, quality=0.4),
        model("big", context_window=128_000, quality=0.9),
        model("unknown-window", quality=0.6),
        model("no-tools", context_window=32_000, capabilities=Capabilities(tools=False)),
        model("no-json", context_window=32_000, capabilities=Capabilities(json_output=False)),
        model(
            "embedder",
            capabilities=Capabilities(tools=False, json_output=False, embeddings=True),
        ),
    ]
)


def candidate_names(**needs: Any) -> list[str]:
    return [s.name for s in CATALOG.candidates(Requirements(**needs))]


def test_candidates_exclude_embedding_models() -> None:
    assert candidate_names() == ["small", "big", "unknown-window", "no-tools", "no-json"]


def test_candidates_need_room_for_the_prompt_and_the_answer() -> None:
    assert "small" in candidate_names(prompt_tokens=3000, max_tokens=1000)
    assert "small" not in candidate_names(prompt_tokens=3000, max_tokens=1200)
    # An unknown window is not filtered; an overflow is caught when the call is made.
    assert candidate_names(prompt_tokens=100_000) == ["big", "unknown-window"]
    assert "needs about 4200 tokens of context, has 4096" in CATALOG.refusals(
        Requirements(prompt_tokens=4000, max_tokens=200)
    ).get("small", "")


def test_candidates_need_tools_json_and_quality_when_asked() -> None:
    assert "no-tools" not in candidate_names(tools=True)
    assert "no-json" in candidate_names(tools=True)
    assert "no-json" not in candidate_names(json_output=True)
    assert candidate_names(min_quality=0.6) == ["big", "unknown-window"]


def test_requirements_are_read_from_the_call() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    req = Requirements.of(
        messages,
        {"max_tokens": 50, "tools": tools, "response_format": {"type": "json_object"}},
        min_quality=0.3,
    )
    assert 100 < req.prompt_tokens < 150
    assert (req.max_tokens, req.tools, req.json_output, req.min_quality) == (50, True, True, 0.3)
    plain = Requirements.of(messages, {})
    assert (plain.max_tokens, plain.tools, plain.json_output) == (None, False, False)
    assert not Requirements.of(messages, {"response_format": {"type": "text"}}).json_output


# -- Ollama discovery --------------------------------------------------------------------------


def tags(
    *names: str, shown: dict[str, list[str]] | None = None, asked: list[str] | None = None
) -> httpx.MockTransport:
    """An Ollama listing ``names``; ``/api/show`` gives the capabilities in ``shown`` (a model
    not in it: a 404), or says nothing of them when ``shown`` is None (an Ollama before 0.6).
    The models ``/api/show`` is asked about are appended to ``asked``."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/show":
            model = json.loads(request.content)["model"]
            if asked is not None:
                asked.append(model)
            if shown is None:
                return httpx.Response(200, json={"details": {"family": "llama"}})
            if model not in shown:
                return httpx.Response(404, json={"error": f"model '{model}' not found"})
            return httpx.Response(200, json={"capabilities": shown[model]})
        assert request.url.path == "/api/tags"
        return httpx.Response(200, json={"models": [{"name": n} for n in names]})

    return httpx.MockTransport(answer)


async def test_discovery_adds_the_models_ollama_lists() -> None:
    catalog = ModelCatalog.from_settings(
        settings(ollama_url="http://127.0.0.1:11434", openai_api_key="sk-x")
    )
    added = await discover_ollama(
        catalog,
        "http://127.0.0.1:11434",
        transport=tags("llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest", "gpt-4o-mini"),
    )
    # llama3.2 is already there; gpt-4o-mini clashes with the openai model's name.
    assert [s.name for s in added] == ["qwen2.5:0.5b", "nomic-embed-text", "ollama/gpt-4o-mini"]
    qwen = catalog.get("qwen2.5:0.5b")
    assert qwen is not None
    assert qwen.local and qwen.input_price == 0 and qwen.capabilities.tools
    embedder = catalog.get("nomic-embed-text")
    assert embedder is not None and embedder.capabilities.embeddings
    assert embedder.model == "nomic-embed-text:latest"
    assert "nomic-embed-text" not in [s.name for s in catalog.candidates(Requirements())]
    again = await discover_ollama(catalog, "http://127.0.0.1:11434", transport=tags("qwen2.5:0.5b"))
    assert again == []


async def test_discovery_reads_what_each_model_can_do_from_ollama(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        "  - {name: told, provider: ollama, model: 'llava:7b', capabilities: {vision: false}}\n"
        "  - {name: fast, provider: ollama, model: llama3.2}\n"
    )
    catalog = ModelCatalog.from_settings(
        settings(ollama_url="http://127.0.0.1:11434", models_file=str(models_file))
    )
    shown = {
        "llama3.2:latest": ["completion", "tools"],
        "llava:7b": ["completion", "vision"],
        "qwen2.5vl:3b": ["completion", "vision", "tools"],
        "bge-m3:latest": ["embedding"],
        "phi3:mini": [],  # says nothing: assumed to do everything
    }
    asked: list[str] = []
    added = await discover_ollama(
        catalog,
        "http://127.0.0.1:11434",
        transport=tags(*shown, "gone:1b", shown=shown, asked=asked),
    )
    assert "llava:7b" not in asked and len(asked) == len(shown)  # the file said what it can do
    can = {
        s.name: (s.capabilities.tools, s.capabilities.vision, s.capabilities.embeddings)
        for s in catalog
    }
    assert [s.name for s in added] == ["qwen2.5vl:3b", "bge-m3", "phi3:mini", "gone:1b"]
    # The settings' model and a file entry that said nothing follow Ollama: no images.
    assert can["llama3.2"] == can["fast"] == (True, False, False)
    assert can["told"] == (True, False, False)  # the file's word stands
    assert can["qwen2.5vl:3b"] == (True, True, False)
    assert can["bge-m3"] == (False, False, True)
    assert can["phi3:mini"] == can["gone:1b"] == (True, True, False)  # not described: assumed
    images = Requirements(images=True)
    assert "llama3.2" not in [s.name for s in catalog.candidates(images)]
    assert "qwen2.5vl:3b" in [s.name for s in catalog.candidates(images)]


async def test_an_ollama_that_describes_no_capabilities_keeps_the_guesses() -> None:
    catalog = ModelCatalog.from_settings(settings(ollama_url="http://127.0.0.1:11434"))
    await discover_ollama(
        catalog, "http://127.0.0.1:11434", transport=tags("llama3.2:latest", "nomic-embed-text")
    )
    llama, embedder = catalog.get("llama3.2"), catalog.get("nomic-embed-text")
    assert llama is not None and llama.capabilities.vision and llama.capabilities.tools
    assert embedder is not None and embedder.capabilities.embeddings


@pytest.mark.parametrize(
    "transport",
    [
        httpx.MockTransport(lambda r: httpx.Response(500, text="boom")),
        httpx.MockTransport(lambda r: httpx.Response(200, text="not json")),
        httpx.MockTransport(lambda r: httpx.Response(200, json={"nothing": []})),
    ],
    ids=["500", "not-json", "no-models"],
)
async def test_discovery_errors_are_service_unavailable(transport: httpx.MockTransport) -> None:
    with pytest.raises(ServiceUnavailable, match=r"Ollama at http://127.0.0.1:1 did not list"):
        await discover_ollama(ModelCatalog(), "http://127.0.0.1:1", transport=transport)


async def test_discovery_of_an_unreachable_server_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match="ConnectError") as caught:
        await discover_ollama(ModelCatalog(), "http://127.0.0.1:1", timeout=0.5)
    assert caught.value.retryable
