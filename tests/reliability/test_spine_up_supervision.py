"""``spine up`` supervises its children: SIGKILL a worker, nats-server, ``spine up`` itself.

One ``spine up`` serves the module; the last test kills it and starts the next one on the same
data, which the fixture then stops cleanly (and checks that it stopped quietly).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.schema import TaskRow
from support.fake_models import FakeModelServer
from support.ports import free_port
from support.reliability import TERMINAL, read_ledger
from support.servers import embedded_data_dir
from support.spine_up import SpineUp, start_spine_up, up_env, wait_gone

pytestmark = pytest.mark.reliability

TASKS = 40
MODEL_LATENCY = 0.3  # seconds: a killed worker holds tasks mid-call
# A restart waits 1 s first, so /readyz is seen saying so while a server is down.
BACKOFF = "1.0"
CRASH_LOOP_RESTARTS = 3


@dataclass
class Run:
    """The module's ``spine up`` (replaced by the test that kills it) and its setting."""

    up: SpineUp
    workdir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("spine-up")
    with (
        embedded_data_dir(workdir) as data_dir,
        FakeModelServer(latency=MODEL_LATENCY) as models,
    ):
        env = up_env(
            models,
            port=free_port(),
            data_dir=data_dir,
            GENAI_WORKER__ACK_WAIT="3",
            GENAI_WORKER__BACKOFF="0.2,0.5",
            GENAI_SUPERVISOR__BACKOFF_INITIAL=BACKOFF,
            GENAI_SUPERVISOR__CRASH_LOOP_RESTARTS=str(CRASH_LOOP_RESTARTS),
        )
        state = Run(start_spine_up(workdir, env), workdir, env)
        try:
            yield state
        finally:
            up = state.up
            everything = up.stack_processes()
            code = up.stop(signal.SIGINT)  # Ctrl-C
            out = up.output()
            assert code == 0, out[-4000:]
            assert wait_gone(everything, 10) == []
            stopping = out[out.rfind("stopping...") :]
            # Quiet: workers, API, servers in order, and no noise from clients on the way out.
            assert "Traceback" not in stopping, stopping
            assert "never retrieved" not in stopping, stopping
            assert "reconnecting" not in stopping, stopping
            order = [stopping.find(f"{name} stopped in") for name in ("worker-1", "api", "nats")]
            assert -1 not in order and order == sorted(order), stopping


async def _submit(client: httpx.AsyncClient, prompts: list[str]) -> dict[str, str]:
    gate = asyncio.Semaphore(8)

    async def one(prompt: str) -> tuple[str, str]:
        async with gate:
            response = await client.post(
                "/v1/tasks", json={"agent": "chat", "input": {"prompt": prompt}}
            )
        assert response.status_code == 202, response.text
        return response.json()["id"], prompt

    return dict(await asyncio.gather(*(one(p) for p in prompts)))


async def _states(db: Database, ids: set[str]) -> Counter[str]:
    async with db.session() as session:
        rows = await session.execute(
            sa.select(TaskRow.state, sa.func.count())
            .where(TaskRow.id.in_(ids))
            .group_by(TaskRow.state)
        )
        return Counter({state: int(n) for state, n in rows})


async def test_a_killed_worker_is_restarted_and_no_task_is_lost(run: Run) -> None:
    up = run.up
    victim = up.pid_of("worker-1")
    db = Database(up.database_url())
    try:
        async with httpx.AsyncClient(
            base_url=up.url, headers={"Authorization": f"Bearer {up.admin_key()}"}, timeout=30
        ) as client:
            batch = uuid.uuid4().hex[:8]
            accepted = await _submit(client, [f"kill {batch} {i:03d}" for i in range(TASKS)])
        ids = set(accepted)
        # Kill it with tasks in hand, after some are done.
        deadline = time.monotonic() + 60
        while (at_kill := await _states(db, ids))["succeeded"] < TASKS // 8 or not at_kill[
            "running"
        ]:
            assert time.monotonic() < deadline, at_kill
            await asyncio.sleep(0.02)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        record = up.wait_child("worker-1", lambda r: r["pid"] != victim and r["state"] == "running")
        restarted_after = time.monotonic() - killed_at
        assert record["restarts"] >= 1
        assert record["last_exit"] == "killed by SIGKILL"

        deadline = time.monotonic() + 90
        while True:
            states = await _states(db, ids)
            if sum(states[s] for s in TERMINAL) == TASKS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        ledger = await read_ledger(db)
        succeeded_twice = [
            task_id for task_id in ids if ledger.count_state_events(task_id, "succeeded") > 1
        ]
        figures = {
            "accepted": len(accepted),
            "succeeded": states["succeeded"],
            "lost": len(ids - set(ledger.tasks)),
            "duplicated": len(succeeded_twice),
            "stuck": TASKS - sum(states[s] for s in TERMINAL),
            "states at the kill": dict(at_kill),
            "worker restarted after (s)": round(restarted_after, 2),
        }
        print(f"\nworker SIGKILL under spine up: {figures}")
        assert figures["succeeded"] == TASKS, figures
        assert figures["lost"] == figures["duplicated"] == figures["stuck"] == 0, figures
        assert "worker-1 (pid" in up.output() and "exited: killed by SIGKILL" in up.output()
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("server", "service"), [("nats", "nats"), ("falkordb", "graph"), ("postgres", "database")]
)
def test_a_killed_server_is_restarted_and_readyz_says_so_meanwhile(
    run: Run, server: str, service: str
) -> None:
    up = run.up
    victim = up.pid_of(server)
    seen_down: list[dict[str, Any]] = []
    with httpx.Client(base_url=up.url, timeout=5) as client:
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = client.get("/readyz")
            body = answer.json()
            if answer.status_code == 503 and server in body.get("supervisor", {}):
                seen_down.append(body)
            record = up.children()[server]
            if record["pid"] != victim and record["state"] == "running" and seen_down:
                break
            time.sleep(0.05)
        restarted_after = time.monotonic() - killed_at
        assert seen_down, f"/readyz never reported {server} down"
        assert "killed by SIGKILL" in seen_down[0]["supervisor"][server]
        assert up.children()[server]["pid"] != victim
        print(f"\n{server} SIGKILL under spine up: back after {restarted_after:.2f}s")
        # Clients reconnect: the API uses the server again.
        deadline = time.monotonic() + 30
        while (body := client.get("/readyz").json())["services"].get(service) != "ok" or (
            server in body["supervisor"]
        ):
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
    with up.client() as authed:
        task = authed.post("/v1/tasks", json={"agent": "chat", "input": {"prompt": "after"}})
        assert task.status_code == 202, task.text
        deadline = time.monotonic() + 60
        while (state := authed.get(f"/v1/tasks/{task.json()['id']}").json()["state"]) not in (
            TERMINAL
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state == "succeeded"


def test_a_worker_that_keeps_dying_is_crash_looping_in_status_and_readyz(run: Run) -> None:
    up = run.up
    for _ in range(CRASH_LOOP_RESTARTS):
        pid = up.wait_child("worker-1", lambda r: r["state"] == "running")["pid"]
        os.kill(pid, signal.SIGKILL)
        up.wait_child("worker-1", _not_running(pid))
    record = up.wait_child("worker-1", lambda r: r["crash_looping"])
    assert record["last_exit"] == "killed by SIGKILL"
    status = _spine(run, "status")
    line = next(line for line in status.splitlines() if "worker-1" in line)
    assert "crash-looping" in line, status
    body = httpx.get(f"{up.url}/readyz", timeout=5).json()
    assert body["status"] == "degraded"
    assert "crash-looping" in body["supervisor"]["worker-1"]


def test_sigkill_of_spine_up_leaves_no_process_and_the_next_start_has_the_data(
    run: Run,
) -> None:
    up = run.up
    with up.client() as client:
        kept = client.post("/v1/tasks", json={"agent": "chat", "input": {"prompt": "keep me"}})
        assert kept.status_code == 202, kept.text
    everything = up.stack_processes()
    names = {p.pid: " ".join(p.cmdline()[:3]) for p in everything}
    assert len(everything) >= 8, names  # spine up, watchdog, API, worker, servers, helpers
    killed_at = time.monotonic()
    up.proc.kill()
    up.proc.wait()
    survivors = wait_gone(everything, 30)
    gone_after = time.monotonic() - killed_at
    assert survivors == [], [names.get(p.pid, p.pid) for p in survivors]
    print(f"\nSIGKILL of spine up: {len(everything)} processes gone within {gone_after:.1f}s")

    run.up = start_spine_up(run.workdir, run.env)
    out = run.up.output()
    assert "Traceback" not in out, out
    with run.up.client() as client:
        again = client.get(f"/v1/tasks/{kept.json()['id']}")
        assert again.status_code == 200, again.text
        assert again.json()["input"]["prompt"] == "keep me"


def _not_running(pid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record["pid"] != pid or record["state"] != "running"


def _spine(run: Run, *args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "spine.platform.app.cli", *args],
        cwd=run.workdir,
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout
