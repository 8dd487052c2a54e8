"""``spine publish``, ``spine graph neighbors`` and ``spine graph query`` as subprocesses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from support.cli import cli_env, spine
from support.fake_models import FakeModelServer
from support.knowledge import (
    clear_tenants,
    delete_event_streams,
    event_consumers,
    eventually,
    knowledge,
)
from support.live_platform import running_platform

pytestmark = pytest.mark.integration


async def test_publish_then_explore_from_the_command_line(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    await delete_event_streams(services.nats_url)
    data = tmp_path / "hire.json"
    data.write_text(
        json.dumps({"person": {"id": 31, "name": "Cli Person"}, "company": {"id": "cli-co"}})
    )
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge()
    ) as running:
        await clear_tenants(running.platform, "acme")
        env = cli_env(GENAI_API_URL=running.url, GENAI_API_KEY=running.key)
        published = await spine(
            "publish",
            "com.example.person.hired",
            "--data",
            f"@{data}",
            "--id",
            "cli-1",
            env=env,
            cwd=tmp_path,
        )
        assert published.code == 0, published.both
        assert "event cli-1 accepted" in published.out

        async def mapped() -> bool:
            page = (await running.client.get("/v1/events")).json()["data"]
            return bool(page) and page[0]["status"] == "mapped"

        async with event_consumers(running.platform):
            await eventually(mapped, bool)
        neighbors, query, bad = await asyncio.gather(
            spine("graph", "neighbors", "Person:31", env=env, cwd=tmp_path),
            spine(
                "graph",
                "query",
                "MATCH (p:Person {tenant: $tenant, uid: $uid})-[:WORKS_AT]->(c) RETURN c.id AS company",
                "--param",
                "uid=Person:31",
                env=env,
                cwd=tmp_path,
            ),
            spine("graph", "query", "MATCH (n) DETACH DELETE n", env=env, cwd=tmp_path),
        )
    assert neighbors.code == 0, neighbors.both
    assert "Company:cli-co" in neighbors.out
    assert "WORKS_AT" in neighbors.out
    assert query.code == 0, query.both
    assert "cli-co" in query.out
    assert bad.code == 1
    assert "query_rejected" in bad.err
