"""nats-server loses its store: the queued tasks run again at once, not after republish_after."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from support.fake_models import FakeModelServer
from support.live_platform import running_platform
from support.reliability import (
    WorkerProcess,
    nats_url_of,
    own_nats,
    read_ledger,
    running_workers,
    submit_all,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.reliability

TASKS = 20
WITHIN = 30.0  # seconds from the wiped NATS answering again to every task done


async def test_queued_tasks_run_again_at_once_after_nats_loses_its_store(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    with (
        own_nats(tmp_path / "nats") as stack,
        FakeModelServer(latency=0.01) as models,
    ):
        nats_url = nats_url_of(stack)
        env = worker_env(
            database_url=pg_url, nats_url=nats_url, ollama_url=models.url, data_dir=tmp_path
        )
        async with running_platform(
            services, pg_url, models, workers=0, nats_url=nats_url
        ) as spine:
            db = spine.platform.db
            run = uuid.uuid4().hex[:8]
            accepted = await submit_all(spine.client, [f"lost {run} #{n}" for n in range(TASKS)])
            await wait_until_published(spine.platform.tasks, set(accepted))
            await asyncio.sleep(1.5)  # a few sweeps: the API has seen the stream as it was

            stack.kill("nats")
            shutil.rmtree(tmp_path / "nats" / "nats")  # the JetStream store is gone
            await asyncio.to_thread(stack.restart, "nats")
            back = time.monotonic()

            worker = WorkerProcess("worker", env, tmp_path / "w")
            with running_workers([worker]):
                await worker.wait_ready()
                print(f"\nworker ready {time.monotonic() - back:.1f}s after NATS was back")
                final = await wait_until(
                    db,
                    lambda c: c["succeeded"] >= TASKS,
                    timeout=WITHIN,
                    what="every queued task ran after NATS lost its store",
                    workers=[worker],
                )
                took = time.monotonic() - back
            ledger = await read_ledger(db)

    assert final["succeeded"] == TASKS, final
    for task_id in accepted:
        assert ledger.count_state_events(task_id, "succeeded") == 1, ledger.state_events[task_id]
    print(
        f"\n[NATS store wiped] {TASKS} queued tasks all succeeded {took:.1f}s after NATS was back"
    )


async def wait_until_published(store: Any, task_ids: set[str], timeout: float = 10.0) -> None:
    """Wait until JetStream acknowledged every task (they are queued, published, unclaimed)."""
    deadline = time.monotonic() + timeout
    while True:
        published = {t.id for t in await store.queued_published(before=0, limit=1000)}
        if task_ids <= published:
            return
        assert time.monotonic() < deadline, f"{len(task_ids - published)} tasks never published"
        await asyncio.sleep(0.1)
