"""SIGKILL a worker process in the middle of 300 tasks: none is lost, none finishes twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
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

TASKS = 300
MODEL_LATENCY = 0.05  # seconds: long enough that a killed worker holds tasks mid-call
KILL_AFTER = TASKS // 4  # succeeded tasks before the kill


async def test_sigkill_of_a_worker_mid_run_loses_nothing_and_finishes_nothing_twice(
    services: Any, pg_url: str, tmp_path: Path
) -> None:
    # One fake model server per worker: which server saw a prompt tells which worker ran it.
    with (
        own_nats(tmp_path / "nats") as stack,
        FakeModelServer(latency=MODEL_LATENCY) as model_a,
        FakeModelServer(latency=MODEL_LATENCY) as model_b,
    ):
        nats_url = nats_url_of(stack)

        def worker(name: str, model: FakeModelServer) -> WorkerProcess:
            env = worker_env(
                database_url=pg_url,
                nats_url=nats_url,
                ollama_url=model.url,
                data_dir=tmp_path / "data",
            )
            return WorkerProcess(name, env, tmp_path / name, concurrency=8)

        victim, survivor = worker("worker-a", model_a), worker("worker-b", model_b)
        # Workers boot (seconds: LiteLLM's import) while the API starts and takes the tasks.
        with running_workers([victim, survivor]):
            async with running_platform(
                services, pg_url, model_b, workers=0, nats_url=nats_url
            ) as spine:
                db = spine.platform.db
                run = uuid.uuid4().hex[:8]
                prompts = [f"crash test {run} task {i:03d}" for i in range(TASKS)]
                task_prompt = await submit_all(spine.client, prompts)
                prompt_task = {p: t for t, p in task_prompt.items()}
                assert len(task_prompt) == TASKS
                await asyncio.gather(victim.wait_ready(), survivor.wait_ready())
                started = time.monotonic()

                # Kill the victim while a model call of its own is in flight, after a quarter
                # of the tasks are done.
                await wait_until(
                    db,
                    lambda c: c["succeeded"] >= KILL_AFTER,
                    timeout=60,
                    what=f"{KILL_AFTER} tasks succeeded",
                    workers=[victim, survivor],
                )
                deadline = time.monotonic() + 30
                while True:
                    recent = model_a.calls()
                    if recent and recent[-1].at > time.time() - MODEL_LATENCY / 3:
                        break
                    assert time.monotonic() < deadline, "worker-a makes no model calls"
                    await asyncio.sleep(0.002)
                victim.kill()
                killed_at = time.monotonic() - started
                # Let anything the victim sent before dying land, then take the snapshot; no
                # redelivery can happen before ack_wait (3 s).
                await asyncio.sleep(0.3)
                at_kill = await read_ledger(db)
                called_by_victim = {c.prompt for c in model_a.calls()}
                called_by_survivor = {c.prompt for c in model_b.calls()}
                done_at_kill = at_kill.states()["succeeded"]
                running_at_kill = {t for t, row in at_kill.tasks.items() if row.state == "running"}
                victim_held = {t for t in running_at_kill if task_prompt[t] in called_by_victim}
                survivor_held = {t for t in running_at_kill if task_prompt[t] in called_by_survivor}
                assert KILL_AFTER <= done_at_kill < TASKS
                assert victim_held, "the victim held no task mid-call when it was killed"

                victim.start()  # the same command again, as a supervisor would
                final = await wait_until(
                    db,
                    lambda c: sum(c[s] for s in ("succeeded", "failed", "dead_lettered")) >= TASKS,
                    timeout=90,
                    what="all tasks finished",
                    workers=[victim, survivor],
                )
                elapsed = time.monotonic() - started

        ledger = await read_ledger(db)
        calls = Counter(c.prompt for c in [*model_a.calls(), *model_b.calls()])

    # Nothing lost.
    assert final == Counter({"succeeded": TASKS}), final
    assert set(ledger.tasks) == set(task_prompt)
    # Nothing finished twice: exactly one `succeeded` event per task, from its last attempt.
    for task_id, row in ledger.tasks.items():
        assert ledger.count_state_events(task_id, "succeeded") == 1, ledger.state_events[task_id]
        last = ledger.state_events[task_id][-1]
        assert last == {"state": "succeeded", "attempt": row.attempts}
        assert row.result is not None
        assert row.result["text"] == f"echo: {task_prompt[task_id]}"
    # Only the tasks the killed worker held ran again, and exactly once more.
    attempts = Counter(row.attempts for row in ledger.tasks.values())
    retried = {t for t, row in ledger.tasks.items() if row.attempts > 1}
    assert set(attempts) <= {1, 2}, attempts
    assert victim_held <= retried, "a task the victim held mid-call was not retried"
    assert retried <= running_at_kill, "a task that was not running at the kill was retried"
    assert not retried & survivor_held, "a task of the surviving worker was retried"
    for task_id in retried:
        runs = [e for e in ledger.state_events[task_id] if e["state"] == "running"]
        assert [e["attempt"] for e in runs] == [1, 2]
    # Model calls: one per prompt, except for a killed attempt that had already called.
    assert set(calls) == set(prompt_task)
    repeated = {p for p, n in calls.items() if n > 1}
    assert all(calls[p] == 2 for p in repeated), {p: calls[p] for p in repeated}
    assert {prompt_task[p] for p in repeated} <= retried
    assert {prompt_task[p] for p in repeated} >= victim_held
    assert sum(calls.values()) == TASKS + len(repeated)
    print(
        f"\n[worker SIGKILL] {TASKS} tasks, 2 workers x 8, model latency {MODEL_LATENCY * 1000:.0f}"
        f" ms: killed worker-a at {killed_at:.1f}s with {done_at_kill} done and "
        f"{len(running_at_kill)} running ({len(victim_held)} of them mid-call on worker-a, "
        f"{len(survivor_held)} on worker-b); retried {len(retried)} tasks (attempts {dict(attempts)});"
        f" model calls {sum(calls.values())}, repeated for {len(repeated)} prompts; "
        f"all {TASKS} succeeded once in {elapsed:.1f}s"
    )
