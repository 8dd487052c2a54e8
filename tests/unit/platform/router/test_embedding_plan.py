"""Planning embedding calls: which models are candidates, sizes, explicit names, no fallback."""

from __future__ import annotations

from typing import Any

import pytest

from spine.platform.errors import BadRequest, ProviderNotConfigured
from spine.platform.models import Embedding, EmbeddingRequest, ProviderTarget
from spine.platform.router import Capabilities, ModelCatalog, ModelRouter, ModelSpec, Requirements
from spine.platform.settings import load_settings

CHAT = ModelSpec.for_provider("ollama", "llama3.2")
NOMIC = ModelSpec.for_provider(
    "ollama",
    "nomic-embed-text",
    capabilities=Capabilities(tools=False, json_output=False, embeddings=True),
)
SMALL = ModelSpec(
    name="small",
    provider="openai",
    model="text-embedding-3-small",
    input_price="0.00000002",
    output_price="0",
    capabilities=Capabilities(
        tools=False, json_output=False, embeddings=True, dimensions=1536, variable_dimensions=True
    ),
)


class Recorder:
    """A model caller that answers embeddings of a given size and records the calls."""

    def __init__(self, size: int = 384) -> None:
        self.size = size
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        self.calls.append((target.model, request.params))
        size = request.params.get("dimensions", self.size)
        return Embedding(
            vectors=[[0.0] * size for _ in request.texts],
            model=target.model,
            provider=target.provider,
        )


def router(*specs: ModelSpec, size: int = 384, **settings: Any) -> tuple[ModelRouter, Recorder]:
    values: dict[str, Any] = {
        "ollama_url": "http://127.0.0.1:1",
        "openai_api_key": "sk-test",
        "local_embedding": {"enabled": False},
        **settings,
    }
    caller = Recorder(size)
    routed = ModelRouter(
        load_settings(_env_file=None, **values),
        catalog=ModelCatalog(specs),
        upstream=caller,  # type: ignore[arg-type]
    )
    return routed, caller


def test_embedding_calls_plan_only_models_that_embed_and_chat_calls_never_do() -> None:
    routed, _ = router(CHAT, NOMIC, SMALL)
    embedding = routed.plan(Requirements.for_embedding(["hello"]))
    assert [s.name for s in embedding.models] == ["nomic-embed-text", "small"]  # local first
    chat = routed.plan(Requirements.of([{"role": "user", "content": "hi"}], {}))
    assert [s.name for s in chat.models] == ["llama3.2"]


def test_a_size_asked_for_rules_out_models_of_another_known_size() -> None:
    known = NOMIC.model_copy(
        update={"capabilities": NOMIC.capabilities.model_copy(update={"dimensions": 768})}
    )
    routed, _ = router(CHAT, known, SMALL)
    plan = routed.plan(Requirements.for_embedding(["x"], dimensions=256))
    assert [s.name for s in plan.models] == ["small"]
    with pytest.raises(BadRequest) as refused:
        routed.plan(Requirements.for_embedding(["x"], dimensions=4096))
    assert refused.value.field == "dimensions"
    assert "gives at most 1536" in refused.value.message


async def test_only_models_that_shorten_vectors_are_asked_to() -> None:
    routed, caller = router(NOMIC, SMALL)
    answer = await routed.embed(EmbeddingRequest(texts=["x"], model="small", dimensions=384))
    assert answer.dimensions == 384
    answer = await routed.embed(
        EmbeddingRequest(texts=["x"], model="nomic-embed-text", dimensions=384)
    )
    assert caller.calls == [
        ("text-embedding-3-small", {"dimensions": 384}),
        ("nomic-embed-text", {}),
    ]


async def test_a_model_of_the_wrong_size_is_refused_and_its_size_learned() -> None:
    routed, caller = router(NOMIC, size=768)
    with pytest.raises(BadRequest) as wrong:
        await routed.embed(EmbeddingRequest(texts=["x"], model="nomic-embed-text", dimensions=384))
    assert wrong.value.field == "dimensions"
    learned = routed.catalog.get("nomic-embed-text")
    assert learned is not None
    assert learned.capabilities.dimensions == 768
    with pytest.raises(BadRequest):  # now refused before any call
        await routed.embed(EmbeddingRequest(texts=["x"], model="nomic-embed-text", dimensions=384))
    assert len(caller.calls) == 1


async def test_explicit_names_and_no_fallback() -> None:
    routed, caller = router(CHAT, NOMIC, SMALL, fallback_chain="ollama,openai")
    with pytest.raises(BadRequest) as chat_model:
        await routed.embed(EmbeddingRequest(texts=["x"], model="llama3.2"))
    assert chat_model.value.field == "model"
    # A provider/model name of a configured provider is taken as an embedding model.
    answer = await routed.embed(
        EmbeddingRequest(texts=["x"], model="openai/text-embedding-3-large", dimensions=256)
    )
    assert (answer.model, answer.dimensions) == ("openai/text-embedding-3-large", 256)
    plan = routed.plan(Requirements.for_embedding(["x"]), model="nomic-embed-text")
    assert [s.name for s in plan.models] == ["nomic-embed-text", "small"]
    answer = await routed.embed(
        EmbeddingRequest(texts=["x"], model="nomic-embed-text", fallback=False)
    )
    assert [a.model for a in answer.fallback_path] == ["nomic-embed-text"]
    assert len(caller.calls) == 2


def test_with_no_embedding_model_the_plan_says_what_to_configure() -> None:
    routed, _ = router(CHAT)
    with pytest.raises(ProviderNotConfigured) as missing:
        routed.plan(Requirements.for_embedding(["x"]))
    assert "nomic-embed-text" in missing.value.message
    assert "[embed]" in missing.value.message


def test_an_embedding_model_alone_answers_no_chat_call() -> None:
    local = ModelSpec.for_provider("local-embed", "all-minilm-l6-v2")
    routed, _ = router(local)
    with pytest.raises(ProviderNotConfigured) as missing:
        routed.plan(Requirements.of([{"role": "user", "content": "hi"}], {}))
    assert "no model provider is configured" in missing.value.message
    assert [s.name for s in routed.plan(Requirements.for_embedding(["x"])).models] == [
        "all-minilm-l6-v2"
    ]
