"""Hybrid retrieval: vector hits → the entities their documents mention → the facts around them.

Events (CloudEvents over HTTP) build the graph through the EVENTS stream; a document names the
entity it is about in its metadata; ``POST /v1/search/hybrid`` joins the two, per tenant.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from support.fake_models import FakeModelServer
from support.knowledge import delete_event_streams, event_consumers, knowledge, tenant_name
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    await delete_event_streams(services.nats_url)
    async with (
        running_platform(
            services,
            pg_url,
            models,
            knowledge=knowledge(),
            documents={"chunk_chars": 400, "overlap_chars": 40, "retry_after": 1},
        ) as running,
        event_consumers(running.platform),
    ):
        yield running


def hired(person: str, name: str, company: str, company_name: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/hr",
        "type": "com.example.person.hired",
        "data": {
            "person": {"id": person, "name": name},
            "company": {"id": company, "name": company_name},
            "role": "engineer",
        },
    }


async def until(probe: Any, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def tenant_client(spine: RunningPlatform) -> httpx.AsyncClient:
    key = await spine.new_key(tenant_name("hy"))
    return httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


async def test_passages_come_with_the_entities_they_mention_and_the_facts_around_them(
    spine: RunningPlatform,
) -> None:
    async with await tenant_client(spine) as client, await tenant_client(spine) as stranger:
        ada = hired("ada", "Ada Lovelace", "ae", "Analytical Engines")
        # Its event id holds "ada", as 1 random hex id in ~140 does: the company this event
        # wrote (with that id as provenance) is not "named in the query" for that.
        ada["id"] = f"ada{uuid.uuid4().hex}"
        grace = hired("grace", "Grace Hopper", "navy", "Navy Labs")
        for event in (ada, grace):
            sent = await client.post(
                "/v1/events",
                json=event,
                headers={"Content-Type": "application/cloudevents+json"},
            )
            assert sent.status_code == 202, sent.text

        async def ingested() -> bool:
            found = await client.get("/v1/graph/nodes/Person:ada/neighbors")
            return found.status_code == 200 and len(found.json()["edges"]) == 1

        await until(ingested)
        added = await client.post(
            "/v1/documents",
            json={
                "text": "Ada wrote the first published program, for the Analytical Engine.",
                "source": "notes/ada.md",
                "metadata": {"entities": ["Person:ada"], "topic": "history"},
            },
        )
        assert added.status_code == 202, added.text
        document = added.json()["id"]

        async def embedded() -> bool:
            body = (await client.get(f"/v1/documents/{document}")).json()
            return bool(body["status"] == "embedded")

        await until(embedded)
        response = await client.post(
            "/v1/search/hybrid", json={"query": "What did Grace Hopper and Ada write?", "k": 3}
        )
        assert response.status_code == 200, response.text
        result = response.json()

        assert [p["document_id"] for p in result["passages"]] == [document]
        assert result["passages"][0]["mentions"] == ["Person:ada"]
        assert result["passages"][0]["source"] == "notes/ada.md"
        entities = {e["node"]["id"]: e for e in result["entities"]}
        assert set(entities) == {"Person:ada", "Person:grace"}
        # Ada: mentioned by the passage and named in the query; Grace: named only.
        assert entities["Person:ada"]["via"] == [f"document:{document}", "named in the query"]
        assert entities["Person:ada"]["score"] > entities["Person:grace"]["score"]
        assert entities["Person:grace"]["via"] == ["named in the query"]
        facts = {
            (f["edge"]["source"], f["edge"]["type"], f["edge"]["target"]) for f in result["facts"]
        }
        assert facts == {
            ("Person:ada", "WORKS_AT", "Company:ae"),
            ("Person:grace", "WORKS_AT", "Company:navy"),
        }
        provenance = {f["edge"]["source"]: f["provenance"] for f in result["facts"]}
        assert provenance["Person:ada"]["event_id"] == ada["id"]
        assert provenance["Person:grace"]["event_id"] == grace["id"]

        # Another tenant asking the same finds nothing of this one's.
        other = await stranger.post(
            "/v1/search/hybrid", json={"query": "What did Grace Hopper and Ada write?"}
        )
        assert other.status_code == 200, other.text
        assert other.json() == {
            "passages": [],
            "entities": [],
            "facts": [],
            "graph": {
                "nodes": [],
                "edges": [],
                "truncated": False,
            },
        }
