"""Documents and vector search over HTTP, on PostgreSQL with pgvector.

Embeddings come from the fake model server (Ollama's ``nomic-embed-text``): a text's vector is a
deterministic hash of it, so a query equal to a chunk's embedded text (its heading path, a blank
line, its text) finds that chunk with a score of 1, and unrelated texts score near 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from spine.platform.router import BreakerPolicy, ModelHealth
from spine.tools import ToolContext
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

EMBED_MODEL = "nomic-embed-text"
GUIDE = """\
# Operations guide

Restart the ingestion workers when the queue grows past ten thousand events.

## Backups

Backups run nightly at two o'clock and are kept for thirty days.

## On call

The on-call engineer answers pages within fifteen minutes.
"""


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    documents = {"max_bytes": 4096, "chunk_chars": 200, "overlap_chars": 40, "retry_after": 1}
    async with running_platform(services, pg_url, models, documents=documents) as running:
        # Breakers that cool down in half a second, so a provider's return is seen at once.
        for platform in (running.platform, *running.workers):
            platform.router.health = ModelHealth(policy=BreakerPolicy(cooldown=0.5))
        yield running


async def add(client: httpx.AsyncClient, text: str = GUIDE, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/documents", json={"text": text, **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/documents/{body['id']}"
    return body


async def wait_for(
    client: httpx.AsyncClient, document_id: str, status: str = "embedded", timeout: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/documents/{document_id}")).json()
        if body["status"] == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"document {document_id} still {body} after {timeout}s")
        await asyncio.sleep(0.1)


async def search(client: httpx.AsyncClient, query: str, **fields: Any) -> list[dict[str, Any]]:
    response = await client.post("/v1/search", json={"query": query, **fields})
    assert response.status_code == 200, response.text
    hits: list[dict[str, Any]] = response.json()["hits"]
    return hits


def as_embedded(hit_or_chunk: dict[str, Any]) -> str:
    heading, text = hit_or_chunk["heading"], hit_or_chunk["text"]
    return f"{heading}\n\n{text}" if heading else str(text)


async def test_a_document_is_queued_embedded_searched_and_deleted(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    client = spine.client
    added = await add(client, source="ops.md", metadata={"team": "ops", "year": 2024})
    # Queued as a rule; already embedded when the worker was done before the reply was built.
    assert added["status"] in ("queued", "embedded")
    assert (added["source"], added["format"], added["metadata"]) == (
        "ops.md",
        "markdown",
        {"team": "ops", "year": 2024},
    )
    assert added["size"] == len(GUIDE.encode())
    assert added["chunk_count"] == 3
    assert added["model"] == EMBED_MODEL
    assert added["task_id"]

    done = await wait_for(client, added["id"])
    assert done["embedded_at"] is not None
    assert done["attempts"] == 0
    # The document is marked embedded by its task, which ends a moment later.
    task = await spine.wait_for(added["task_id"])
    assert (task["agent"], task["state"]) == ("embed_document", "succeeded")
    assert task["result"]["chunks"] == 3
    embedded = [c for c in models.calls(kind="embed")]
    assert len(embedded) == 1  # one batch: every chunk in one call
    assert "Operations guide > Backups\n\nBackups run nightly" in embedded[0].prompt

    query = "Operations guide > Backups\n\nBackups run nightly at two o'clock and are kept for thirty days."
    hits = await search(client, query, k=2)
    assert len(hits) == 2
    best = hits[0]
    assert (best["document_id"], best["chunk"], best["heading"]) == (
        added["id"],
        1,
        "Operations guide > Backups",
    )
    assert best["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[1]["score"] < 0.5
    assert (best["source"], best["metadata"], best["model"]) == (
        "ops.md",
        {"team": "ops", "year": 2024},
        EMBED_MODEL,
    )
    listed = (await client.get("/v1/documents")).json()["data"]
    assert [d["id"] for d in listed] == [added["id"]]

    deleted = await client.delete(f"/v1/documents/{added['id']}")
    assert deleted.status_code == 204
    assert (await client.get(f"/v1/documents/{added['id']}")).status_code == 404
    assert (await client.delete(f"/v1/documents/{added['id']}")).status_code == 404
    assert await search(client, query) == []
    usage = (await client.get("/v1/usage", params={"group_by": "model"})).json()
    assert {row["model"] for row in usage["data"]} == {EMBED_MODEL}


async def test_metadata_filters_keep_only_matching_documents(spine: RunningPlatform) -> None:
    client = spine.client
    ops = await add(client, "Ops note: rotate the certificates.", metadata={"team": "ops"})
    dev = await add(
        client, "Dev note: rotate the signing keys.", metadata={"team": "dev", "tier": 1}
    )
    old = await add(client, "Dev note: the old build server.", metadata={"team": "dev", "tier": 2})
    for document in (ops, dev, old):
        await wait_for(client, document["id"])

    query = "Ops note: rotate the certificates."
    assert (await search(client, query, k=1))[0]["document_id"] == ops["id"]
    hits = await search(client, query, filter={"team": "dev"})
    assert {h["document_id"] for h in hits} == {dev["id"], old["id"]}
    narrow = await search(client, query, filter={"team": "dev", "tier": 2})
    assert [h["document_id"] for h in narrow] == [old["id"]]
    assert await search(client, query, filter={"team": "finance"}) == []


async def test_the_list_of_documents_pages_through_every_one(spine: RunningPlatform) -> None:
    # A limit of 200 with no cursor once left every older document out of reach.
    client = spine.client
    added = {(await add(client, f"Note number {n}."))["id"] for n in range(7)}
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/documents", params=params)).json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(seen) >= added and len(seen) == len(set(seen))
    bad = await client.get("/v1/documents", params={"cursor": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cursor"


async def test_another_tenant_sees_nothing_on_any_read_path(spine: RunningPlatform) -> None:
    mine = await add(spine.client, metadata={"team": "ops"})
    await wait_for(spine.client, mine["id"])
    chunk_query = (
        "Operations guide > On call\n\nThe on-call engineer answers pages within fifteen minutes."
    )
    assert (await search(spine.client, chunk_query, k=1))[0]["document_id"] == mine["id"]

    secret = await spine.new_key("globex")
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as other:
        assert (await other.get(f"/v1/documents/{mine['id']}")).status_code == 404
        assert (await other.delete(f"/v1/documents/{mine['id']}")).status_code == 404
        assert (await other.get("/v1/documents")).json()["data"] == []
        assert await search(other, chunk_query) == []
        # With documents of its own, its searches still find only those.
        theirs = await add(other, "Globex keeps its own notes.", metadata={"team": "ops"})
        await wait_for(other, theirs["id"])
        hits = await search(other, chunk_query, k=10, filter={"team": "ops"})
        assert [h["document_id"] for h in hits] == [theirs["id"]]
        tasks = (await other.get("/v1/tasks", params={"agent": "embed_document"})).json()
        assert [t["input"]["document_id"] for t in tasks["data"]] == [theirs["id"]]

    # The agents' tool binds the caller's tenant too.
    tools = spine.workers[0].tools
    as_globex = await tools.call(
        "vector_search", {"query": chunk_query, "k": 5}, ToolContext(tenant="globex")
    )
    assert as_globex.ok, as_globex
    assert mine["id"] not in as_globex.content
    assert theirs["id"] in as_globex.content
    as_acme = await tools.call(
        "vector_search",
        {"query": chunk_query, "k": 1, "filter": {"team": "ops"}},
        ToolContext(tenant="acme", agent="researcher", task_id="t-1"),
    )
    assert as_acme.ok, as_acme
    assert mine["id"] in as_acme.content
    assert "fifteen minutes" in as_acme.content
    # ... and the documents still exist: the other tenant's delete did nothing.
    assert (await spine.client.get(f"/v1/documents/{mine['id']}")).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": ""}, 400, "text"),
        ({"text": " \n\n\t "}, 400, "text"),
        ({"text": "é" * 2049}, 413, "text"),  # 4,098 bytes in UTF-8: over 4,096
        ({"text": "x", "metadata": {"blob": "y" * 20_000}}, 413, "metadata"),
        ({"text": "nul \u0000 inside"}, 400, "text"),
        ({"text": "x", "metadata": {"k": ["a\u0000"]}}, 400, "metadata.k.0"),
        ({}, 422, "text"),
        ({"text": "x", "metadata": ["not", "an", "object"]}, 422, "metadata"),
        ({"text": "x", "format": "pdf"}, 422, "format"),
        ({"text": "x", "colour": "red"}, 422, "colour"),
    ],
)
async def test_bad_documents_are_refused_naming_the_field(
    spine: RunningPlatform, models: FakeModelServer, body: dict[str, Any], status: int, field: str
) -> None:
    response = await spine.client.post("/v1/documents", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.get("field") == field, error
    assert (await spine.client.get("/v1/documents")).json()["data"] == []
    assert models.count() == 0


async def test_a_body_over_the_size_limit_is_a_413(spine: RunningPlatform) -> None:
    huge = "x" * (1024 * 1024 + 1)  # past the API's body limit, before the text is read
    response = await spine.client.post("/v1/documents", json={"text": huge})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"query": "  "}, 400, "query"),
        ({"query": "x", "k": 0}, 422, "k"),
        ({"query": "x", "k": 101}, 422, "k"),
        ({"query": "x", "filter": "team=ops"}, 422, "filter"),
        ({}, 422, "query"),
    ],
)
async def test_bad_searches_are_refused_naming_the_field(
    spine: RunningPlatform, body: dict[str, Any], status: int, field: str
) -> None:
    response = await spine.client.post("/v1/search", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


async def test_a_document_waits_queued_while_the_provider_is_down_then_embeds(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(Rule(kind="embed", status=503, name="down"))
    added = await add(spine.client, "Written while the embedding provider is down.")
    first_task = added["task_id"]

    # The task retries with backoff, then gives up; the document stays queued.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        task = (await spine.client.get(f"/v1/tasks/{first_task}")).json()
        if task["state"] == "dead_lettered":
            break
        assert asyncio.get_running_loop().time() < deadline, task
        await asyncio.sleep(0.1)
    waiting = (await spine.client.get(f"/v1/documents/{added['id']}")).json()
    assert waiting["status"] == "queued"
    assert waiting["attempts"] >= 1
    assert waiting["error"]["retryable"] is True
    assert await search(spine.client, "Written while the embedding provider is down.") == []

    models.reset()  # the provider is back
    done = await wait_for(spine.client, added["id"], timeout=30)
    assert done["task_id"] != first_task  # a new task, submitted by the document sweeper
    assert done["error"] is None
    hits = await search(spine.client, "Written while the embedding provider is down.", k=1)
    assert hits[0]["document_id"] == added["id"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


async def test_on_sqlite_the_vector_store_says_it_needs_postgresql(
    services: Any, tmp_path: Any, models: FakeModelServer
) -> None:
    async with running_platform(services, f"sqlite:///{tmp_path}/genai.db", models) as spine:
        for method, path, body in (
            ("POST", "/v1/documents", {"text": "hello"}),
            ("POST", "/v1/search", {"query": "hello"}),
            ("GET", "/v1/documents/some-id", None),
        ):
            response = await spine.client.request(method, path, json=body)
            assert response.status_code == 501, (path, response.text)
            error = response.json()["error"]
            assert error["type"] == "not_supported"
            assert "PostgreSQL" in error["message"]
            assert error["field"] == "GENAI_DATABASE_URL"
        tools = (await spine.client.get("/v1/tools")).json()["data"]
        assert "vector_search" not in {tool["name"] for tool in tools}


async def test_a_search_while_the_provider_is_down_is_a_503(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    added = await add(spine.client, "Searchable once embedded.")
    await wait_for(spine.client, added["id"])
    models.add(Rule(kind="embed", status=503))
    response = await spine.client.post("/v1/search", json={"query": "anything"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "service_unavailable"
    models.reset()
    models.add(Rule(kind="embed", status=400, error="bad input for this model"))
    refused = await spine.client.post("/v1/search", json={"query": "anything else"})
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"]["type"] == "upstream_error"


async def test_with_no_embedding_model_adding_a_document_is_a_503_saying_what_to_set(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with running_platform(
        services,
        pg_url,
        models,
        ollama_url="http://127.0.0.1:9",  # nothing listens: no model is discovered
        local_embedding={"enabled": False},
    ) as spine:
        response = await spine.client.post("/v1/documents", json={"text": "hello"})
        assert response.status_code == 503, response.text
        assert "no configured model makes embeddings" in response.json()["error"]["message"]
        assert (await spine.client.get("/v1/documents")).json()["data"] == []
