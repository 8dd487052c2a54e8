"""A platform spread over processes on loopback: a NATS cluster, API processes, a failover client.

:class:`NatsCluster` runs three (or more) ``nats-server`` processes from the pip-installed
binary, routed to each other on 127.0.0.1, each with its own JetStream store (fsync always), so
streams can have three replicas; any node can be SIGKILLed and started again on the same ports
and store. :class:`ApiProcess` is ``spine api`` as a subprocess (a :class:`WorkerProcess` with
another command and an HTTP readiness check). :class:`FailoverClient` submits tasks the way a
client behind a load balancer does: round robin over the APIs, and a request that gets no answer
(or a 5xx) goes to the next API with the same ``Idempotency-Key``, so a task is created once
whichever API committed it.

The cluster fault test (``tests/reliability/test_cluster.py``) and ``bench/cluster.py`` use
these; nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats

from spine.events.streams import TASKS_STREAM, consumer_name
from spine.platform.embedded.servers import NatsServer
from support.reliability import WorkerProcess

CLUSTER_NAME = "spine_test"
PROBE_TIMEOUT = 1.0

# -- a NATS cluster ----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class NatsNode:
    """One ``nats-server`` of the cluster: its ports, its store, its process."""

    name: str
    client_port: int
    route_port: int
    monitor_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Tell whether the node's ``/healthz`` says ok: JetStream current with its cluster."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def distinct_ports(count: int) -> list[int]:
    """Return ``count`` different free loopback ports (each held until all are picked)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class NatsCluster:
    """``size`` nats-servers routed to each other on loopback, JetStream on every node.

    Args:
        workdir: Each node keeps its config, log and JetStream store in ``workdir/<name>``.
        size: How many nodes (3 for R3 streams; 1 is a plain server without a cluster).
        start_timeout: Seconds a node (or the whole cluster) has to report healthy.
    """

    def __init__(self, workdir: Path, *, size: int = 3, start_timeout: float = 30.0) -> None:
        server = NatsServer(workdir)
        server.locate()
        assert server.binary is not None
        self.binary = server.binary
        self.start_timeout = start_timeout
        ports = distinct_ports(3 * size)
        self.nodes = [
            NatsNode(
                name=f"n{index + 1}",
                client_port=ports[3 * index],
                route_port=ports[3 * index + 1],
                monitor_port=ports[3 * index + 2],
                data_dir=workdir / f"n{index + 1}",
            )
            for index in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The value of ``GENAI_NATS_URL`` that names every node (comma-separated)."""
        return ",".join(self.urls)

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> NatsCluster:
        """Start every node and wait until each says its JetStream is current."""
        for node in self.nodes:
            self._write_config(node)
            self._spawn(node)
        self._wait_healthy(self.nodes)
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one node and wait until it is gone; its store stays."""
        node = self.node(name)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    def restart(self, name: str) -> None:
        """Start a node that is down again, same ports and store; wait until it is current."""
        node = self.node(name)
        assert not node.alive(), f"{name} is running"
        self._spawn(node)
        self._wait_healthy([node])

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after 10 s)."""
        for node in self.nodes:
            if node.alive():
                assert node.proc is not None
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, name: str, lines: int = 40) -> str:
        text = self.node(name).log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def leaders(self) -> dict[str, str | None]:
        """Name the node leading the TASKS stream and each worker consumer (``None``: no leader)."""
        nc = await nats.connect(servers=self.urls, connect_timeout=2, max_reconnect_attempts=2)
        try:
            js = nc.jetstream(timeout=5)
            found: dict[str, str | None] = {}
            info = await js.stream_info(TASKS_STREAM)
            found[TASKS_STREAM] = info.cluster.leader if info.cluster else None
            for lane in ("normal",):
                consumer = await js.consumer_info(TASKS_STREAM, consumer_name(lane))
                found[consumer_name(lane)] = consumer.cluster.leader if consumer.cluster else None
            return found
        finally:
            await nc.close()

    def _write_config(self, node: NatsNode) -> None:
        store = node.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        routes = [f"nats-route://127.0.0.1:{other.route_port}" for other in self.nodes]
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.client_port}",
            f"http: 127.0.0.1:{node.monitor_port}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store))}",
            # Jepsen lost acknowledged writes with the default fsync interval.
            "  sync_interval: always",
            "}",
        ]
        if len(self.nodes) > 1:  # one node is a plain server, as `spine up` runs it
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{node.route_port}",
                f"  routes: {json.dumps(routes)}",
                "}",
            ]
        node.config_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, node: NatsNode) -> None:
        node.incarnation += 1
        with node.log_path.open("ab") as log:
            log.write(f"--- {node.name} incarnation {node.incarnation} ---\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                [str(self.binary), "-c", str(node.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_healthy(self, nodes: Sequence[NatsNode]) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = list(nodes)
        while waiting:
            waiting = [node for node in waiting if not node.healthy()]
            for node in waiting:
                if not node.alive():
                    raise RuntimeError(f"{node.name} exited:\n{self.log_tail(node.name)}")
            if waiting and time.monotonic() > deadline:
                names = [node.name for node in waiting]
                tails = "\n".join(f"== {n}:\n{self.log_tail(n)}" for n in names)
                raise RuntimeError(f"{names} not healthy after {self.start_timeout}s\n{tails}")
            time.sleep(0.1)


# -- API processes -----------------------------------------------------------------------------


class ApiProcess(WorkerProcess):
    """``spine api`` as a real subprocess on ``port``, which the test may SIGKILL and restart."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, port: int) -> None:
        super().__init__(name, {**env, "GENAI_API__PORT": str(port)}, workdir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "spine.platform.app.cli", "api"]

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``/readyz`` answers 200 (NATS and the database answer)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/readyz", timeout=_SHORT) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log()}")
                await asyncio.sleep(0.1)


_SHORT = aiohttp.ClientTimeout(total=2)


def platform_env(
    *,
    database_url: str,
    nats_url: str,
    ollama_url: str,
    data_dir: Path,
    replicas: int,
    **extra: str,
) -> dict[str, str]:
    """The environment of an API or worker process: only what is set here, no inherited GENAI_*.

    Args:
        database_url: The database every process shares.
        nats_url: One NATS URL, or a cluster's URLs joined by commas.
        ollama_url: The fake model server, standing in for Ollama.
        data_dir: ``GENAI_DATA_DIR``.
        replicas: ``GENAI_STREAMS__REPLICAS``: replicas of every stream the processes create.
        **extra: More variables, as ``NAME=value``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        {
            "GENAI_DATABASE_URL": database_url,
            "GENAI_NATS_URL": nats_url,
            "GENAI_OLLAMA_URL": ollama_url,
            "GENAI_DEFAULT_PROVIDER": "ollama",
            "GENAI_DATA_DIR": str(data_dir),
            "GENAI_STREAMS__REPLICAS": str(replicas),
            "GENAI_LOG_LEVEL": "INFO",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


FAKE_MODEL = "llama3.2"
"""The one model the fake server lists (``FakeModelServer(models=[FAKE_MODEL])``)."""


def write_models_file(path: Path) -> Path:
    """Write a ``GENAI_MODELS_FILE`` that tells the router all it needs about :data:`FAKE_MODEL`.

    With prices, context window and parameters given, a process's router warm-up has nothing
    to ask a LiteLLM child for: that child costs seconds of CPU per process (tens on a busy
    two-core machine), which would otherwise dominate the start and every restart.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "models:\n"
        f"  - name: {FAKE_MODEL}\n"
        "    provider: ollama\n"
        f"    model: {FAKE_MODEL}\n"
        '    input_price: "0"\n'
        '    output_price: "0"\n'
        "    context_window: 131072\n"
        "    supported_params: [max_tokens, temperature, top_p, stop, tools, tool_choice]\n"
    )
    return path


@contextlib.contextmanager
def running_processes(processes: Sequence[WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """Start API and worker processes; on exit SIGTERM them all at once, then wait."""
    started: list[WorkerProcess] = []
    try:
        for process in processes:
            started.append(process.start())
        yield started
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.stop()


# -- a client behind a load balancer -----------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Submission:
    """One task as the client saw it: where it went, what failed, what finally answered."""

    index: int
    prompt: str
    key: str
    task_id: str | None = None
    accepted_by: str | None = None
    replayed: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


class FailoverClient:
    """Submits chat tasks round robin over the APIs; an unanswered request goes to the next.

    Every task carries its own ``Idempotency-Key``: a retry after a lost answer (the API died
    after committing) gets the task that API created, never a second one. A 2xx answer is an
    accepted task; a connection error, a timeout, a 429 or a 5xx moves the same request to the
    next API (after each full round, a short pause); any other answer is a defect and raises.

    Args:
        urls: The APIs' base URLs, in the order tasks alternate over them.
        key: The API key sent with every request.
        connections: Requests in flight at once.
        give_up_after: Seconds one task may keep failing over before it is left unaccepted.
    """

    def __init__(
        self,
        urls: Sequence[str],
        key: str,
        *,
        connections: int = 16,
        give_up_after: float = 60,
        rate: float | None = None,
    ) -> None:
        self.urls = list(urls)
        self.rate = rate
        """Submissions per second at most (task ``i`` not sent before ``i / rate`` s), so a
        run spans its faults however fast the APIs answer; None: as fast as they answer."""
        self.key = key
        self.connections = connections
        self.give_up_after = give_up_after
        self.submissions: list[Submission] = []
        self.accepted = 0
        self.first_sent = 0.0
        self.last_answered = 0.0

    async def submit_all(self, prompts: Sequence[str], *, run: str) -> list[Submission]:
        """Submit every prompt, task ``i`` first to API ``i mod n``; return what happened."""
        self.submissions = [
            Submission(index=i, prompt=p, key=f"{run}-{i:05d}") for i, p in enumerate(prompts)
        ]
        queue: asyncio.Queue[Submission] = asyncio.Queue()
        for submission in self.submissions:
            queue.put_nowait(submission)
        headers = {"Authorization": f"Bearer {self.key}"}
        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=timeout
        ) as session:
            self.first_sent = time.monotonic()
            await asyncio.gather(*(self._loop(session, queue) for _ in range(self.connections)))
            self.last_answered = time.monotonic()
        return self.submissions

    async def _loop(self, session: aiohttp.ClientSession, queue: asyncio.Queue[Submission]) -> None:
        while not queue.empty():
            submission = queue.get_nowait()
            if self.rate is not None:
                due = self.first_sent + submission.index / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self._one(session, submission)

    async def _one(self, session: aiohttp.ClientSession, submission: Submission) -> None:
        body = {"agent": "chat", "input": {"prompt": submission.prompt}}
        headers = {"Idempotency-Key": submission.key}
        began = time.monotonic()
        tries = 0
        while time.monotonic() - began < self.give_up_after:
            url = self.urls[(submission.index + tries) % len(self.urls)]
            tries += 1
            try:
                async with session.post(f"{url}/v1/tasks", json=body, headers=headers) as resp:
                    answer: dict[str, Any] = await resp.json(content_type=None)
                    status = resp.status
                    replayed = resp.headers.get("Idempotent-Replayed") == "true"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                submission.failures.append(f"{url}: {type(exc).__name__}")
            else:
                if 200 <= status < 300:
                    submission.task_id = answer["id"]
                    submission.accepted_by = url
                    submission.replayed = replayed
                    submission.seconds = time.monotonic() - began
                    self.accepted += 1
                    return
                if status != 429 and status < 500:
                    raise AssertionError(f"{url} answered {status}: {answer}")
                submission.failures.append(f"{url}: {status}")
            if tries % len(self.urls) == 0:
                await asyncio.sleep(0.2)
        submission.seconds = time.monotonic() - began
