"""A key's requests-per-minute limit holds across two API processes sharing one Redis.

The limit is the key's own, stored with it (the settings limit nobody), so a second key can
warm both processes up (router, model SDK) before the counted requests.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from spine.platform.db import Database
from spine.platform.keys import KeyStore
from spine.platform.limits import KeyLimits, KeyLimitStore
from support.cluster import (
    FAKE_MODEL,
    ApiProcess,
    distinct_ports,
    platform_env,
    running_processes,
    write_models_file,
)
from support.fake_models import FakeModelServer
from support.servers import BackingServices

pytestmark = pytest.mark.integration

LIMIT = 10
REQUESTS = 15


async def test_a_keys_limit_holds_globally_across_two_api_processes(
    services: BackingServices, pg_url: str, tmp_path: Path
) -> None:
    db = Database(pg_url)
    await db.migrate()
    issued = await KeyStore(db).create(tenant="acme", role="member")
    warm = (await KeyStore(db).create(tenant="acme")).secret
    await KeyLimitStore(db).set(issued.key.id, KeyLimits(requests_per_minute=LIMIT))
    await db.dispose()
    # One model, all of whose facts the models file gives: no process asks LiteLLM for any
    # (a LiteLLM child costs seconds of CPU per process).
    with FakeModelServer(models=[FAKE_MODEL]) as models:
        env = platform_env(
            database_url=pg_url,
            nats_url=services.nats_url,
            ollama_url=models.url,
            data_dir=tmp_path / "data",
            replicas=1,
            GENAI_REDIS_URL=services.redis_url,
            GENAI_LIMITS__PREFIX=f"spine:test-limits:{uuid.uuid4().hex}",
            GENAI_MODELS_FILE=str(write_models_file(tmp_path / "models.yaml")),
        )
        apis = [
            ApiProcess(f"api-{n}", env, tmp_path / f"api-{n}", port)
            for n, port in enumerate(distinct_ports(2), start=1)
        ]
        with running_processes(apis):
            await asyncio.gather(*(api.wait_ready(60) for api in apis))
            async with httpx.AsyncClient(timeout=60) as client:
                for api in apis:
                    warmed = await _ask(client, api.url, warm, "warm up")
                    assert warmed.status_code == 200, warmed.text
                    assert "x-ratelimit-limit-requests" not in warmed.headers
                answers = [  # alternating between the two processes
                    await _ask(client, apis[n % 2].url, issued.secret, f"request {n}")
                    for n in range(REQUESTS)
                ]
        assert models.count(containing="request") == LIMIT
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * LIMIT + [429] * (REQUESTS - LIMIT), [a.text for a in answers]
    remaining = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers]
    assert remaining == [*range(LIMIT - 1, -1, -1), *[0] * (REQUESTS - LIMIT)]
    for refused in answers[LIMIT:]:
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["x-ratelimit-limit-requests"] == str(LIMIT)


async def _ask(client: httpx.AsyncClient, url: str, secret: str, text: str) -> httpx.Response:
    return await client.post(
        f"{url}/v1/chat/completions",
        json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {secret}"},
    )
