"""SIGKILL nats-server during a stream of submissions: every accepted task still completes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spine.platform.schema import utcnow
from support.fake_models import FakeModelServer
from support.live_platform import running_platform
from support.reliability import (
    WorkerProcess,
    nats_url_of,
    own_nats,
    read_ledger,
    running_workers,
    submit,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.reliability

UP_BEFORE = 1.5  # seconds of submissions before the kill
DOWN_FOR = 3.0  # seconds NATS stays dead
UP_AFTER = 1.5  # seconds of submissions after it is back
PACE = 0.03  # seconds between submissions


@dataclass
class Submission:
    prompt: str
    status: int
    task_id: str | None
    sent: float
    answered: float


async def test_tasks_accepted_while_nats_is_killed_and_restarted_all_complete(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    with (
        own_nats(tmp_path / "nats") as stack,
        FakeModelServer(latency=0.03) as models,
    ):
        nats_url = nats_url_of(stack)
        env = worker_env(
            database_url=pg_url, nats_url=nats_url, ollama_url=models.url, data_dir=tmp_path
        )
        workers = [WorkerProcess(f"worker-{n}", env, tmp_path / f"w{n}") for n in (1, 2)]
        with running_workers(workers):
            async with running_platform(
                services, pg_url, models, workers=0, nats_url=nats_url
            ) as spine:
                db = spine.platform.db
                await asyncio.gather(*(w.wait_ready() for w in workers))
                run = uuid.uuid4().hex[:8]
                submissions: list[Submission] = []
                stop = asyncio.Event()

                async def keep_submitting() -> None:
                    n = 0
                    while not stop.is_set():
                        prompt = f"nats restart {run} #{n:04d}"
                        n += 1
                        sent = time.monotonic()
                        response = await submit(spine.client, prompt)
                        task_id = response.json().get("id") if response.status_code == 202 else None
                        submissions.append(
                            Submission(
                                prompt, response.status_code, task_id, sent, time.monotonic()
                            )
                        )
                        await asyncio.sleep(PACE)

                submitter = asyncio.create_task(keep_submitting())
                await asyncio.sleep(UP_BEFORE)
                stack.kill("nats")
                killed = time.monotonic()
                await asyncio.sleep(DOWN_FOR)
                restarting = time.monotonic()
                restarted_wall = utcnow()
                await asyncio.to_thread(stack.restart, "nats")
                back = time.monotonic()
                await asyncio.sleep(UP_AFTER)
                stop.set()
                await submitter

                accepted = {s.task_id: s for s in submissions if s.task_id is not None}
                final = await wait_until(
                    db,
                    lambda c: (
                        sum(c[s] for s in ("succeeded", "failed", "dead_lettered")) >= len(accepted)
                    ),
                    timeout=60,
                    what="every accepted task finished",
                    workers=workers,
                )
                assert all(w.alive() for w in workers), "a worker died with NATS"
        ledger = await read_ledger(db)
        calls = Counter(c.prompt for c in models.calls())

    statuses = Counter(s.status for s in submissions)
    during = [s for s in submissions if s.sent >= killed and s.answered <= restarting]
    # Every submission was accepted, also while NATS was dead (committed, published later).
    assert statuses == Counter({202: len(submissions)}), statuses
    assert len(during) >= 10, f"only {len(during)} submissions while NATS was down"
    # Every accepted task succeeded, exactly once.
    assert final == Counter({"succeeded": len(accepted)}), final
    assert set(ledger.tasks) == set(accepted)
    for task_id, row in ledger.tasks.items():
        assert ledger.count_state_events(task_id, "succeeded") == 1, ledger.state_events[task_id]
        assert row.result is not None
        assert row.result["text"] == f"echo: {accepted[task_id].prompt}"
    # The tasks accepted while NATS was down reached JetStream through the outbox sweeper.
    for s in during:
        assert s.task_id is not None
        published = ledger.tasks[s.task_id].published_at
        assert published is not None and published >= restarted_wall
    assert set(calls) == {s.prompt for s in submissions}
    repeated = {p: n for p, n in calls.items() if n > 1}
    attempts = Counter(row.attempts for row in ledger.tasks.values())
    print(
        f"\n[NATS SIGKILL] {len(submissions)} submissions, all 202: {len(during)} while NATS was "
        f"down for {restarting - killed:.1f}s (restart took {back - restarting:.1f}s); all "
        f"{len(accepted)} succeeded once; attempts {dict(attempts)}; model calls "
        f"{sum(calls.values())}, repeated for {len(repeated)} prompts"
    )
