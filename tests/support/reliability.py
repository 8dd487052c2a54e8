"""Shared pieces of the reliability tests: worker subprocesses, a NATS of one's own, the ledger.

The workers run the installed ``spine`` command line in a subprocess, so they need nothing from
``tests/`` on their ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.schema import TaskEventRow, TaskRow

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead_lettered"})

# Short timers so a killed attempt is redelivered within seconds.
ACK_WAIT = 3
MAX_ATTEMPTS = 3
BACKOFF = "0.2,0.5"


# -- a NATS server of the test's own -----------------------------------------------------------


@contextlib.contextmanager
def own_nats(data_dir: Path) -> Iterator[EmbeddedStack]:
    """Run a nats-server (JetStream, fsync always) in ``data_dir`` for one test."""
    with EmbeddedStack(data_dir, ["nats"], start_timeout=30.0) as stack:
        stack.start()
        yield stack


def nats_url_of(stack: EmbeddedStack) -> str:
    url = stack.endpoints().nats_url
    assert url is not None
    return url


# -- worker subprocesses -----------------------------------------------------------------------


def worker_env(
    *, database_url: str, nats_url: str, ollama_url: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment of a worker process: only what the test sets, no inherited GENAI_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        {
            "GENAI_DATABASE_URL": database_url,
            "GENAI_NATS_URL": nats_url,
            "GENAI_OLLAMA_URL": ollama_url,
            "GENAI_DEFAULT_PROVIDER": "ollama",
            "GENAI_DATA_DIR": str(data_dir),
            "GENAI_WORKER__ACK_WAIT": str(ACK_WAIT),
            "GENAI_WORKER__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "GENAI_WORKER__BACKOFF": BACKOFF,
            "GENAI_LOG_LEVEL": "INFO",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """``spine worker`` as a real subprocess, which the test may SIGKILL and start again."""

    READY_LINE = "JetStream streams ready"

    def __init__(self, name: str, env: dict[str, str], workdir: Path, concurrency: int = 8):
        self.name = name
        self.env = env
        self.workdir = workdir
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.log_path = workdir / f"{name}.log"
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.incarnation += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name} incarnation {self.incarnation} ---\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=self.workdir,  # no stray .env is read
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def command(self) -> list[str]:
        """The command line the process runs."""
        cli = [sys.executable, "-m", "spine.platform.app.cli"]
        return [*cli, "worker", "--concurrency", str(self.concurrency)]

    def log(self) -> str:
        """This incarnation's output."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the worker has bound its consumers (it logs that the streams are ready)."""
        deadline = time.monotonic() + timeout
        while self.READY_LINE not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the worker finishes the tasks in hand and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, and SIGKILL if the worker takes too long to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tracebacks(self) -> list[str]:
        """Lines of the whole log that show an unexpected error."""
        return [
            line
            for line in self.full_log().splitlines()
            if "Traceback" in line or " ERROR " in line or "CRITICAL" in line
        ]


@contextlib.contextmanager
def running_workers(workers: Iterable[WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """Start workers; on exit stop them, whatever happened."""
    started = []
    try:
        for worker in workers:
            started.append(worker.start())
        yield started
    finally:
        for worker in started:
            worker.terminate()
        for worker in started:
            worker.stop()


# -- submitting --------------------------------------------------------------------------------


async def submit(
    client: httpx.AsyncClient,
    prompt: str,
    *,
    model: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Submit a chat task; a named model has no fallback, so each attempt makes one call."""
    chat: dict[str, Any] = {"prompt": prompt} | ({"model": model} if model else {})
    return await client.post(
        "/v1/tasks", json={"agent": "chat", "input": chat}, headers=headers or {}
    )


async def submit_all(
    client: httpx.AsyncClient, prompts: list[str], *, parallel: int = 8
) -> dict[str, str]:
    """Submit every prompt (``parallel`` at a time); return task id -> prompt."""
    gate = asyncio.Semaphore(parallel)

    async def one(prompt: str) -> tuple[str, str]:
        async with gate:
            response = await submit(client, prompt)
        assert response.status_code == 202, response.text
        return response.json()["id"], prompt

    return dict(await asyncio.gather(*(one(p) for p in prompts)))


# -- the ledger: what the database says happened -----------------------------------------------


@dataclass
class Ledger:
    """Every task row and every state event of a database, read in one go."""

    tasks: dict[str, TaskRow]
    state_events: dict[str, list[dict[str, Any]]]

    def states(self) -> Counter[str]:
        return Counter(row.state for row in self.tasks.values())

    def count_state_events(self, task_id: str, state: str) -> int:
        return sum(1 for data in self.state_events.get(task_id, []) if data.get("state") == state)


async def read_ledger(db: Database) -> Ledger:
    async with db.session() as session:
        tasks = {row.id: row for row in (await session.execute(sa.select(TaskRow))).scalars()}
        events: dict[str, list[dict[str, Any]]] = {}
        query = (
            sa.select(TaskEventRow)
            .where(TaskEventRow.type == "state")
            .order_by(TaskEventRow.task_id, TaskEventRow.seq)
        )
        for event in (await session.execute(query)).scalars():
            events.setdefault(event.task_id, []).append(dict(event.data))
    return Ledger(tasks=tasks, state_events=events)


async def state_counts(db: Database) -> Counter[str]:
    async with db.session() as session:
        rows = await session.execute(
            sa.select(TaskRow.state, sa.func.count()).group_by(TaskRow.state)
        )
        return Counter({state: int(n) for state, n in rows})


async def wait_until(
    db: Database,
    done: Any,
    *,
    timeout: float,
    what: str,
    workers: Iterable[WorkerProcess] = (),
) -> Counter[str]:
    """Poll the task states until ``done(counts)`` holds; fail with the counts and worker logs.

    Every worker in ``workers`` must stay alive meanwhile (the test restarts those it kills).
    """
    workers = list(workers)
    deadline = time.monotonic() + timeout
    while True:
        counts = await state_counts(db)
        if done(counts):
            return counts
        dead = [w for w in workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            problem = (
                f"{[w.name for w in dead]} exited" if dead else f"not reached after {timeout}s"
            )
            logs = "\n".join(f"== {w.name}:\n{w.full_log()[-4000:]}" for w in workers)
            raise AssertionError(f"{what}: {problem}; states {counts}\n{logs}")
        await asyncio.sleep(0.1)


# -- the dead-letter stream --------------------------------------------------------------------


async def dlq_messages(nats_url: str) -> list[dict[str, Any]]:
    """Every message in TASKS_DLQ, read without consuming it (an ephemeral ordered view)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("TASKS_DLQ")
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await js.get_msg("TASKS_DLQ", seq)
                found.append(json.loads(msg.data or b"{}"))
        return found
    finally:
        await nc.close()
