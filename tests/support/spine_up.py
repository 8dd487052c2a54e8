"""``spine up`` as a real subprocess: its output in a file, its children found by pid.

The output goes to a file, never a pipe nobody reads (a full pipe would block ``spine up``).
The children are read from the supervisor's state file (``<data>/run/supervisor.json``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from spine.platform.embedded.stack import endpoints_for, read_state
from support.fake_models import FakeModelServer

START_TIMEOUT = 120.0


def up_env(models: FakeModelServer, *, port: int, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of ``spine up``: no inherited GENAI_*, the fake models as Ollama."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env |= {
        "GENAI_API__PORT": str(port),
        "GENAI_OLLAMA_URL": models.url,
        "GENAI_DEFAULT_PROVIDER": "ollama",
        "GENAI_DATA_DIR": str(data_dir),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


@dataclass
class SpineUp:
    """One run of ``spine up``."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log_path: Path
    offset: int
    seen: list[int] = field(default_factory=list)
    """Every pid of a child this run ever had (the test checks them all at the end)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What this run printed so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = START_TIMEOUT) -> str:
        """Wait until the output contains ``needle``; fail with the output if it never does."""
        deadline = time.monotonic() + timeout
        while needle not in (out := self.output()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared:\n{out[-6000:]}")
            time.sleep(0.1)
        return out

    def children(self) -> dict[str, dict[str, Any]]:
        """The supervisor's view of each child, from its state file."""
        path = self.data_dir / "run" / "supervisor.json"
        children: dict[str, dict[str, Any]] = json.loads(path.read_text())["children"]
        for child in children.values():
            if child.get("pid") and child["pid"] not in self.seen:
                self.seen.append(child["pid"])
        return children

    def pid_of(self, name: str) -> int:
        pid = self.children()[name]["pid"]
        assert isinstance(pid, int)
        return pid

    def wait_child(
        self, name: str, holds: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the supervisor's record of ``name`` satisfies ``holds``."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.children()[name]
            if holds(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: {record}\n{self.output()[-4000:]}")
            time.sleep(0.05)

    def stack_processes(self) -> list[psutil.Process]:
        """Every live process of the stack: children, their children (PostgreSQL's), watchdog."""
        found = []
        for pid in {self.proc.pid, *self.seen}:
            try:
                proc = psutil.Process(pid)
                found += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return [p for p in found if _alive(p)]

    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_key()}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def database_url(self) -> str:
        """The embedded PostgreSQL's URL, with its password."""
        state = read_state(self.data_dir)
        assert state is not None
        url = endpoints_for(self.data_dir, state.endpoints).database_url
        assert url is not None
        return url

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal ``spine up`` and wait for it; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_spine_up(
    workdir: Path, env: dict[str, str], *args: str, wait: str | None = "API at"
) -> SpineUp:
    """Run ``spine up *args`` in ``workdir``; wait until its output says ``wait``."""
    log_path = workdir / "spine-up.log"
    with log_path.open("ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "spine.platform.app.cli", "up", *args],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run = SpineUp(
        proc=proc,
        data_dir=Path(env["GENAI_DATA_DIR"]),
        port=int(env["GENAI_API__PORT"]),
        log_path=log_path,
        offset=offset,
    )
    if wait is not None:
        try:
            run.wait_for(wait)
            run.children()
        except BaseException:
            run.stop(signal.SIGKILL)
            raise
    return run


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
