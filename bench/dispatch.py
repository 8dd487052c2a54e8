"""Dispatch benchmark: how fast a task goes from ``POST /v1/tasks`` to a visible result.

Run it as ``.venv/bin/python bench/dispatch.py`` (``make bench``). It starts everything it needs
in a temporary directory: the embedded NATS and PostgreSQL, the fake model server (0 ms) in its
own process, the API and two worker processes exactly as ``spine api`` / ``spine worker`` run.
Then, in one run on this machine:

1. **Baseline**: a bare nats-py request/reply round trip, the responder in another process.
   Also, for reference, one JetStream publish (ack after fsync) and one PostgreSQL commit.
2. **Latency**: sequential tasks, each ``POST /v1/tasks`` then follow
   ``GET /v1/tasks/{id}/events`` (SSE) until the final state event; p50/p99 and the ratio to
   the bare request/reply p50, with a per-stage breakdown from the stored event timestamps.
3. **Throughput**: many tasks from concurrent HTTP clients against two workers; completed
   tasks/s (first submit to last ``finished_at`` in the database) and the submit rate alone,
   with CPU time per task of every process, database transactions and NATS messages per task.
4. **Profile** (needs ``py-spy`` in the venv; skipped otherwise or with ``--no-profile``): a
   second throughput pass sampled with py-spy, reported as CPU ms per task per operation, and
   a LiteLLM-versus-plain-HTTP call to the same fake model.

Figures are printed and written to ``bench/results/dispatch.json``. This is not a test: it
fails only when the platform does not work (a task that does not succeed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dispatch.json"
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TERMINAL = {"succeeded", "failed", "cancelled", "dead_lettered"}
TARGET_RATIO = 5.0  # task p50 <= 5x bare request/reply p50
TARGET_TPS = 200.0  # completed tasks per second, two workers
ECHO_SUBJECT = "bench.echo"


# -- small helpers ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of durations in seconds, as milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
        "min_ms": round(min(ms), 3) if ms else float("nan"),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pg_dsn(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Child:
    """A subprocess in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

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

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def stop_children(self, names: list[str] | None = None, timeout: float = 20.0) -> None:
        chosen = [c for c in self.children if names is None or c.name in names]
        for child in chosen:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in chosen:
            try:
                child.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
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
    from spine.platform.embedded import EmbeddedStack
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
        cli = [sys.executable, "-m", "spine.platform.cli"]
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


async def create_key(database_url: str, tenant: str) -> str:
    from spine.platform.db import Database
    from spine.platform.keys import KeyStore

    db = Database(database_url)
    try:
        return (await KeyStore(db).create(tenant=tenant, name="bench")).secret
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


# -- CPU, transactions and messages per phase -----------------------------------------------


def classify(proc: Any, harness: Harness) -> str:
    pids = {c.popen.pid: c.name for c in harness.children}
    if proc.pid in pids:
        name = pids[proc.pid]
        return "worker" if name.startswith("worker") else name
    if harness.fake is not None and harness.fake.process and proc.pid == harness.fake.process.pid:
        return "fake-model"
    try:
        name = proc.name()
    except Exception:
        return "other"
    if "nats-server" in name:
        return "nats-server"
    if "postgres" in name or "postmaster" in name:
        return "postgres"
    if "py-spy" in name:
        return "py-spy"
    return "other"


def cpu_snapshot(harness: Harness) -> dict[int, tuple[str, float]]:
    """CPU seconds (user+system) of the bench and of every process it started."""
    import psutil

    me = psutil.Process()
    found: dict[int, tuple[str, float]] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        group = "bench-client" if proc.pid == me.pid else classify(proc, harness)
        found[proc.pid] = (group, times.user + times.system)
    return found


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent per process group between two snapshots."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (group, seconds) in after.items():
        spent[group] += seconds - (before[pid][1] if pid in before else 0.0)
    return dict(spent)


async def pg_transactions(conn: Any) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database "
        "WHERE datname = current_database()"
    )
    return int(row["n"])


async def nats_counters(monitor_url: str | None) -> dict[str, int]:
    if not monitor_url:
        return {}
    import httpx

    async with httpx.AsyncClient(timeout=2) as client:
        varz = (await client.get(f"{monitor_url}/varz")).json()
    return {"in_msgs": int(varz.get("in_msgs", 0)), "out_msgs": int(varz.get("out_msgs", 0))}


@dataclass
class Meter:
    """CPU per process group, PostgreSQL transactions and NATS messages over one phase."""

    harness: Harness
    conn: Any
    cpu0: dict[int, tuple[str, float]] = field(default_factory=dict)
    xact0: int = 0
    nats0: dict[str, int] = field(default_factory=dict)
    own_queries: int = 0  # transactions the bench itself runs while metering
    wall0: float = 0.0

    async def start(self) -> None:
        await asyncio.sleep(1.2)  # let PostgreSQL flush its per-backend statistics
        self.xact0 = await pg_transactions(self.conn)
        self.nats0 = await nats_counters(self.harness.endpoints.nats_monitor_url)
        self.cpu0 = cpu_snapshot(self.harness)
        self.wall0 = time.perf_counter()
        self.own_queries = 0

    async def stop(self, tasks: int) -> dict[str, Any]:
        cpu1 = cpu_snapshot(self.harness)
        wall = time.perf_counter() - self.wall0
        await asyncio.sleep(1.2)
        xact = await pg_transactions(self.conn) - self.xact0 - self.own_queries - 1
        counters = await nats_counters(self.harness.endpoints.nats_monitor_url)
        spent = cpu_delta(self.cpu0, cpu1)
        total = sum(spent.values())
        return {
            "wall_s": round(wall, 3),
            "cpu_s": {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])},
            "cpu_ms_per_task": {
                k: round(v * 1000 / tasks, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
            },
            "cpu_ms_per_task_total": round(total * 1000 / tasks, 3),
            "cpu_utilisation_cores": round(total / wall, 2) if wall else None,
            "pg_transactions_per_task": round(xact / tasks, 2),
            "nats_msgs_per_task": {
                k: round((counters.get(k, 0) - self.nats0.get(k, 0)) / tasks, 2) for k in counters
            },
        }


# -- phase 1: baselines ----------------------------------------------------------------------


async def responder_main(url: str) -> None:
    """The far end of the bare request/reply baseline (a separate process)."""
    import nats

    nc = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=echo)
    await nc.flush()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.close()


async def baseline(harness: Harness, requests: int, conn: Any) -> dict[str, Any]:
    import nats
    from nats.js.api import StorageType, StreamConfig

    responder = harness.spawn(
        "responder",
        [sys.executable, str(Path(__file__).resolve()), "--responder", harness.endpoints.nats_url],
    )
    deadline = time.monotonic() + 30
    while "READY" not in responder.log.read_text(errors="replace"):
        if not responder.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the echo responder did not start:\n{responder.tail()}")
        await asyncio.sleep(0.05)
    payload = json.dumps({"task_id": "0" * 36, "tenant": "bench", "agent": "chat"}).encode()
    nc = await nats.connect(harness.endpoints.nats_url)
    try:
        for _ in range(200):
            await nc.request(ECHO_SUBJECT, payload, timeout=2)
        rtts = []
        for _ in range(requests):
            began = time.perf_counter()
            await nc.request(ECHO_SUBJECT, payload, timeout=2)
            rtts.append(time.perf_counter() - began)
        # References on the dispatch path: a JetStream publish acked after fsync (the embedded
        # NATS runs with sync_interval: always) and one committed PostgreSQL row.
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="BENCH_REF", subjects=["bench.ref"], storage=StorageType.FILE)
        )
        publishes = []
        for i in range(550):
            began = time.perf_counter()
            await js.publish("bench.ref", payload, headers={"Nats-Msg-Id": f"ref-{i}"})
            if i >= 50:
                publishes.append(time.perf_counter() - began)
        await js.delete_stream("BENCH_REF")
    finally:
        await nc.close()
    harness.stop_children(["responder"])
    await conn.execute("CREATE TABLE bench_ref (id bigserial PRIMARY KEY, body jsonb)")
    commits = []
    for i in range(550):
        began = time.perf_counter()
        await conn.execute("INSERT INTO bench_ref (body) VALUES ($1)", payload.decode())
        if i >= 50:
            commits.append(time.perf_counter() - began)
    await conn.execute("DROP TABLE bench_ref")
    return {
        "nats_request_reply": summary_ms(rtts),
        "jetstream_publish_fsync": summary_ms(publishes),
        "postgres_insert_commit": summary_ms(commits),
    }


# -- phase 2: latency ------------------------------------------------------------------------


async def run_latency(api_url: str, key: str, count: int, warmup: int) -> dict[str, Any]:
    """Sequential tasks: submit, then follow the SSE feed until the final state event."""
    import httpx
    from httpx_sse import aconnect_sse

    body = {"agent": "chat", "input": {"prompt": "ping"}}
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        for index in range(warmup + count):
            wall0 = time.time()
            began = time.perf_counter()
            response = await client.post("/v1/tasks", json=body)
            response.raise_for_status()
            submitted = time.perf_counter()
            task_id = response.json()["id"]
            final: dict[str, Any] | None = None
            done = 0.0
            async with aconnect_sse(client, "GET", f"/v1/tasks/{task_id}/events") as source:
                async for sse in source.aiter_sse():
                    data = json.loads(sse.data)
                    if data.get("type") == "state" and data.get("state") in TERMINAL:
                        done = time.perf_counter()
                        final = data
            if final is None or final["state"] != "succeeded":
                raise RuntimeError(f"task {task_id} ended as {final}")
            if index >= warmup:
                samples.append(
                    {
                        "id": task_id,
                        "wall0": wall0,
                        "submit_s": submitted - began,
                        "total_s": done - began,
                        "wall_done": wall0 + (done - began),
                    }
                )
    return {"samples": samples}


async def latency_breakdown(conn: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Split each task's time at its stored events (same clock: one machine)."""
    ids = [s["id"] for s in samples]
    rows = await conn.fetch(
        "SELECT task_id, seq, type, data::text AS data, created_at FROM task_events "
        "WHERE task_id = ANY($1::text[]) ORDER BY task_id, seq",
        ids,
    )
    marks: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        data = json.loads(row["data"])
        label = data.get("state") if row["type"] == "state" else row["type"]
        marks[row["task_id"]][label] = row["created_at"].timestamp()
    stages: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        m = marks[s["id"]]
        if not {"queued", "running", "model_call", "succeeded"} <= m.keys():
            continue
        stages["1 client -> queued row (HTTP in, auth, validate)"].append(m["queued"] - s["wall0"])
        stages["2 queued -> running (commit, publish, fetch, claim)"].append(
            m["running"] - m["queued"]
        )
        stages["3 running -> model_call (cancel check, LiteLLM call)"].append(
            m["model_call"] - m["running"]
        )
        stages["4 model_call -> succeeded (event tx, finish tx start)"].append(
            m["succeeded"] - m["model_call"]
        )
        stages["5 succeeded -> client sees it (commit, nudge, SSE)"].append(
            s["wall_done"] - m["succeeded"]
        )
    return {name: summary_ms(values) for name, values in sorted(stages.items())}


# -- phase 3: throughput ---------------------------------------------------------------------


async def run_throughput(
    harness: Harness, conn: Any, key: str, tenant: str, count: int, clients: int,
    meter: Meter | None = None, timeout: float = 300.0,
) -> dict[str, Any]:  # fmt: skip
    """Submit ``count`` tasks from ``clients`` concurrent connections; wait until all end."""
    import aiohttp

    body = json.dumps({"agent": "chat", "input": {"prompt": "ping"}})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    next_index = 0
    submit_latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            began = time.perf_counter()
            async with session.post(f"{harness.api_url}/v1/tasks", data=body) as response:
                await response.read()
                if response.status != 202:
                    errors[str(response.status)] += 1
            submit_latencies.append(time.perf_counter() - began)

    if meter is not None:
        await meter.start()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        first_submit = time.time()
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(clients)))
        submit_s = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"submissions failed: {dict(errors)}")
    deadline = time.monotonic() + timeout
    finished = 0
    polls = 0
    while True:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'succeeded') AS ok, "
            "count(*) FILTER (WHERE state IN ('failed', 'cancelled', 'dead_lettered')) AS bad "
            "FROM tasks WHERE tenant = $1",
            tenant,
        )
        polls += 1
        finished = row["ok"] + row["bad"]
        if finished >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {finished} of {count} tasks ended within {timeout:.0f} s")
        await asyncio.sleep(0.1)
    drained_s = time.perf_counter() - t0
    if meter is not None:
        meter.own_queries = polls
    metered = await meter.stop(count) if meter is not None else None
    row = await conn.fetchrow(
        "SELECT count(*) AS ok, max(finished_at) AS last, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) "
        "AS p50, percentile_cont(0.99) WITHIN GROUP "
        "(ORDER BY extract(epoch FROM finished_at - created_at)) AS p99 "
        "FROM tasks WHERE tenant = $1 AND state = 'succeeded'",
        tenant,
    )
    if row["ok"] != count:
        raise RuntimeError(f"{count - row['ok']} of {count} tasks did not succeed")
    span = row["last"].timestamp() - first_submit
    result = {
        "tasks": count,
        "clients": clients,
        "completed_per_s": round(count / span, 1),
        "first_submit_to_last_finished_s": round(span, 3),
        "submit_rate_per_s": round(count / submit_s, 1),
        "submit_phase_s": round(submit_s, 3),
        "submit_latency": summary_ms(submit_latencies),
        "created_to_finished": {"p50_ms": round(row["p50"] * 1000, 1), "p99_ms": round(row["p99"] * 1000, 1)},
        "drain_wall_s": round(drained_s, 3),
    }
    if metered is not None:
        result["resources"] = metered
    return result


# -- phase 4: profile ------------------------------------------------------------------------

# (file suffix, function) -> operation, matched leaf-most first, so nested operations win.
OPERATIONS: list[tuple[str, str, str]] = [
    # worker
    ("spine/platform/llm.py", "complete", "model call (LiteLLM acompletion)"),
    ("spine/platform/tasks.py", "claim", "db: TaskStore.claim (SELECT FOR UPDATE, UPDATE, INSERT event)"),
    ("spine/platform/tasks.py", "cancel_requested", "db: TaskStore.cancel_requested (SELECT)"),
    ("spine/platform/tasks.py", "append_event", "db: TaskStore.append_event (model_call event tx)"),
    ("spine/platform/tasks.py", "finish", "db: TaskStore.finish (result tx)"),
    ("spine/events/progress.py", "announce", "nats: progress nudges (core publish)"),
    ("nats/js/client.py", "fetch", "nats: pull fetch"),
    ("nats/aio/msg.py", "ack_sync", "nats: ack_sync (request/reply)"),
    ("spine/agents/worker.py", "handle", "worker: other per-task code"),
    # API
    ("spine/platform/tasks.py", "submit", "db: TaskStore.submit (INSERT task + event)"),
    ("spine/platform/tasks.py", "mark_published", "db: TaskStore.mark_published (UPDATE)"),
    ("spine/events/bus.py", "publish_durable", "nats: JetStream publish (await ack)"),
    ("spine/platform/keys.py", "verify", "api: key check (cached)"),
    ("spine/agents/dispatch.py", "submit", "api: dispatcher other (validation)"),
    ("spine/platform/api/tasks.py", "submit_task", "api: response model (TaskResponse)"),
    ("spine/agents/dispatch.py", "sweep_once", "api: outbox sweeper"),
]
LIBRARIES = [
    ("/litellm/", "litellm"),
    ("/sqlalchemy/", "sqlalchemy"),
    ("/asyncpg/", "asyncpg"),
    ("/nats/", "nats-py"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/aiohttp/", "aiohttp"),
    ("/pydantic/", "pydantic"),
    ("/pydantic_core/", "pydantic"),
    ("/fastapi/", "fastapi"),
    ("/starlette/", "starlette"),
    ("/uvicorn/", "uvicorn"),
    ("/anyio/", "anyio"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("/spine/", "spine"),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_collapsed(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = []
        for raw in head.split(";"):
            match = _FRAME.match(raw)
            frames.append((match["func"], match["file"]) if match else (raw, ""))
        stacks.append((frames, int(count)))
    return stacks


def attribute(stacks: list[tuple[list[tuple[str, str]], int]]) -> tuple[Counter[str], Counter[str], int]:
    """Count samples per operation (leaf-most match) and per library of the leaf frame."""
    ops: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        op = "outside any task operation (event loop, protocol callbacks, HTTP server)"
        for func, file in reversed(frames):
            hit = next(
                (name for suffix, fn, name in OPERATIONS if file.endswith(suffix) and func == fn),
                None,
            )
            if hit:
                op = hit
                break
        ops[op] += count
        leaf_file = frames[-1][1] if frames else ""
        lib = next((name for needle, name in LIBRARIES if needle in leaf_file), "other")
        if "site-packages" not in leaf_file and lib == "other" and leaf_file:
            lib = "stdlib/other"
        libs[lib] += count
    return ops, libs, total


async def run_profile(
    harness: Harness, conn: Any, key: str, tenant: str, count: int, clients: int, rate: int,
    keep: Path | None,
) -> dict[str, Any]:  # fmt: skip
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    out_dir = harness.tmp / "profiles"
    out_dir.mkdir(exist_ok=True)
    targets = [c for c in harness.children if c.name == "api" or c.name.startswith("worker")]
    spies = []
    for target in targets:
        output = out_dir / f"{target.name}.txt"
        spies.append(
            (
                target,
                output,
                harness.spawn(
                    f"py-spy-{target.name}",
                    [spy, "record", "--pid", str(target.popen.pid), "--rate", str(rate),
                     "--format", "raw", "--output", str(output)],
                    env=os.environ.copy(),
                ),  # fmt: skip
            )
        )
    await asyncio.sleep(1.0)  # py-spy attaches
    for target, _, spy_child in spies:
        if not spy_child.alive():
            harness.stop_children([c.name for _, _, c in spies])
            return {"skipped": f"py-spy could not attach to {target.name}: {spy_child.tail(5)}"}
    try:
        figures = await run_throughput(harness, conn, key, tenant, count, clients)
    finally:
        for _, _, spy_child in spies:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spy_child.popen.pid, signal.SIGINT)
        for _, _, spy_child in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_child.popen.wait(30)
        harness.stop_children([c.name for _, _, c in spies])
    report: dict[str, Any] = {"tasks": count, "rate_hz": rate, "throughput_while_sampled": figures}
    per_role: dict[str, list[Path]] = defaultdict(list)
    for target, output, _ in spies:
        if output.exists():
            per_role["worker" if target.name.startswith("worker") else "api"].append(output)
    for role, files in per_role.items():
        stacks = [s for f in files for s in parse_collapsed(f)]
        ops, libs, total = attribute(stacks)
        scale = 1000 / rate / count  # samples -> CPU ms per task (idle samples excluded)
        report[role] = {
            "samples": total,
            "cpu_ms_per_task": round(total * scale, 3),
            "by_operation_ms_per_task": {k: round(v * scale, 3) for k, v in ops.most_common()},
            "by_leaf_library_ms_per_task": {k: round(v * scale, 3) for k, v in libs.most_common()},
        }
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, keep / f"dispatch-{f.name}")
    return report


async def model_call_overhead(fake_url: str, calls: int = 300) -> dict[str, Any]:
    """One chat call to the 0 ms fake model: through LiteLLM as the worker does, and plain."""
    import httpx
    import litellm

    messages = [{"role": "user", "content": "ping"}]
    out: dict[str, Any] = {}

    async def via_litellm() -> None:
        await litellm.acompletion(
            model="ollama_chat/llama3.2", messages=messages, api_base=fake_url,
            timeout=120, num_retries=0,
        )  # fmt: skip

    async with httpx.AsyncClient(base_url=fake_url, timeout=30) as client:

        async def via_httpx() -> None:
            response = await client.post(
                "/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False}
            )
            response.raise_for_status()

        for name, call in (("litellm_acompletion", via_litellm), ("plain_httpx_post", via_httpx)):
            for _ in range(30):
                await call()
            walls = []
            cpu0 = time.process_time()
            for _ in range(calls):
                began = time.perf_counter()
                await call()
                walls.append(time.perf_counter() - began)
            cpu = time.process_time() - cpu0
            out[name] = {**summary_ms(walls), "client_cpu_ms_per_call": round(cpu * 1000 / calls, 3)}
    return out


# -- the run ---------------------------------------------------------------------------------


async def run_all(harness: Harness, args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    await wait_ready(harness, args.workers)
    conn = await asyncpg.connect(pg_dsn(harness.endpoints.database_url))
    try:
        keys = {t: await create_key(harness.endpoints.database_url, t) for t in
                ("bench-prime", "bench-latency", "bench-throughput", "bench-profile")}  # fmt: skip

        say("priming both workers (first model call imports LiteLLM) ...")
        await run_throughput(harness, conn, keys["bench-prime"], "bench-prime", 64, 32, timeout=120)

        say(f"baseline: {args.baseline_requests} bare NATS request/reply round trips ...")
        base = await baseline(harness, args.baseline_requests, conn)
        rr_p50 = base["nats_request_reply"]["p50_ms"]
        say(f"  request/reply p50 {rr_p50:.3f} ms, p99 {base['nats_request_reply']['p99_ms']:.3f} ms")

        say(f"latency: {args.warmup} warm-up + {args.latency_tasks} sequential tasks ...")
        meter = Meter(harness, conn)
        await meter.start()
        lat = await run_latency(harness.api_url, keys["bench-latency"], args.latency_tasks, args.warmup)
        lat_resources = await meter.stop(args.latency_tasks + args.warmup)
        samples = lat.pop("samples")
        latency = {
            "end_to_end": summary_ms([s["total_s"] for s in samples]),
            "submit_only": summary_ms([s["submit_s"] for s in samples]),
            "breakdown": await latency_breakdown(conn, samples),
            "resources": lat_resources,
        }
        latency["ratio_p50_to_request_reply_p50"] = round(
            latency["end_to_end"]["p50_ms"] / rr_p50, 1
        )

        say(f"throughput: {args.throughput_tasks} tasks from {args.clients} clients ...")
        tput = await run_throughput(
            harness, conn, keys["bench-throughput"], "bench-throughput",
            args.throughput_tasks, args.clients, meter=Meter(harness, conn),
        )  # fmt: skip

        profile: dict[str, Any] = {"skipped": "--no-profile"}
        if not args.no_profile:
            say(f"profile: {args.profile_tasks} more tasks sampled with py-spy ...")
            profile = await run_profile(
                harness, conn, keys["bench-profile"], "bench-profile", args.profile_tasks,
                args.clients, args.profile_rate, args.keep_profiles,
            )  # fmt: skip
            say("profile: LiteLLM call versus a plain HTTP call to the fake model ...")
            profile["model_call_overhead"] = await model_call_overhead(harness.fake.url)
    finally:
        await conn.close()
    return {"baseline": base, "latency": latency, "throughput": tput, "profile": profile}


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    ratio = results["latency"]["ratio_p50_to_request_reply_p50"]
    tps = results["throughput"]["completed_per_s"]
    return {
        "latency_p50_ratio": {
            "target": f"<= {TARGET_RATIO:g}x bare request/reply p50",
            "value": ratio,
            "pass": ratio <= TARGET_RATIO,
        },
        "throughput": {
            "target": f">= {TARGET_TPS:g} tasks/s",
            "value": tps,
            "pass": tps >= TARGET_TPS,
        },
    }


def print_report(doc: dict[str, Any]) -> None:
    r = doc
    line = "-" * 78
    print(line)
    print(f"dispatch benchmark  {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, "
          f"{r['config']['workers']} workers x {r['config']['concurrency']}")  # fmt: skip
    print(line)
    for name, s in r["baseline"].items():
        print(f"{name:<34} p50 {s['p50_ms']:8.3f} ms   p99 {s['p99_ms']:8.3f} ms   (n={s['n']})")
    lat = r["latency"]
    e2e = lat["end_to_end"]
    print(line)
    print(f"{'task submit -> final SSE event':<34} p50 {e2e['p50_ms']:8.3f} ms   "
          f"p99 {e2e['p99_ms']:8.3f} ms   (n={e2e['n']}, sequential)")  # fmt: skip
    sub = lat["submit_only"]
    print(f"{'  of which POST /v1/tasks':<34} p50 {sub['p50_ms']:8.3f} ms   p99 {sub['p99_ms']:8.3f} ms")
    for stage, s in lat["breakdown"].items():
        print(f"    {stage:<58} p50 {s['p50_ms']:7.2f} ms")
    print(f"  CPU per task (sequential): {lat['resources']['cpu_ms_per_task_total']:.2f} ms   "
          f"{_fmt_groups(lat['resources']['cpu_ms_per_task'])}")  # fmt: skip
    tp = r["throughput"]
    print(line)
    print(f"{'completed tasks/s':<34} {tp['completed_per_s']:8.1f}   "
          f"({tp['tasks']} tasks, {tp['clients']} clients, "
          f"{tp['first_submit_to_last_finished_s']:.2f} s first submit -> last finished)")  # fmt: skip
    print(f"{'submit rate alone':<34} {tp['submit_rate_per_s']:8.1f}/s  "
          f"(POST p50 {tp['submit_latency']['p50_ms']:.1f} ms, p99 {tp['submit_latency']['p99_ms']:.1f} ms)")  # fmt: skip
    res = tp["resources"]
    print(f"  CPU per task: {res['cpu_ms_per_task_total']:.2f} ms on {res['cpu_utilisation_cores']} "
          f"busy cores   {_fmt_groups(res['cpu_ms_per_task'])}")  # fmt: skip
    print(f"  PostgreSQL transactions/task {res['pg_transactions_per_task']}, NATS msgs/task "
          f"{res['nats_msgs_per_task']}")  # fmt: skip
    print(line)
    for name, v in r["targets"].items():
        mark = "PASS" if v["pass"] else "MISS"
        print(f"{mark}  {name:<20} {v['value']:>8}   target {v['target']}")
    prof = r["profile"]
    print(line)
    if "skipped" in prof:
        print(f"profile skipped: {prof['skipped']}")
    else:
        for role in ("api", "worker"):
            if role not in prof:
                continue
            p = prof[role]
            print(f"py-spy {role}: {p['cpu_ms_per_task']:.2f} CPU ms per task")
            for op, ms in list(p["by_operation_ms_per_task"].items())[:10]:
                print(f"    {ms:7.3f} ms  {op}")
            libs = ", ".join(f"{k} {v:.2f}" for k, v in list(p["by_leaf_library_ms_per_task"].items())[:8])
            print(f"    by leaf library (ms): {libs}")
        mco = prof.get("model_call_overhead", {})
        for name, s in mco.items():
            print(f"{name:<22} p50 {s['p50_ms']:7.3f} ms wall, {s['client_cpu_ms_per_call']:.3f} CPU ms/call")
    print(line)
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def _fmt_groups(groups: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in groups.items() if v >= 0.005)


def write_results(doc: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, RESULTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--baseline-requests", type=int, default=2000)
    p.add_argument("--latency-tasks", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--throughput-tasks", type=int, default=3000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--profile-tasks", type=int, default=1500)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--keep-profiles", type=Path, default=None, help="copy py-spy stacks here")
    p.add_argument("--responder", metavar="NATS_URL", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.responder:
        asyncio.run(responder_main(args.responder))
        return 0

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = datetime.now(UTC)
    tmp = Path(tempfile.mkdtemp(prefix="spine-bench-"))
    harness = start_harness(tmp, args.workers, args.concurrency)
    try:
        results = asyncio.run(run_all(harness, args))
    except BaseException:
        for child in list(harness.children):
            print(f"--- {child.name} log tail ---\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        say("stopping everything ...")
        harness.close()
    doc = {
        "benchmark": "dispatch",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/dispatch.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "workers": args.workers,
            "concurrency": args.concurrency,
            "fake_model_latency_ms": 0,
            "nats_sync_interval": "always (the embedded default)",
            "latency_follow": "SSE GET /v1/tasks/{id}/events until the final state event",
            "throughput_client": f"aiohttp, {args.clients} connections",
        },
        **results,
    }
    doc["targets"] = verdicts(results)
    write_results(doc)
    print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
