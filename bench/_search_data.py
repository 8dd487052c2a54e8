"""The search bench's data, its API process, and the calls it times.

The chunks are synthetic but their vectors live where the model's do: a few hundred topic
sentences are embedded by the real local model (in the bench process), and every chunk's vector
is one topic's vector plus noise, normalised, so that the queries (other sentences from the same
vocabulary, embedded by the API) land among them rather than in an empty part of the sphere.
A chunk's text is its topic sentence and a few more, about as long as a real chunk's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from _harness import Harness, free_port

MODEL = "all-minilm-l6-v2"  # the local model's name in the catalog

# fmt: off
_ADJECTIVES = [
    "late", "quarterly", "annual", "failed", "urgent", "missing", "refunded", "secure",
    "encrypted", "shared", "remote", "monthly", "private", "public", "legacy", "new", "broken",
    "stable", "slow", "fast", "expired", "pending", "approved", "rejected", "international",
    "domestic", "wholesale", "retail", "seasonal", "hourly", "nightly",
]
_NOUNS = [
    "invoice", "order", "refund", "password", "account", "shipment", "warehouse", "contract",
    "payment", "budget", "server", "database", "backup", "report", "meeting", "customer",
    "supplier", "employee", "laptop", "license", "policy", "ticket", "release", "deployment",
    "certificate", "firewall", "printer", "schedule", "holiday", "salary", "expense", "audit",
    "forecast", "campaign", "newsletter", "webinar", "subscription", "discount", "delivery",
    "container", "pallet", "truck", "route", "driver", "inventory", "catalog", "price", "tax",
]
_VERBS = [
    "delays", "blocks", "needs", "updates", "cancels", "approves", "reviews", "ships",
    "replaces", "tracks", "reports", "renews", "escalates", "merges", "archives", "restores",
    "audits",
]
# fmt: on
_PLACES = [
    *"Berlin Lisbon Toronto Osaka Nairobi Lima Oslo Austin Dublin Seoul".split(),  # noqa: SIM905
    "the head office",
    "the data centre",
    "the north depot",
    "the call centre",
]


def sentences(count: int, *, seed: int, words: int = 0) -> list[str]:
    """Return ``count`` distinct plausible sentences (short queries when ``words`` is 0)."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    found: list[str] = []
    while len(found) < count:
        pick = [
            _ADJECTIVES[rng.integers(len(_ADJECTIVES))],
            _NOUNS[rng.integers(len(_NOUNS))],
            _VERBS[rng.integers(len(_VERBS))],
            _ADJECTIVES[rng.integers(len(_ADJECTIVES))],
            _NOUNS[rng.integers(len(_NOUNS))],
            _PLACES[rng.integers(len(_PLACES))],
        ]
        text = f"the {pick[0]} {pick[1]} {pick[2]} the {pick[3]} {pick[4]} in {pick[5]}"
        if words:
            text = " ".join(text.split()[:words])
        if text not in seen:
            seen.add(text)
            found.append(text)
    return found


@dataclass(slots=True, kw_only=True)
class Corpus:
    """The chunks' vectors and texts, and the queries with their exact answers."""

    vectors: np.ndarray
    topics: list[str]
    picked: np.ndarray
    queries: list[str]
    query_vectors: np.ndarray

    def text(self, row: int) -> str:
        """The chunk's text: its topic sentence and three of its neighbours' (~250 chars)."""
        n = len(self.topics)
        topic = int(self.picked[row])
        extra = ". ".join(self.topics[(topic + 7 * i + row) % n] for i in range(1, 4))
        return f"{self.topics[topic].capitalize()}. {extra.capitalize()}. (chunk {row})"

    def exact(self, query: int, k: int) -> list[int]:
        scores = self.vectors @ self.query_vectors[query]
        best = np.argpartition(-scores, k)[:k]
        return [int(i) for i in best[np.argsort(-scores[best])]]


def build_corpus(
    embed: Any, *, count: int, topics: int, queries: int, spread: float, seed: int = 11
) -> Corpus:
    """Embed ``topics`` sentences and ``queries`` short queries, scatter ``count`` chunks."""
    topic_texts = sentences(topics, seed=seed)
    query_texts = sentences(queries, seed=seed + 1, words=6)
    centres = np.asarray(embed(topic_texts), dtype=np.float32)
    # One at a time, as the API embeds a query: a padded batch gives slightly other vectors.
    query_vectors = np.asarray([embed([q])[0] for q in query_texts], dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, topics, size=count)
    noise = rng.standard_normal((count, centres.shape[1])).astype(np.float32)
    points: np.ndarray = centres[picked] + noise * (spread / np.sqrt(centres.shape[1]))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return Corpus(
        vectors=points.astype(np.float32),
        topics=topic_texts,
        picked=picked,
        queries=query_texts,
        query_vectors=query_vectors,
    )


def spawn_api(harness: Harness, extra_env: dict[str, str]) -> None:
    """Start ``spine api`` on the embedded servers, the local embedding model its only model."""
    port = free_port()
    harness.api_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        GENAI_DATABASE_URL=harness.endpoints.database_url,
        GENAI_NATS_URL=harness.endpoints.nats_url,
        GENAI_LOCAL_EMBEDDING__ENABLED="true",
        GENAI_API__HOST="127.0.0.1",
        GENAI_API__PORT=str(port),
        GENAI_DATA_DIR=str(harness.tmp / "data"),
        GENAI_LOG_LEVEL="WARNING",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    env.update(extra_env)
    harness.env = env
    harness.spawn("api", [sys.executable, "-m", "spine.platform.app.cli", "api"])


NEAREST_SQL = """
SELECT c.document_id, c.seq, c.text, c.heading, c.metadata, d.source,
       c.embedding <=> $1 AS distance
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE c.tenant = $2 AND c.model = $3 AND c.embedding IS NOT NULL
ORDER BY c.embedding <=> $1
LIMIT $4
"""


class BareSql:
    """The floor of the nearest-neighbour part: one prepared statement, one round trip.

    The HNSW scan with the shipped ``ef_search`` (a session setting, not a transaction's), the
    same columns as the store's search, nothing re-ranked.
    """

    def __init__(self, connection: Any, *, tenant: str, ef_search: int) -> None:
        self._connection = connection
        self._tenant = tenant
        self._ef_search = ef_search
        self._statement: Any = None

    async def prepare(self) -> None:
        from pgvector.asyncpg import register_vector

        await register_vector(self._connection)
        await self.set_ef_search(self._ef_search)
        self._statement = await self._connection.prepare(NEAREST_SQL)

    async def set_ef_search(self, ef_search: int) -> None:
        await self._connection.execute(f"SET hnsw.ef_search = {int(ef_search)}")

    async def nearest(self, vector: np.ndarray, k: int) -> list[Any]:
        rows: list[Any] = await self._statement.fetch(vector, self._tenant, MODEL, k)
        return rows
