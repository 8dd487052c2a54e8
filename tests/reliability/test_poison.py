"""Poison tasks end in the dead-letter stream after the configured attempts, even across crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform
from support.reliability import (
    MAX_ATTEMPTS,
    TERMINAL,
    Ledger,
    WorkerProcess,
    dlq_messages,
    nats_url_of,
    own_nats,
    read_ledger,
    running_workers,
    submit,
    submit_all,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.reliability

HEALTHY = 40


@dataclass
class Crew:
    """Two worker processes, each calling a fake model server of its own."""

    spine: RunningPlatform
    nats_url: str
    workers: list[WorkerProcess]
    models: list[FakeModelServer]

    def calls(self, containing: str) -> list[int]:
        """How many calls each worker's model server saw for ``containing``."""
        return [m.count(containing=containing) for m in self.models]

    def total_calls(self) -> Counter[str]:
        return Counter(c.prompt for m in self.models for c in m.calls())

    async def holder_of(self, containing: str, seen: int, timeout: float = 30.0) -> int:
        """Wait for call number ``seen + 1`` of ``containing``; return the worker that made it."""
        deadline = time.monotonic() + timeout
        while sum(self.calls(containing)) <= seen:
            if time.monotonic() > deadline:
                logs = "\n".join(w.full_log()[-3000:] for w in self.workers)
                raise AssertionError(f"no call {seen + 1} for {containing!r}\n{logs}")
            await asyncio.sleep(0.005)
        newest = max(
            (call.at, index)
            for index, model in enumerate(self.models)
            for call in model.calls(containing=containing)
        )
        return newest[1]


@contextlib.asynccontextmanager
async def crew(services: Any, pg_url: str, tmp_path: Path, rule: Rule) -> AsyncIterator[Crew]:
    with contextlib.ExitStack() as stack:
        nats = stack.enter_context(own_nats(tmp_path / "nats"))
        models = [stack.enter_context(FakeModelServer(latency=0.02)) for _ in range(2)]
        for model in models:
            model.add(rule)
        nats_url = nats_url_of(nats)
        workers = [
            WorkerProcess(
                f"worker-{n}",
                worker_env(
                    database_url=pg_url,
                    nats_url=nats_url,
                    ollama_url=model.url,
                    data_dir=tmp_path / "data",
                ),
                tmp_path / f"worker-{n}",
            )
            for n, model in enumerate(models)
        ]
        with running_workers(workers):
            async with running_platform(
                services,
                pg_url,
                models[0],
                workers=0,
                nats_url=nats_url,
                worker={"max_attempts": MAX_ATTEMPTS},
            ) as spine:
                await asyncio.gather(*(w.wait_ready() for w in workers))
                yield Crew(spine=spine, nats_url=nats_url, workers=workers, models=models)


def states_of(ledger: Ledger, task_id: str) -> list[tuple[str, Any]]:
    return [(e["state"], e.get("attempt")) for e in ledger.state_events[task_id]]


async def test_a_poison_task_is_dead_lettered_after_its_attempts_although_its_worker_was_killed(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    poison_text = f"poison {run}"
    # Every call for the poison fails with a 500 after a while, so its attempt can be killed
    # mid-call; the other tasks are answered.
    rule = Rule(containing=poison_text, status=500, latency=1.0)
    async with crew(services, pg_url, tmp_path, rule) as c:
        db = c.spine.platform.db
        response = await submit(c.spine.client, poison_text, model="llama3.2")
        assert response.status_code == 202
        poison = response.json()["id"]
        healthy = await submit_all(
            c.spine.client, [f"healthy {run} {i:02d}" for i in range(HEALTHY)]
        )

        holder = await c.holder_of(poison_text, seen=0)
        c.workers[holder].kill()  # the poison's first attempt dies mid-call
        c.workers[holder].start()
        final = await wait_until(
            db,
            lambda counts: sum(counts[s] for s in TERMINAL) >= HEALTHY + 1,
            timeout=60,
            what="poison and healthy tasks ended",
            workers=c.workers,
        )
        ledger = await read_ledger(db)
        dead = await dlq_messages(c.nats_url)
        poison_calls = sum(c.calls(poison_text))
        calls = c.total_calls()

    assert final == Counter({"succeeded": HEALTHY, "dead_lettered": 1}), final
    row = ledger.tasks[poison]
    assert row.state == "dead_lettered"
    # The killed attempt counts: the poison had MAX_ATTEMPTS attempts, not one more.
    assert row.attempts == MAX_ATTEMPTS
    assert poison_calls == MAX_ATTEMPTS
    assert states_of(ledger, poison) == [
        ("queued", None),
        ("running", 1),  # killed mid-call: no outcome recorded
        ("running", 2),
        ("queued", 2),
        ("running", 3),
        ("dead_lettered", 3),
    ]
    assert row.error is not None
    assert row.error["reason"] == "too many attempts"
    assert row.error["attempts"] == MAX_ATTEMPTS
    # Its message, payload and reason, is in TASKS_DLQ, once.
    assert [d["task_id"] for d in dead] == [poison]
    assert dead[0]["attempts"] == MAX_ATTEMPTS
    assert dead[0]["reason"]["reason"] == "too many attempts"
    assert json.loads(dead[0]["payload"]) == {"task_id": poison, "tenant": "acme", "agent": "chat"}
    # The others finished, each once.
    for task_id, prompt in healthy.items():
        assert ledger.tasks[task_id].state == "succeeded"
        assert ledger.count_state_events(task_id, "succeeded") == 1
        result = ledger.tasks[task_id].result
        assert result is not None
        assert result["text"] == f"echo: {prompt}"
        assert calls[prompt] >= 1
    retried = sum(1 for t in healthy if ledger.tasks[t].attempts > 1)
    repeated = sum(1 for p in healthy.values() if calls[p] > 1)
    print(
        f"\n[poison 500 + SIGKILL] poison dead-lettered after {row.attempts} attempts "
        f"({poison_calls} model calls, the first one killed); {HEALTHY} healthy tasks succeeded "
        f"once ({retried} retried after the kill, {repeated} model calls repeated)"
    )


async def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_after_its_attempts(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    crasher_text = f"crasher {run}"
    # The crasher's call never returns: the test kills whichever worker makes it, every time,
    # as if the task crashed its worker process.
    rule = Rule(containing=crasher_text, hang=True)
    async with crew(services, pg_url, tmp_path, rule) as c:
        db = c.spine.platform.db
        response = await submit(c.spine.client, crasher_text, model="llama3.2")
        assert response.status_code == 202
        crasher = response.json()["id"]
        healthy: dict[str, str] = {}
        kills = []
        for attempt in range(MAX_ATTEMPTS):
            holder = await c.holder_of(crasher_text, seen=attempt)
            c.workers[holder].kill()
            kills.append(c.workers[holder].name)
            c.workers[holder].start()
            if attempt == 0:
                # Bystanders, run by the other worker between two crashes.
                healthy = await submit_all(
                    c.spine.client, [f"bystander {run} {i:02d}" for i in range(HEALTHY // 2)]
                )
        final = await wait_until(
            db,
            lambda counts: sum(counts[s] for s in TERMINAL) >= HEALTHY // 2 + 1,
            timeout=60,
            what="crasher and bystanders ended",
            workers=c.workers,
        )
        ledger = await read_ledger(db)
        dead = await dlq_messages(c.nats_url)
        crasher_calls = sum(c.calls(crasher_text))

    assert final == Counter({"succeeded": HEALTHY // 2, "dead_lettered": 1}), final
    row = ledger.tasks[crasher]
    # Each crash counted as an attempt; the delivery after the last one dead-letters the task
    # without running it again.
    assert crasher_calls == MAX_ATTEMPTS
    assert row.state == "dead_lettered"
    assert row.error is not None
    assert row.error["type"] == "too_many_attempts"
    assert row.error["attempts"] == MAX_ATTEMPTS
    assert states_of(ledger, crasher) == [
        ("queued", None),
        *(("running", n) for n in range(1, MAX_ATTEMPTS + 1)),
        ("running", MAX_ATTEMPTS + 1),
        ("dead_lettered", MAX_ATTEMPTS + 1),
    ]
    assert [d["task_id"] for d in dead] == [crasher]
    assert json.loads(dead[0]["payload"])["task_id"] == crasher
    for task_id in healthy:
        assert ledger.tasks[task_id].state == "succeeded"
        assert ledger.count_state_events(task_id, "succeeded") == 1
    print(
        f"\n[crash every time] crasher killed its worker {len(kills)} times ({', '.join(kills)});"
        f" dead-lettered by its claim number {row.attempts} with {crasher_calls} model calls; "
        f"{HEALTHY // 2} bystanders succeeded once"
    )
