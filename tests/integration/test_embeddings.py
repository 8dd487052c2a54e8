"""``POST /v1/embeddings`` through the router, driven by the official ``openai`` client.

The fake model server embeds over both protocols: Ollama (``nomic-embed-text`` and
``text-embedding-3-small``, which its ``/api/tags`` lists) and OpenAI (``openai/...`` names, and
``priced-embed`` from a models file, with a price per input token). The local model
(``all-minilm-l6-v2``, extra ``[embed]``) is tested where the extra is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import struct
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from spine.platform.models.local_embeddings import LocalEmbedder, missing_packages
from spine.platform.settings import LocalEmbeddingSettings
from support.fake_models import FakeModelServer, Rule, fake_embedding
from support.live_platform import RunningPlatform, running_platform
from support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

OLLAMA_EMBED, PRICED = "nomic-embed-text", "priced-embed"
PRICE = Decimal("0.001")
needs_local_model = pytest.mark.skipif(
    bool(missing_packages()),
    reason=f"the [embed] extra is not installed (missing {', '.join(missing_packages())})",
)


@contextlib.asynccontextmanager
async def gateway(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path, **overrides: Any
) -> AsyncIterator[RunningPlatform]:
    """A platform with OpenAI behind Ollama and a priced embedding model from a models file."""
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        f"  - name: {PRICED}\n"
        "    provider: openai\n"
        "    model: text-embedding-3-small\n"
        f"    api_base: {models.openai_url}\n"
        "    api_key: sk-test-dummy\n"
        f'    input_price: "{PRICE}"\n'
        '    output_price: "0"\n'
        "    quality: 0.9\n"
        "    capabilities: {tools: false, json_output: false, embeddings: true,\n"
        "                   dimensions: 384, variable_dimensions: true}\n"
    )
    async with running_platform(
        services,
        pg_url,
        models,
        openai_api_key="sk-test-dummy",
        openai_base_url=models.openai_url,
        fallback_chain="ollama,openai",
        models_file=models_file,
        **overrides,
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def client_of(spine: RunningPlatform) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=spine.key, max_retries=0) as c:
        yield c


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    async with gateway(services, pg_url, models, tmp_path) as running:
        yield running


@pytest.fixture
async def client(spine: RunningPlatform) -> AsyncIterator[AsyncOpenAI]:
    async with client_of(spine) as c:
        yield c


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_ollama_embeds_for_the_official_client_in_base64_and_floats(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    texts = ["first text", "the second one"]
    # The official client asks for base64 unless told otherwise, and decodes it.
    raw = await client.embeddings.with_raw_response.create(model=OLLAMA_EMBED, input=texts)
    answer = raw.parse()
    assert answer.object == "list"
    assert answer.model == OLLAMA_EMBED
    assert [d.index for d in answer.data] == [0, 1]
    assert [d.embedding for d in answer.data] == [fake_embedding(t) for t in texts]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 5
    assert raw.headers["x-spine-provider"] == "ollama"
    assert raw.headers["x-spine-strategy"] == "explicit"
    assert (raw.headers["x-spine-cost"], raw.headers["x-spine-cache"]) == ("0", "bypass")
    call = models.last_call
    assert (call.request.path, call.request.api_key, call.request.kind) == (
        "/v1/embeddings",
        "ollama",
        "embed",
    )
    assert call.request.body["input"] == texts

    floats = await client.embeddings.create(
        model=OLLAMA_EMBED, input="first text", encoding_format="float"
    )
    assert floats.data[0].embedding == fake_embedding("first text")


async def test_openai_models_shorten_vectors_on_request(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    answer = await client.embeddings.create(
        model="openai/text-embedding-3-small", input="short", dimensions=64
    )
    assert len(answer.data[0].embedding) == 64
    assert answer.data[0].embedding == fake_embedding("short", 64)
    call = models.last_call
    assert (call.request.protocol, call.request.body["dimensions"]) == ("openai", 64)


async def test_auto_lets_the_strategy_choose_an_embedding_model(
    spine: RunningPlatform, client: AsyncOpenAI
) -> None:
    raw = await client.embeddings.with_raw_response.create(model="auto", input="anything")
    assert raw.headers["x-spine-strategy"] == "local_first"
    assert raw.headers["x-spine-provider"] == "ollama"  # local and free before the priced one
    quality = await spine.client.post(
        "/v1/embeddings",
        json={"model": "auto", "input": "anything"},
        headers={"X-Spine-Strategy": "quality"},
    )
    assert quality.status_code == 200, quality.text
    assert quality.headers["x-spine-strategy"] == "quality"
    assert quality.headers["x-spine-model"] == PRICED  # quality 0.9 beats Ollama's 0.5


async def test_a_failing_provider_falls_back_to_the_next_embedding_model(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    models.add(Rule(kind="embed", status=503, when=lambda r: r.api_key == "ollama"))
    raw = await client.embeddings.with_raw_response.create(model=OLLAMA_EMBED, input="x")
    assert raw.headers["x-spine-model"] == PRICED
    assert raw.headers["x-spine-fallback"].startswith(f"{OLLAMA_EMBED}>")
    assert raw.headers["x-spine-fallback"].endswith(f">{PRICED}")
    assert raw.parse().data[0].embedding == fake_embedding("x")


async def test_dimensions_are_refused_for_a_model_that_cannot_give_them(
    client: AsyncOpenAI, models: FakeModelServer
) -> None:
    with pytest.raises(openai.BadRequestError) as first:
        await client.embeddings.create(model=OLLAMA_EMBED, input="x", dimensions=64)
    assert first.value.body["param"] == "dimensions"  # type: ignore[index]
    assert "384" in first.value.message
    # The router learned the model's size: the next such request is refused without a call.
    calls = models.count(kind="embed")
    with pytest.raises(openai.BadRequestError) as second:
        await client.embeddings.create(model=OLLAMA_EMBED, input="x", dimensions=64)
    assert second.value.body["param"] == "dimensions"  # type: ignore[index]
    assert models.count(kind="embed") == calls
    same = await client.embeddings.create(model=OLLAMA_EMBED, input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": OLLAMA_EMBED, "input": ""}, 400, "input"),
        ({"model": OLLAMA_EMBED, "input": []}, 400, "input"),
        ({"model": OLLAMA_EMBED, "input": ["ok", "  "]}, 400, "input"),
        ({"model": OLLAMA_EMBED, "input": [1, 2, 3]}, 400, "input"),
        ({"model": OLLAMA_EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": OLLAMA_EMBED, "input": "x", "colour": "red"}, 400, "colour"),
        ({"model": OLLAMA_EMBED}, 400, "input"),
        ({"model": "llama3.2", "input": "x"}, 400, "model"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
    ],
)
async def test_bad_requests_name_the_parameter_in_openais_shape(
    spine: RunningPlatform,
    models: FakeModelServer,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    response = await spine.client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert models.count() == 0


async def test_embedding_calls_are_budgeted_and_recorded(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    async with (
        gateway(services, pg_url, models, tmp_path, budget_daily="0.01") as spine,
        client_of(spine) as client,
    ):
        costs: list[Decimal] = []
        tokens = 0
        with pytest.raises(openai.RateLimitError) as refused:
            for i in range(20):
                raw = await client.embeddings.with_raw_response.create(
                    model=PRICED, input=[f"text number {i}", "and one more"]
                )
                costs.append(Decimal(raw.headers["x-spine-cost"]))
                tokens += raw.parse().usage.prompt_tokens
        assert refused.value.code == "budget_exceeded"
        assert 1 <= len(costs) < 20
        assert all(cost == PRICE * 6 for cost in costs)  # 6 words: the fake's tokens
        assert sum(costs) <= Decimal("0.01")
        assert models.count(kind="embed") == len(costs)
        # A free model is not held back by the spent budget.
        free = await client.embeddings.with_raw_response.create(model=OLLAMA_EMBED, input="x")
        assert free.headers["x-spine-cost"] == "0"

        body = (await spine.client.get("/v1/usage", params={"group_by": "model"})).json()
        by_model = {row["model"]: row for row in body["data"]}
        priced = by_model[PRICED]
        assert Decimal(priced["cost"]) == sum(costs)
        assert priced["input_tokens"] == tokens
        assert (priced["output_tokens"], priced["calls"], priced["errors"]) == (
            0,
            len(costs) + 1,
            1,
        )
        assert (by_model[OLLAMA_EMBED]["calls"], by_model[OLLAMA_EMBED]["cost"]) == (1, "0")


async def test_concurrent_embedding_calls_never_overspend(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    # 200 characters each: a reservation of 50 tokens (4 characters a token) at the price.
    reservation = PRICE * 50
    budget = 3 * reservation + reservation / 2
    models.add(Rule(kind="embed", latency=1.0))
    async with (
        gateway(services, pg_url, models, tmp_path, budget_daily=str(budget)) as spine,
        client_of(spine) as client,
    ):
        outcomes = await asyncio.gather(
            *(
                client.embeddings.create(model=PRICED, input=f"{i:02d} " + "x" * 197)
                for i in range(12)
            ),
            return_exceptions=True,
        )
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        assert (len(answered), len(refused)) == (3, 9), outcomes
        usage = (await spine.client.get("/v1/usage")).json()["total"]
        assert Decimal(usage["cost"]) <= budget
        assert (usage["calls"], usage["errors"]) == (12, 9)


# -- the local model -------------------------------------------------------------------------


@needs_local_model
async def test_the_local_model_embeds_in_its_own_thread() -> None:
    embedder = LocalEmbedder(LocalEmbeddingSettings(threads=1, batch_size=2))
    try:
        texts = [
            "The cat sits on the mat.",
            "A feline is resting on a rug.",
            "Quarterly revenue grew by five percent.",
        ]
        answer = await embedder.embed(texts)
        assert (answer.provider, answer.model, answer.dimensions) == (
            "local-embed",
            "all-minilm-l6-v2",
            384,
        )
        assert answer.input_tokens > 3 * 5
        assert all(math.isclose(cosine(v, v), 1.0, abs_tol=1e-5) for v in answer.vectors)
        cat, feline, revenue = answer.vectors
        assert cosine(cat, feline) > 0.4 > cosine(cat, revenue)
        # The same text gives the same vector, alone or in a batch of others.
        alone = await embedder.embed([texts[2]])
        assert cosine(alone.vectors[0], revenue) > 0.999
        assert any(t.name.startswith("local-embed") for t in threading.enumerate())
        assert threading.current_thread() is threading.main_thread()
    finally:
        embedder.close()


@needs_local_model
async def test_the_local_model_answers_when_nothing_else_embeds(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    # No Ollama answers and no models file: the only embedding model is the local one.
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with (
        running_platform(services, pg_url, models, ollama_url=nowhere) as spine,
        client_of(spine) as client,
    ):
        listed = {m.id async for m in client.models.list()}
        assert "all-minilm-l6-v2" in listed
        card = (await spine.client.get("/v1/models")).json()
        spec = next(m for m in card["data"] if m["id"] == "all-minilm-l6-v2")["spine"]
        assert (spec["provider"], spec["tags"], spec["input_price"]) == (
            "local-embed",
            ["local"],
            "0",
        )
        assert spec["capabilities"]["dimensions"] == 384
        raw = await client.embeddings.with_raw_response.create(
            model="auto", input=["The cat sits on the mat.", "A feline rests on a rug."]
        )
        assert raw.headers["x-spine-model"] == "all-minilm-l6-v2"
        answer = raw.parse()
        assert len(answer.data[0].embedding) == 384
        assert cosine(answer.data[0].embedding, answer.data[1].embedding) > 0.4
        response = await spine.client.post(
            "/v1/embeddings", json={"model": "auto", "input": "x", "encoding_format": "base64"}
        )
        decoded = struct.unpack("<384f", base64.b64decode(response.json()["data"][0]["embedding"]))
        assert len(decoded) == 384
        assert models.count() == 0
