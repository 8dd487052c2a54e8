"""The search's hot path: the driver-level query, the query-vector cache, the local model's
single-query path.

2,000 synthetic vectors (``support.vectors``) belong to one tenant, copies of 200 of them to
another. The store searches them
through the pooled connection's asyncpg driver; the reference is the SQLAlchemy statement
:func:`nearest_statement` builds, run with the same scan settings. Query vectors come from a
fake model-call layer that counts its calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from spine.platform.db import Database
from spine.platform.documents.store import DocumentStore
from spine.platform.documents.vector_search import SearchQuery, nearest_statement, scan_settings
from spine.platform.errors import BadRequest, UnknownModel
from spine.platform.metering import CallContext, MeteredEmbedding
from spine.platform.models import Embedding, EmbeddingRequest
from spine.platform.models.local_embeddings import LocalEmbedder, missing_packages
from spine.platform.settings import DocumentSettings, LocalEmbeddingSettings
from support.databases import create_database
from support.vectors import clustered_vectors, load_chunks

pytestmark = pytest.mark.integration

COUNT, K = 2_000, 10
TENANT, OTHER, MODEL = "acme", "globex", "synthetic"


def metadata(row: int) -> dict[str, Any]:
    return {"tenth": row % 10}


@dataclass
class CountingCalls:
    """The model calls the store makes: each query text maps to a fixed vector."""

    vectors: dict[str, list[float]]
    catalog: set[str] = field(default_factory=lambda: {MODEL})
    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def router(self) -> Any:
        return SimpleNamespace(catalog=self.catalog)

    async def embed(self, request: EmbeddingRequest, context: CallContext) -> MeteredEmbedding:
        assert request.model is not None
        if request.model not in self.catalog:
            raise UnknownModel(f"no model {request.model!r}", field="model")
        self.calls.append((context.tenant, request.texts[0]))
        vectors = [self.vectors[text] for text in request.texts]
        answer = Embedding(vectors=vectors, model=request.model, provider="fake")
        return MeteredEmbedding(embedding=answer, cost=Decimal(0))


@dataclass
class Corpus:
    db: Database
    queries: np.ndarray


@pytest.fixture(scope="module")
async def corpus(services: Any) -> AsyncIterator[Corpus]:
    url = create_database(services.database_url)
    db = Database(url)
    await db.migrate()
    every = clustered_vectors(COUNT + 10, clusters=50, seed=5)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    await load_chunks(dsn, every[:COUNT], tenant=TENANT, model=MODEL, metadata=metadata)
    await load_chunks(dsn, every[:200], tenant=OTHER, model=MODEL, metadata=metadata)
    yield Corpus(db=db, queries=every[COUNT:])
    await db.dispose()


def store_of(corpus: Corpus, calls: CountingCalls | None = None, **settings: Any) -> DocumentStore:
    return DocumentStore(corpus.db, settings=DocumentSettings(**settings), calls=calls)  # type: ignore[arg-type]


@pytest.mark.parametrize("filter", [{}, {"tenth": 3}], ids=["no filter", "10% pass"])
async def test_the_driver_query_finds_what_the_reference_statement_finds(
    corpus: Corpus, filter: dict[str, Any]
) -> None:
    settings = DocumentSettings()
    store = store_of(corpus)
    for query in corpus.queries:
        hits = await store.nearest(
            query.tolist(), SearchQuery(query="q", k=K, filter=filter), TENANT, MODEL
        )
        statement = nearest_statement(
            query.tolist(), tenant=TENANT, model=MODEL, k=K, metadata=filter,
            oversample=settings.oversample,
        )  # fmt: skip
        async with corpus.db.transaction() as conn:
            await scan_settings(
                conn,
                ef_search=max(settings.ef_search, K * settings.oversample),
                max_scan_tuples=settings.max_scan_tuples,
            )
            rows = (await conn.execute(statement)).all()
        assert len(hits) == K
        assert [(h.document_id, h.chunk) for h in hits] == [(r.document_id, r.seq) for r in rows]
        for hit, row in zip(hits, rows, strict=True):
            assert hit.score == pytest.approx(1.0 - row.distance, abs=1e-6)
            assert (hit.text, hit.metadata, hit.source) == (row.text, row.metadata, "synthetic")
            assert not filter or hit.metadata["tenth"] == filter["tenth"]


async def test_a_vector_of_the_wrong_size_is_a_bad_request_and_the_pool_stays_usable(
    corpus: Corpus,
) -> None:
    store = store_of(corpus)
    with pytest.raises(BadRequest):
        await store.nearest([0.1, 0.2, 0.3], SearchQuery(query="q", k=K), TENANT, MODEL)
    # Every pooled connection still answers (none was left inside a failed transaction).
    for query in corpus.queries:
        assert len(await store.nearest(query.tolist(), SearchQuery(query="q"), TENANT, MODEL))


async def test_a_repeated_query_is_embedded_once_per_tenant(corpus: Corpus) -> None:
    calls = CountingCalls({"alpha": corpus.queries[0].tolist(), "beta": corpus.queries[1].tolist()})
    store = store_of(corpus, calls)
    mine, theirs = CallContext(tenant=TENANT), CallContext(tenant=OTHER)
    first = await store.search(SearchQuery(query="alpha"), mine)
    again = await store.search(SearchQuery(query="alpha"), mine)
    assert [h.document_id for h in again.hits] == [h.document_id for h in first.hits]
    assert len(first.hits) == K and first.models == [MODEL]
    await store.search(SearchQuery(query="beta"), mine)
    # Another tenant's same query is embedded again: no tenant can time another's searches.
    assert len((await store.search(SearchQuery(query="alpha"), theirs)).hits) == K
    await store.search(SearchQuery(query="alpha"), theirs)
    assert calls.calls == [(TENANT, "alpha"), (TENANT, "beta"), (OTHER, "alpha")]


async def test_the_cache_keeps_the_most_recent_queries_and_can_be_turned_off(
    corpus: Corpus,
) -> None:
    texts = {name: corpus.queries[i].tolist() for i, name in enumerate("abc")}
    calls = CountingCalls(texts)
    store = store_of(corpus, calls, query_cache=2)
    for text in ["a", "b", "a", "c", "b", "a"]:
        await store.search(SearchQuery(query=text), CallContext(tenant=TENANT))
    # "c" pushed out "b" (the least recently used), then "b" pushed out "a".
    assert [text for _, text in calls.calls] == ["a", "b", "c", "b", "a"]
    uncached = CountingCalls(texts)
    store = store_of(corpus, uncached, query_cache=0)
    for _ in range(2):
        await store.search(SearchQuery(query="a"), CallContext(tenant=TENANT))
    assert len(uncached.calls) == 2


async def test_a_model_no_longer_configured_is_reported_missing_even_when_cached(
    corpus: Corpus,
) -> None:
    calls = CountingCalls({"alpha": corpus.queries[0].tolist()})
    store = store_of(corpus, calls)
    assert len((await store.search(SearchQuery(query="alpha"), CallContext(tenant=TENANT))).hits)
    calls.catalog.clear()
    gone = await store.search(SearchQuery(query="alpha"), CallContext(tenant=TENANT))
    assert (gone.hits, gone.models, gone.missing_models) == ([], [], [MODEL])


@pytest.mark.skipif(bool(missing_packages()), reason="the [embed] extra is not installed")
async def test_the_local_model_warms_up_and_embeds_a_query_as_it_does_in_a_batch() -> None:
    embedder = LocalEmbedder(LocalEmbeddingSettings(threads=1))
    try:
        await embedder.warm_up()
        texts = ["the late invoice delays the order", "password reset for a locked account"]
        alone = (await embedder.embed(texts[:1])).vectors[0]
        batch = (await embedder.embed(texts)).vectors[0]
        assert len(alone) == 384
        assert float(np.dot(alone, batch)) > 0.999
        assert float(np.linalg.norm(alone)) == pytest.approx(1.0, abs=1e-5)
    finally:
        embedder.close()
