"""The processes the dispatch bench runs against, and their teardown.

:func:`start_harness` starts the embedded NATS and PostgreSQL, the fake model server (0 ms),
the API and the workers, each in its own process group; :meth:`Harness.close` stops them all,
whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def say(message: str) -> None:
    """Print one progress line, stamped with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pg_dsn(url: str) -> str:
    """The asyncpg form of a SQLAlchemy PostgreSQL URL."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A subprocess in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group, if it still exists."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Harness:
    """Everything the bench started; :meth:`close` stops it all, whatever happened."""

    tmp: Path
    stack: Any = None
    endpoints: Any = None
    fake: Any = None
    children: list[Child] = field(default_factory=list)
    api_url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], **popen: Any) -> Child:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,  # no .env of the work tree is read
                env=popen.get("env", self.env),
                start_new_session=True,  # its own process group, killed as one
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def workers(self) -> list[Child]:
        return [c for c in self.children if c.name.startswith("worker")]

    def signal_workers(self, sig: signal.Signals) -> None:
        for child in self.workers():
            child.signal(sig)

    def stop_children(self, names: list[str] | None = None, timeout: float = 20.0) -> None:
        chosen = [c for c in self.children if names is None or c.name in names]
        for child in chosen:
            if child.alive():
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in chosen:
            try:
                child.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.popen.wait(5)
            self.children.remove(child)

    def close(self) -> None:
        try:
            self.stop_children()
        finally:
            try:
                if self.fake is not None:
                    self.fake.stop()
            finally:
                try:
                    if self.stack is not None:
                        self.stack.stop()
                finally:
                    shutil.rmtree(self.tmp, ignore_errors=True)


def start_harness(tmp: Path, workers: int, concurrency: int) -> Harness:
    """Start the servers, the fake model, the API and the workers; return the harness."""
    from spine.platform.embedded.stack import EmbeddedStack
    from support.fake_models import FakeModelProcess

    harness = Harness(tmp=tmp)
    try:
        say("starting embedded NATS and PostgreSQL ...")
        harness.stack = EmbeddedStack(tmp / "servers", ["nats", "postgres"])
        harness.endpoints = harness.stack.start()
        say("starting the fake model server (0 ms) ...")
        harness.fake = FakeModelProcess(latency=0.0).start()
        port = free_port()
        harness.api_url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
        env.update(
            GENAI_DATABASE_URL=harness.endpoints.database_url,
            GENAI_NATS_URL=harness.endpoints.nats_url,
            GENAI_OLLAMA_URL=harness.fake.url,
            GENAI_DEFAULT_PROVIDER="ollama",
            GENAI_API__HOST="127.0.0.1",
            GENAI_API__PORT=str(port),
            GENAI_DATA_DIR=str(tmp / "data"),
            GENAI_LOG_LEVEL="WARNING",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        harness.env = env
        asyncio.run(migrate(harness.endpoints.database_url))
        cli = [sys.executable, "-m", "spine.platform.app.cli"]
        say(f"starting the API at {harness.api_url} and {workers} workers ...")
        harness.spawn("api", [*cli, "api"])
        for index in range(workers):
            harness.spawn(
                f"worker-{index + 1}", [*cli, "worker", "--concurrency", str(concurrency)]
            )
    except BaseException:
        harness.close()
        raise
    return harness


async def migrate(database_url: str) -> None:
    from spine.platform.db import Database

    db = Database(database_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()


@dataclass(slots=True, kw_only=True)
class Tenant:
    """One of the bench's tenants (one a phase), and the API key it submits with."""

    name: str
    key: str


async def create_tenant(database_url: str, name: str) -> Tenant:
    """Create an API key for the tenant ``name``."""
    from spine.platform.db import Database
    from spine.platform.keys import KeyStore

    db = Database(database_url)
    try:
        key = (await KeyStore(db).create(tenant=name, name="bench")).secret
        return Tenant(name=name, key=key)
    finally:
        await db.dispose()


async def wait_ready(harness: Harness, workers: int, timeout: float = 90.0) -> None:
    """Wait for the API's /readyz and for every worker's pull request on the normal lane."""
    import httpx
    import nats

    deadline = time.monotonic() + timeout

    def check_alive() -> None:
        for child in harness.children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited early; its log ends:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the platform was not ready within {timeout:.0f} s")

    async with httpx.AsyncClient(base_url=harness.api_url, timeout=2) as client:
        while True:
            check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
    nc = await nats.connect(harness.endpoints.nats_url)
    try:
        js = nc.jetstream()
        while True:
            check_alive()
            with contextlib.suppress(Exception):
                info = await js.consumer_info("TASKS", "workers-normal")
                if (info.num_waiting or 0) >= workers:
                    return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
