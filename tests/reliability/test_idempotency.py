"""Twenty concurrent submissions with one Idempotency-Key make one task, run once."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy as sa

from spine.platform.schema import TaskRow
from support.fake_models import FakeModelServer
from support.live_platform import running_platform
from support.reliability import nats_url_of, own_nats, read_ledger, submit

pytestmark = pytest.mark.reliability

CONCURRENT = 20


async def test_concurrent_submissions_with_one_idempotency_key_make_exactly_one_task(
    services: Any, database_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    """``database_url`` is parametrised over SQLite and PostgreSQL (tests/conftest.py)."""
    key = f"order-{uuid.uuid4().hex}"
    prompt = f"charge the card once {key}"
    # The in-process worker imports LiteLLM (seconds, in a thread) in its first task: done
    # here first, so its import does not slow this event loop during the race.
    await asyncio.to_thread(importlib.import_module, "litellm")
    with own_nats(tmp_path / "nats") as stack:
        nats_url = nats_url_of(stack)
        async with running_platform(
            services, database_url, models, workers=1, nats_url=nats_url
        ) as spine:
            start = asyncio.Event()

            async def racer() -> Any:
                await start.wait()
                return await submit(spine.client, prompt, headers={"Idempotency-Key": key})

            racers = [asyncio.create_task(racer()) for _ in range(CONCURRENT)]
            await asyncio.sleep(0.05)
            start.set()
            responses = await asyncio.gather(*racers)

            assert [r.status_code for r in responses] == [202] * CONCURRENT, [
                (r.status_code, r.text) for r in responses
            ]
            ids = {r.json()["id"] for r in responses}
            assert len(ids) == 1, ids
            task_id = ids.pop()
            replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
            assert replayed.count(None) == 1 and replayed.count("true") == CONCURRENT - 1

            done = await spine.wait_for(task_id)
            listed = (await spine.client.get("/v1/tasks", params={"limit": 200})).json()
            async with spine.platform.db.session() as session:
                rows = (await session.execute(sa.select(TaskRow.id, TaskRow.idempotency_key))).all()
            ledger = await read_ledger(spine.platform.db)

        nc = await nats.connect(nats_url)
        try:
            published = (await nc.jetstream().stream_info("TASKS")).state.last_seq
        finally:
            await nc.close()

    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert [t["id"] for t in listed["data"]] == [task_id]
    assert listed["next_cursor"] is None
    assert rows == [(task_id, key)]
    assert [e["state"] for e in ledger.state_events[task_id]] == ["queued", "running", "succeeded"]
    assert published == 1  # one message to JetStream, from the one request that created it
    assert models.count(containing=prompt) == 1
    backend = "SQLite" if database_url.startswith("sqlite") else "PostgreSQL"
    print(
        f"\n[idempotency, {backend}] {CONCURRENT} concurrent POSTs with one key: all 202, one id, "
        f"1 row, 1 JetStream message, 1 model call"
    )
