"""Rate limits on a running platform: the gateway's 429s and headers, a key's limits over the
admin API, and tasks over their tenant's running limit waiting until a slot frees."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from spine.platform.schema import TaskRow
from support.cli import in_process_cli
from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform
from support.servers import BackingServices

pytestmark = pytest.mark.integration


def _limits(**values: Any) -> dict[str, Any]:
    # Tests share one Redis: each counts under its own prefix.
    return {"prefix": f"spine:test-limits:{uuid.uuid4().hex}", **values}


def _key_id(secret: str) -> str:
    return secret.split("_")[1]


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **extra}


async def _ask(spine: RunningPlatform, secret: str, text: str, **extra: Any) -> Any:
    return await spine.client.post(
        "/v1/chat/completions",
        json=_chat(text, **extra),
        headers={"Authorization": f"Bearer {secret}"},
    )


async def test_a_keys_limit_set_over_the_admin_api_answers_429_with_openai_headers(
    services: BackingServices, pg_url: str, models: FakeModelServer
) -> None:
    limits = _limits(tenant_tokens_per_minute=1_000_000)
    async with running_platform(services, pg_url, models, workers=0, limits=limits) as spine:
        member = await spine.new_key("acme")
        key_id = _key_id(member)
        own = {"Authorization": f"Bearer {member}"}
        refused = await spine.client.put(
            f"/v1/keys/{key_id}/limits", json={"requests_per_minute": 100}, headers=own
        )
        assert refused.status_code == 403, refused.text
        put = await spine.client.put(f"/v1/keys/{key_id}/limits", json={"requests_per_minute": 2})
        assert put.status_code == 200, put.text
        assert put.json()["effective"] == {"requests_per_minute": 2, "tokens_per_minute": None}
        assert put.json()["tenant_limits"]["tokens_per_minute"] == 1_000_000
        read = await spine.client.get(f"/v1/keys/{key_id}/limits", headers=own)
        assert read.json()["own"] == {"requests_per_minute": 2, "tokens_per_minute": None}

        first = await _ask(spine, member, "one")
        second = await _ask(spine, member, "two", stream=True)
        third = await _ask(spine, member, "three")
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "1000000"
        used = 1_000_000 - int(first.headers["x-ratelimit-remaining-tokens"])
        assert used == first.json()["usage"]["total_tokens"] > 0
        assert second.status_code == 200
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        assert second.text.rstrip().endswith("data: [DONE]")
        assert third.status_code == 429, third.text
        error = third.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert 1 <= int(third.headers["Retry-After"]) <= 60
        assert third.headers["x-ratelimit-remaining-requests"] == "0"
        assert models.count(containing="three") == 0

        # The stream's tokens were counted when it ended, on the tenant's window.
        other = await spine.new_key("acme")
        after = await _ask(spine, other, "four")
        remaining = int(after.headers["x-ratelimit-remaining-tokens"])
        assert remaining < 1_000_000 - used - after.json()["usage"]["total_tokens"]
        assert "x-ratelimit-limit-requests" not in after.headers

        audit = await spine.client.get("/v1/audit", params={"action": "key.limits"})
        outcomes = sorted(row["outcome"] for row in audit.json()["data"])
        assert outcomes == ["denied", "ok"]


async def test_tokens_are_counted_after_each_call_and_refuse_the_next(
    services: BackingServices, pg_url: str, models: FakeModelServer
) -> None:
    limits = _limits(key_tokens_per_minute=5)
    async with running_platform(services, pg_url, models, workers=0, limits=limits) as spine:
        first = await spine.client.post("/v1/chat/completions", json=_chat("count my tokens"))
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["total_tokens"] > 5
        assert first.headers["x-ratelimit-remaining-tokens"] == "0"
        second = await spine.client.post("/v1/chat/completions", json=_chat("and these"))
        assert second.status_code == 429, second.text
        assert second.json()["error"]["type"] == "tokens"
        assert int(second.headers["Retry-After"]) >= 1


@pytest.mark.usefixtures("clean_jetstream")
async def test_tasks_over_their_tenants_running_limit_wait_queued_and_all_finish(
    services: BackingServices, pg_url: str, models: FakeModelServer
) -> None:
    models.add(Rule(containing="slow task", latency=0.4))
    limits = _limits(tenant_running_tasks=2, task_wait=0.1, task_wait_max=0.4)
    async with running_platform(services, pg_url, models, workers=1, limits=limits) as spine:
        ids = []
        for n in range(6):
            body = {"agent": "chat", "input": {"prompt": f"slow task {n}"}}
            response = await spine.client.post("/v1/tasks", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

        running = sa.select(sa.func.count()).where(
            TaskRow.tenant == "acme", TaskRow.state == "running"
        )
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                async with spine.platform.db.session() as session:
                    most = max(most, (await session.execute(running)).scalar_one())
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            finished = [await spine.wait_for(task_id, timeout=30) for task_id in ids]
        finally:
            watcher.cancel()
        assert [task["state"] for task in finished] == ["succeeded"] * 6
        assert most == 2  # the worker could run 8 at once: the tenant's limit held it to 2
        assert [task["attempts"] for task in finished] == [1] * 6  # waiting is no attempt


def test_spine_keys_limits_sets_shows_and_drops_a_keys_own_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spine = in_process_cli(tmp_path, monkeypatch)

    created = spine("keys", "create", "--tenant", "acme")
    key_id = re.search(r"\bspn_([0-9a-f]{12})_", created)
    assert key_id is not None
    assert "requests default, tokens default" in spine("keys", "limits", key_id[1])
    assert "requests 30/min, tokens default" in spine("keys", "limits", key_id[1], "--rpm", "30")
    shown = spine("keys", "limits", key_id[1], "--tpm", "0")
    assert "requests 30/min, tokens no limit" in shown
    rotated = re.search(r"successor ([0-9a-f]{12})", spine("keys", "rotate", key_id[1]))
    assert rotated is not None
    assert "requests 30/min" in spine("keys", "limits", rotated[1])  # kept by its successor
    assert "requests default" in spine("keys", "limits", rotated[1], "--default")
    assert spine("audit", "--action", "key.limits").count("key.limits") == 3
