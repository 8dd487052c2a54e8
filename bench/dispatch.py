"""Dispatch benchmark: how fast a task goes from ``POST /v1/tasks`` to a visible result.

Run it as ``.venv/bin/python bench/dispatch.py`` (``make bench``). It starts everything it needs
in a temporary directory: the embedded NATS and PostgreSQL, the fake model server (0 ms) in its
own process, the API and two worker processes exactly as ``spine api`` / ``spine worker`` run.
Then, in one run on this machine:

1. **Baseline**: a bare nats-py request/reply round trip, the responder in another process.
   For reference also one JetStream publish (ack after fsync), one PostgreSQL commit, and
   one model call through LiteLLM (counting its side requests) and through plain httpx.
2. **Latency**: sequential tasks, each ``POST /v1/tasks`` then follow
   ``GET /v1/tasks/{id}/events`` (SSE) until the final state event; p50/p99 and the ratio to
   the bare request/reply p50, a per-stage split from the stored event timestamps, and what a
   GET poll and an SSE follow each cost the API.
3. **Throughput**: many tasks from concurrent HTTP clients against two workers; completed
   tasks/s (first submit to last ``finished_at`` in the database) and the submit rate, with
   CPU time per task of every process, database transactions and NATS messages per task. Then
   the halves alone: submitting with the workers frozen, and the workers draining the queue.
4. **Call costs**: worker database calls as shipped (SQLAlchemy ORM) and through asyncpg.
5. **Profile** (needs ``py-spy`` in the venv; skipped otherwise or with ``--no-profile``): a
   second throughput pass sampled with py-spy, reported as CPU ms per task per operation.

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
from collections.abc import Awaitable, Callable
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


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O)."""
    import psutil

    t = psutil.cpu_times()
    return float(
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
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


async def pg_xid(conn: Any) -> int:
    """Assign and return a transaction id; the ids between two calls went to write transactions."""
    return int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))


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
    xid0: int = 0
    nats0: dict[str, int] = field(default_factory=dict)
    own_queries: int = 0  # transactions the bench itself runs while metering
    wall0: float = 0.0
    busy0: float = 0.0

    async def start(self, *, settle: bool = True) -> None:
        if settle:
            await asyncio.sleep(1.2)  # let PostgreSQL flush its per-backend statistics
        self.xact0 = await pg_transactions(self.conn)
        self.xid0 = await pg_xid(self.conn)
        self.nats0 = await nats_counters(self.harness.endpoints.nats_monitor_url)
        self.cpu0 = cpu_snapshot(self.harness)
        self.busy0 = machine_busy()
        self.wall0 = time.perf_counter()
        self.own_queries = 0

    async def stop(self, tasks: int) -> dict[str, Any]:
        cpu1 = cpu_snapshot(self.harness)
        busy = machine_busy() - self.busy0
        wall = time.perf_counter() - self.wall0
        writes = await pg_xid(self.conn) - self.xid0 - 1
        await asyncio.sleep(1.2)
        xact = await pg_transactions(self.conn) - self.xact0 - self.own_queries - 3
        counters = await nats_counters(self.harness.endpoints.nats_monitor_url)
        spent = cpu_delta(self.cpu0, cpu1)
        total = sum(spent.values())
        return {
            "wall_s": round(wall, 3),
            "cpu_s": {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])},
            "cpu_ms_per_task": {
                k: round(v * 1000 / tasks, 3)
                for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
            },
            "cpu_ms_per_task_total": round(total * 1000 / tasks, 3),
            "cpu_utilisation_cores": round(total / wall, 2) if wall else None,
            # Other processes on the machine (e.g. a test suite) during the phase; figures
            # taken while this is well above zero are disturbed.
            "foreign_cpu_cores": round(max(busy - total, 0.0) / wall, 2) if wall else None,
            # Exact: each write transaction takes one transaction id.
            "pg_write_transactions_per_task": round(writes / tasks, 2),
            # All transactions, reads and pool pre-pings included; from pg_stat_database,
            # which backends flush lazily, so approximate.
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
    out: dict[str, Any] = {}
    nc = await nats.connect(harness.endpoints.nats_url)
    try:

        async def request() -> None:
            await nc.request(ECHO_SUBJECT, payload, timeout=2)

        out["nats_request_reply"] = await timed_calls(request, requests)
        # References on the dispatch path: a JetStream publish acked after fsync (the embedded
        # NATS runs with sync_interval: always) and one committed PostgreSQL row.
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="BENCH_REF", subjects=["bench.ref"], storage=StorageType.FILE)
        )
        sequence = iter(range(10**9))

        async def publish() -> None:
            await js.publish("bench.ref", payload, headers={"Nats-Msg-Id": f"ref-{next(sequence)}"})

        out["jetstream_publish_fsync"] = await timed_calls(publish, 500)
        await js.delete_stream("BENCH_REF")
    finally:
        await nc.close()
    harness.stop_children(["responder"])
    await conn.execute("CREATE TABLE bench_ref (id bigserial PRIMARY KEY, body jsonb)")

    async def commit() -> None:
        await conn.execute("INSERT INTO bench_ref (body) VALUES ($1)", payload.decode())

    out["postgres_insert_commit"] = await timed_calls(commit, 500)
    await conn.execute("DROP TABLE bench_ref")
    return out


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


async def follow_cost(harness: Harness, conn: Any, key: str, task_ids: list[str]) -> dict[str, Any]:
    """What watching a task costs the API: one GET poll versus one SSE follow (ended tasks)."""
    import httpx
    from httpx_sse import aconnect_sse

    out: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=harness.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def poll(task_id: str) -> None:
            (await client.get(f"/v1/tasks/{task_id}")).raise_for_status()

        async def follow(task_id: str) -> None:
            async with aconnect_sse(client, "GET", f"/v1/tasks/{task_id}/events") as source:
                async for _ in source.aiter_sse():
                    pass

        for name, call in (("get_poll", poll), ("sse_follow_ended_task", follow)):
            meter = Meter(harness, conn)
            await meter.start()
            walls = []
            for task_id in task_ids:
                began = time.perf_counter()
                await call(task_id)
                walls.append(time.perf_counter() - began)
            used = await meter.stop(len(task_ids))
            out[name] = {
                **summary_ms(walls),
                "api_cpu_ms_per_request": used["cpu_ms_per_task"].get("api", 0.0),
                "foreign_cpu_cores": used["foreign_cpu_cores"],
            }
    return out


async def latency_breakdown(conn: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Split each task's time at its stored events (same clock: one machine).

    An event's ``created_at`` is stamped inside its transaction, after the row lock and before
    the commit, so each commit falls into the stage after its stamp.
    """
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
        stages["1 POST sent -> queued stamped (HTTP, auth, validation, session)"].append(
            m["queued"] - s["wall0"]
        )
        stages["2 queued -> running stamped (commit, publish, fetch, claim lock)"].append(
            m["running"] - m["queued"]
        )
        stages["3 running -> model_call stamped (commit, cancel check, LiteLLM)"].append(
            m["model_call"] - m["running"]
        )
        stages["4 model_call -> succeeded stamped (event commit, finish lock)"].append(
            m["succeeded"] - m["model_call"]
        )
        stages["5 succeeded -> client has it (commit, nudge, SSE)"].append(
            s["wall_done"] - m["succeeded"]
        )
    return {name: summary_ms(values) for name, values in sorted(stages.items())}


# -- phase 3: throughput ---------------------------------------------------------------------


@dataclass
class Submitted:
    first_wall: float  # time.time() when the first POST began
    seconds: float  # first POST began -> last POST answered
    latencies: list[float]


async def submit_many(api_url: str, key: str, count: int, clients: int) -> Submitted:
    """POST ``count`` chat tasks from ``clients`` concurrent keep-alive connections.

    The load generator is aiohttp, not httpx: on two cores every client CPU millisecond is
    taken from the platform, and aiohttp costs a fraction of httpx per request.
    """
    import aiohttp

    body = json.dumps({"agent": "chat", "input": {"prompt": "ping"}})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    next_index = 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            began = time.perf_counter()
            async with session.post(f"{api_url}/v1/tasks", data=body) as response:
                await response.read()
                if response.status != 202:
                    errors[f"{response.status} {(await response.text())[:200]}"] += 1
            latencies.append(time.perf_counter() - began)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        first = time.time()
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"submissions failed: {dict(errors)}")
    return Submitted(first, seconds, latencies)


async def wait_finished(conn: Any, tenant: str, count: int, timeout: float) -> int:
    """Poll the database until the tenant's ``count`` tasks ended; return the polls made."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled', "
            "'dead_lettered')) AS ended FROM tasks WHERE tenant = $1",
            tenant,
        )
        polls += 1
        if row["ended"] >= count:
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {row['ended']} of {count} tasks ended within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def finished_stats(conn: Any, tenant: str, count: int) -> dict[str, Any]:
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
    return {
        "last_finished": row["last"].timestamp(),
        "created_to_finished": {
            "p50_ms": round(float(row["p50"]) * 1000, 1),
            "p99_ms": round(float(row["p99"]) * 1000, 1),
        },
    }


async def run_throughput(
    harness: Harness,
    conn: Any,
    key: str,
    tenant: str,
    count: int,
    clients: int,
    meter: Meter | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Submit ``count`` tasks while the workers run; completed tasks/s and submit rate."""
    if meter is not None:
        await meter.start()
    sent = await submit_many(harness.api_url, key, count, clients)
    polls = await wait_finished(conn, tenant, count, timeout)
    metered = None
    if meter is not None:
        meter.own_queries = polls
        metered = await meter.stop(count)
    stats = await finished_stats(conn, tenant, count)
    span = stats["last_finished"] - sent.first_wall
    result: dict[str, Any] = {
        "tasks": count,
        "clients": clients,
        "completed_per_s": round(count / span, 1),
        "first_submit_to_last_finished_s": round(span, 3),
        "submit_rate_per_s": round(count / sent.seconds, 1),
        "submit_phase_s": round(sent.seconds, 3),
        "submit_latency": summary_ms(sent.latencies),
        "created_to_finished": stats["created_to_finished"],
    }
    if metered is not None:
        result["resources"] = metered
    return result


def signal_workers(harness: Harness, sig: signal.Signals) -> None:
    for child in harness.children:
        if child.name.startswith("worker"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.popen.pid, sig)


async def run_split(
    harness: Harness,
    conn: Any,
    key: str,
    tenant: str,
    count: int,
    clients: int,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """The two halves alone: submit with the workers frozen, then let them drain the queue."""
    api_meter = Meter(harness, conn)
    await api_meter.start()
    drain_meter = Meter(harness, conn)
    signal_workers(harness, signal.SIGSTOP)
    try:
        sent = await submit_many(harness.api_url, key, count, clients)
        api_only = await api_meter.stop(count)
        await drain_meter.start(settle=False)
    finally:
        signal_workers(harness, signal.SIGCONT)
    resumed = time.time()
    polls = await wait_finished(conn, tenant, count, timeout)
    drain_meter.own_queries = polls
    workers_only = await drain_meter.stop(count)
    stats = await finished_stats(conn, tenant, count)
    drain_s = stats["last_finished"] - resumed
    return {
        "tasks": count,
        "api_alone": {
            "submit_rate_per_s": round(count / sent.seconds, 1),
            "submit_latency": summary_ms(sent.latencies),
            "resources": api_only,
        },
        "workers_alone": {
            "completed_per_s": round(count / drain_s, 1),
            "drain_s": round(drain_s, 3),
            "resources": workers_only,
        },
    }


# -- phase 4: profile ------------------------------------------------------------------------

# (file suffix, qualified function) -> operation. A sample counts for the leaf-most operation
# on its stack, so nested operations (a transaction inside the dispatcher) win.
OPERATIONS: list[tuple[str, str, str]] = [
    # worker
    (
        "spine/platform/llm.py",
        "LiteLLMClient.complete",
        "model call: LiteLLM acompletion (event loop side)",
    ),
    (
        "spine/platform/tasks.py",
        "TaskStore.claim",
        "db: TaskStore.claim (SELECT FOR UPDATE, UPDATE, INSERT event)",
    ),
    (
        "spine/platform/tasks.py",
        "TaskStore.cancel_requested",
        "db: TaskStore.cancel_requested (SELECT before the step)",
    ),
    (
        "spine/platform/tasks.py",
        "TaskStore.append_event",
        "db: TaskStore.append_event (model_call event, own tx)",
    ),
    ("spine/platform/tasks.py", "TaskStore.finish", "db: TaskStore.finish (result, own tx)"),
    ("nats/js/client.py", "PullSubscription.fetch", "nats: pull fetch(1)"),
    ("nats/aio/msg.py", "Msg.ack_sync", "nats: ack_sync (request/reply)"),
    (
        "spine/agents/worker.py",
        "TaskWorker._run_agent",
        "worker: agent glue (input parse, RunContext.step)",
    ),
    ("spine/agents/worker.py", "TaskWorker.handle", "worker: other per-task code"),
    # API
    ("spine/platform/tasks.py", "TaskStore.submit", "db: TaskStore.submit (INSERT task + event)"),
    (
        "spine/platform/tasks.py",
        "TaskStore.mark_published",
        "db: TaskStore.mark_published (UPDATE, own tx)",
    ),
    ("spine/events/bus.py", "NatsBus.publish_durable", "nats: JetStream publish (await ack)"),
    ("spine/platform/keys.py", "KeyStore.verify", "api: key check (cached)"),
    (
        "spine/agents/dispatch.py",
        "TaskDispatcher.submit",
        "api: dispatcher other (input validation)",
    ),
    ("spine/agents/dispatch.py", "TaskDispatcher.sweep_once", "api: outbox sweeper"),
    ("spine/platform/api/tasks.py", "submit_task", "api: route body (TaskResponse.of)"),
    (
        "fastapi/routing.py",
        "serialize_response",
        "api: FastAPI response validation + serialisation",
    ),
    ("fastapi/dependencies/utils.py", "request_body_to_args", "api: FastAPI body validation"),
    # both
    ("spine/events/progress.py", "ProgressFeed.announce", "nats: progress nudges (core publish)"),
]
# For samples outside every operation: the first library found anywhere on the stack.
FALLBACKS: list[tuple[str, str]] = [
    (
        "/litellm/",
        "LiteLLM off the awaited path (sync completion() in the thread pool, logging tasks)",
    ),
    ("concurrent/futures/thread.py", "thread pool (other)"),
    # SQLAlchemy runs the ORM's flush/commit/execute in greenlets, whose stacks do not show
    # the TaskStore method that started them.
    ("/sqlalchemy/", "db: SQLAlchemy ORM in greenlets (flush, commit, execute of any call)"),
    ("/asyncpg/", "db: asyncpg protocol callbacks"),
    ("/nats/", "nats: client read loop, flusher"),
    ("/uvicorn/", "HTTP server (uvicorn, Starlette, middleware)"),
    ("/starlette/", "HTTP server (uvicorn, Starlette, middleware)"),
    ("/fastapi/", "HTTP server (uvicorn, Starlette, middleware)"),
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
    ("/selectors.py", "asyncio"),
    ("/concurrent/", "threads"),
    ("/threading.py", "threads"),
    ("/socket.py", "socket"),
    ("/spine/", "spine"),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_collapsed(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Read py-spy's raw (collapsed) stacks: ``frame;frame;... count``, root first."""
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


AREAS = [
    ("db:", "database: SQLAlchemy ORM + asyncpg"),
    ("model call", "model call: LiteLLM"),
    ("LiteLLM", "model call: LiteLLM"),
    ("nats:", "NATS client"),
    ("HTTP server", "HTTP server + FastAPI"),
    ("api: FastAPI", "HTTP server + FastAPI"),
    ("api:", "platform code"),
    ("worker:", "platform code"),
]


def area_of(operation: str) -> str:
    return next((a for prefix, a in AREAS if operation.startswith(prefix)), "event loop, other")


def _is(func: str, file: str, suffix: str, qualname: str) -> bool:
    return file.endswith(suffix) and (func == qualname or func.endswith("." + qualname))


def attribute(
    stacks: list[tuple[list[tuple[str, str]], int]],
) -> tuple[Counter[str], Counter[str], int]:
    """Count samples per operation and per library of the leaf frame."""
    ops: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        op = None
        for func, file in reversed(frames):
            op = next((n for sfx, q, n in OPERATIONS if _is(func, file, sfx, q)), None)
            if op:
                break
        if op is None:
            files = [file for _, file in frames]
            op = next(
                (name for needle, name in FALLBACKS if any(needle in f for f in files)),
                "event loop and other",
            )
        ops[op] += count
        leaf = frames[-1][1] if frames else ""
        libs[next((name for needle, name in LIBRARIES if needle in leaf), "other")] += count
    return ops, libs, total


async def run_profile(
    harness: Harness,
    measured: dict[str, float],
    conn: Any,
    key: str,
    tenant: str,
    count: int,
    clients: int,
    rate: int,
    keep: Path | None,
) -> dict[str, Any]:
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
                    # --gil: only samples holding the GIL, i.e. Python CPU time, so threads
                    # parked in a pool are not counted as busy.
                    [
                        spy,
                        "record",
                        "--pid",
                        str(target.popen.pid),
                        "--rate",
                        str(rate),
                        "--gil",
                        "--full-filenames",
                        "--format",
                        "raw",
                        "--output",
                        str(output),
                    ],
                    env=os.environ.copy(),
                ),
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
        if not total:
            continue
        # Sampling slows the processes, so its own ms are high; shares of the samples are
        # applied to the CPU per task measured without py-spy (the throughput phase).
        base = measured.get(role, 0.0)
        areas: Counter[str] = Counter()
        for op, n in ops.items():
            areas[area_of(op)] += n

        def shares(counts: Counter[str], base: float = base, total: int = total) -> dict[str, Any]:
            return {
                k: {
                    "share_pct": round(100 * v / total, 1),
                    "ms_per_task": round(base * v / total, 3),
                }
                for k, v in counts.most_common()
            }

        report[role] = {
            "samples": total,
            "sampled_cpu_ms_per_task": round(total * 1000 / rate / count, 3),
            "measured_cpu_ms_per_task": base,
            "by_area": shares(areas),
            "by_operation": shares(ops),
            "by_leaf_library": shares(libs),
        }
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, keep / f"dispatch-{f.name}")
    return report


async def timed_calls(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, Any]:
    """Wall time per call, and this process's CPU per call, after a warm-up."""
    for _ in range(max(calls // 10, 10)):
        await call()
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - began)
    cpu = time.process_time() - cpu0
    return {**summary_ms(walls), "client_cpu_ms_per_call": round(cpu * 1000 / calls, 3)}


async def db_call_costs(database_url: str, task_id: str, calls: int = 300) -> dict[str, Any]:
    """One worker-side database call, as shipped and leaner, run from the bench process.

    ``append_event`` is a whole transaction (lock the task row, bump its event counter, insert
    the event); ``cancel_requested`` is the one-column read before each agent step. They are
    repeated on an ended task of the latency phase, which nobody follows any more.
    """
    import asyncpg
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from spine.platform.db import Database
    from spine.platform.tasks import TaskStore

    out: dict[str, Any] = {}
    shipped = Database(database_url)
    # The same engine without pool_pre_ping (which costs one extra round trip per session).
    no_ping = Database(database_url)
    no_ping.engine = create_async_engine(no_ping.url, pool_size=10, max_overflow=10)
    no_ping._sessions = async_sessionmaker(no_ping.engine, expire_on_commit=False)
    out["pool_pre_ping_as_shipped"] = bool(getattr(shipped.engine.pool, "_pre_ping", None))
    conn = await asyncpg.connect(pg_dsn(database_url))
    try:
        for name, db in (("orm_as_shipped", shipped), ("orm_without_pool_pre_ping", no_ping)):
            store = TaskStore(db)

            async def append(store: TaskStore = store) -> None:
                await store.append_event(task_id, "bench", {"n": 1})

            async def read(store: TaskStore = store) -> None:
                await store.cancel_requested(task_id)

            out[f"append_event_{name}"] = await timed_calls(append, calls)
            out[f"cancel_requested_{name}"] = await timed_calls(read, calls)

        async def append_raw() -> None:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT tenant, event_seq FROM tasks WHERE id = $1 FOR UPDATE", task_id
                )
                await conn.execute(
                    "UPDATE tasks SET event_seq = $2, updated_at = now() WHERE id = $1",
                    task_id,
                    row["event_seq"] + 1,
                )
                await conn.execute(
                    "INSERT INTO task_events (task_id, tenant, seq, type, data, created_at) "
                    "VALUES ($1, $2, $3, 'bench', $4::jsonb, now())",
                    task_id,
                    row["tenant"],
                    row["event_seq"] + 1,
                    '{"n": 1}',
                )

        async def append_one_statement() -> None:
            await conn.execute(
                "WITH t AS (UPDATE tasks SET event_seq = event_seq + 1, updated_at = now() "
                "WHERE id = $1 RETURNING id, tenant, event_seq) "
                "INSERT INTO task_events (task_id, tenant, seq, type, data, created_at) "
                "SELECT id, tenant, event_seq, 'bench', $2::jsonb, now() FROM t",
                task_id,
                '{"n": 1}',
            )

        async def read_raw() -> None:
            await conn.fetchval("SELECT cancel_requested FROM tasks WHERE id = $1", task_id)

        out["append_event_asyncpg_same_3_statements"] = await timed_calls(append_raw, calls)
        out["append_event_asyncpg_one_statement"] = await timed_calls(append_one_statement, calls)
        out["cancel_requested_asyncpg"] = await timed_calls(read_raw, calls)
    finally:
        await conn.close()
        await shipped.dispose()
        await no_ping.dispose()
    return out


async def model_call_overhead(fake_url: str, calls: int = 300) -> dict[str, Any]:
    """One chat call to the 0 ms fake model: through LiteLLM as the worker does, and plain."""
    import httpx
    import litellm

    messages = [{"role": "user", "content": "ping"}]
    out: dict[str, Any] = {}

    async def via_litellm() -> None:
        await litellm.acompletion(
            model="ollama_chat/llama3.2",
            messages=messages,
            api_base=fake_url,
            timeout=120,
            num_retries=0,
        )

    async with httpx.AsyncClient(base_url=fake_url, timeout=30) as client:

        async def via_httpx() -> None:
            response = await client.post(
                "/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False}
            )
            response.raise_for_status()

        # LiteLLM also makes synchronous side requests from its thread pool (for Ollama it looks
        # the model up with POST /api/show); count them and where they go.
        side = litellm.module_level_client
        original_post = side.post
        side_requests: Counter[str] = Counter()

        def counting_post(*args: Any, **kwargs: Any) -> Any:
            url = str(kwargs.get("url", args[0] if args else "?"))
            try:
                response = original_post(*args, **kwargs)
            except Exception as exc:
                side_requests[f"{url} -> {type(exc).__name__}"] += 1
                raise
            side_requests[f"{url} -> {response.status_code}"] += 1
            return response

        side.post = counting_post
        try:
            out["litellm_acompletion"] = await timed_calls(via_litellm, calls)
        finally:
            side.post = original_post
        total = calls + max(calls // 10, 10)
        out["litellm_acompletion"]["side_requests_per_call"] = {
            k: round(v / total, 2) for k, v in side_requests.items()
        }
        out["plain_httpx_post"] = await timed_calls(via_httpx, calls)
        # With the model in LiteLLM's price map, the /api/show look-ups are skipped.
        litellm.register_model(
            {
                "ollama_chat/llama3.2": {
                    "litellm_provider": "ollama_chat",
                    "mode": "chat",
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "max_tokens": 8192,
                }
            }
        )
        out["litellm_acompletion_model_registered"] = await timed_calls(via_litellm, calls)
    return out


# -- the run ---------------------------------------------------------------------------------


async def wait_quiet(harness: Harness, timeout: float, limit: float = 0.3) -> float:
    """Wait (at most ``timeout`` s) until other processes use under ``limit`` cores; return it."""
    deadline = time.monotonic() + timeout
    while True:
        cpu0, busy0, t0 = cpu_snapshot(harness), machine_busy(), time.perf_counter()
        await asyncio.sleep(2.0)
        ours = sum(cpu_delta(cpu0, cpu_snapshot(harness)).values())
        foreign = max(machine_busy() - busy0 - ours, 0.0) / (time.perf_counter() - t0)
        if foreign < limit or time.monotonic() > deadline:
            return round(foreign, 2)
        say(f"  other processes use {foreign:.2f} cores; waiting for a quieter machine ...")


async def run_all(harness: Harness, args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    await wait_ready(harness, args.workers)
    conn = await asyncpg.connect(pg_dsn(harness.endpoints.database_url))
    try:
        keys = {
            t: await create_key(harness.endpoints.database_url, t)
            for t in (
                "bench-prime",
                "bench-latency",
                "bench-throughput",
                "bench-split",
                "bench-profile",
            )
        }

        say("priming both workers (first model call imports LiteLLM) ...")
        await run_throughput(harness, conn, keys["bench-prime"], "bench-prime", 64, 32, timeout=120)

        quiet: dict[str, float] = {}

        async def settle(phase: str) -> None:
            # Other sessions' test suites come and go on a shared machine: before each
            # measured phase, wait a little for them to pause.
            if args.quiet_timeout > 0:
                quiet[phase] = await wait_quiet(harness, args.quiet_timeout)
                say(f"  load from other processes before the {phase}: {quiet[phase]:.2f} cores")

        await settle("baseline")
        say(f"baseline: {args.baseline_requests} bare NATS request/reply round trips ...")
        base = await baseline(harness, args.baseline_requests, conn)
        rr_p50 = base["nats_request_reply"]["p50_ms"]
        say("baseline: one model call to the fake model, via LiteLLM and via plain httpx ...")
        calls = await model_call_overhead(harness.fake.url)
        base["model_call_litellm"] = calls["litellm_acompletion"]
        base["model_call_plain_httpx"] = calls["plain_httpx_post"]
        base["model_call_litellm_model_registered"] = calls["litellm_acompletion_model_registered"]
        # What the current design cannot go below even with no Python overhead at all: its
        # sequential commits, the JetStream publish, two NATS hops and one model HTTP call.
        floor = (
            4 * base["postgres_insert_commit"]["p50_ms"]
            + base["jetstream_publish_fsync"]["p50_ms"]
            + 2 * rr_p50
            + base["model_call_plain_httpx"]["p50_ms"]
        )
        base["design_floor"] = {
            "what": "4 PostgreSQL commits (submit, claim, model_call event, finish) + 1 "
            "JetStream publish + 2 NATS hops (delivery, progress nudge) + 1 plain model call",
            "p50_ms": round(floor, 3),
            "ratio_to_request_reply": round(floor / rr_p50, 1),
        }
        say(
            f"  request/reply p50 {rr_p50:.3f} ms, p99 {base['nats_request_reply']['p99_ms']:.3f} ms"
        )

        await settle("latency")
        say(f"latency: {args.warmup} warm-up + {args.latency_tasks} sequential tasks ...")
        meter = Meter(harness, conn)
        await meter.start()
        lat = await run_latency(
            harness.api_url, keys["bench-latency"], args.latency_tasks, args.warmup
        )
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
        say("latency: what following a task costs the API (GET poll versus SSE) ...")
        latency["follow_cost"] = await follow_cost(
            harness, conn, keys["bench-latency"], [s["id"] for s in samples[:200]]
        )

        say("call costs: one database call, as shipped and leaner ...")
        call_costs = await db_call_costs(harness.endpoints.database_url, samples[-1]["id"])
        await settle("throughput")
        say(f"throughput: {args.throughput_tasks} tasks from {args.clients} clients ...")
        tput = await run_throughput(
            harness,
            conn,
            keys["bench-throughput"],
            "bench-throughput",
            args.throughput_tasks,
            args.clients,
            meter=Meter(harness, conn),
        )
        if args.split_tasks:
            await settle("split")
            say(
                f"split: {args.split_tasks} tasks submitted with the workers frozen, then drained ..."
            )
            tput["split"] = await run_split(
                harness, conn, keys["bench-split"], "bench-split", args.split_tasks, args.clients
            )

        profile: dict[str, Any] = {"skipped": "--no-profile"}
        if not args.no_profile:
            say(f"profile: {args.profile_tasks} more tasks sampled with py-spy ...")
            profile = await run_profile(
                harness,
                tput["resources"]["cpu_ms_per_task"],
                conn,
                keys["bench-profile"],
                "bench-profile",
                args.profile_tasks,
                args.clients,
                args.profile_rate,
                args.keep_profiles,
            )
    finally:
        await conn.close()
    return {
        "baseline": base,
        "latency": latency,
        "throughput": tput,
        "db_call_costs": call_costs,
        "foreign_cpu_cores_before_phase": quiet,
        "profile": profile,
    }


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
    print(
        f"dispatch benchmark  {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, "
        f"{r['config']['workers']} workers x {r['config']['concurrency']}"
    )
    print(line)
    for name, s in r["baseline"].items():
        if name == "design_floor":
            print(
                f"{'floor of this design (sum of p50s)':<34} p50 {s['p50_ms']:8.3f} ms   "
                f"= {s['ratio_to_request_reply']}x request/reply"
            )
            continue
        cpu = s.get("client_cpu_ms_per_call")
        extra = f", {cpu:.2f} CPU ms/call" if cpu is not None else ""
        for url, n in s.get("side_requests_per_call", {}).items():
            extra += f"; +{n} x {url}"
        print(
            f"{name:<34} p50 {s['p50_ms']:8.3f} ms   p99 {s['p99_ms']:8.3f} ms   "
            f"(n={s['n']}{extra})"
        )
    lat = r["latency"]
    e2e = lat["end_to_end"]
    print(line)
    print(
        f"{'task submit -> final SSE event':<34} p50 {e2e['p50_ms']:8.3f} ms   "
        f"p99 {e2e['p99_ms']:8.3f} ms   (n={e2e['n']}, sequential)"
    )
    sub = lat["submit_only"]
    print(
        f"{'  of which POST /v1/tasks':<34} p50 {sub['p50_ms']:8.3f} ms   p99 {sub['p99_ms']:8.3f} ms"
    )
    for stage, s in lat["breakdown"].items():
        print(f"    {stage:<58} p50 {s['p50_ms']:7.2f} ms")
    print(
        f"  CPU per task (sequential): {lat['resources']['cpu_ms_per_task_total']:.2f} ms   "
        f"{_fmt_groups(lat['resources']['cpu_ms_per_task'])}"
    )
    for name, s in lat.get("follow_cost", {}).items():
        print(
            f"  watching cost, {name:<22} API CPU {s['api_cpu_ms_per_request']:.2f} ms/request, "
            f"p50 {s['p50_ms']:.2f} ms"
        )
    tp = r["throughput"]
    print(line)
    print(
        f"{'completed tasks/s':<34} {tp['completed_per_s']:8.1f}   "
        f"({tp['tasks']} tasks, {tp['clients']} clients, "
        f"{tp['first_submit_to_last_finished_s']:.2f} s first submit -> last finished)"
    )
    print(
        f"{'submit rate alone':<34} {tp['submit_rate_per_s']:8.1f}/s  "
        f"(POST p50 {tp['submit_latency']['p50_ms']:.1f} ms, p99 {tp['submit_latency']['p99_ms']:.1f} ms)"
    )
    res = tp["resources"]
    print(
        f"  CPU per task: {res['cpu_ms_per_task_total']:.2f} ms on {res['cpu_utilisation_cores']} "
        f"busy cores   {_fmt_groups(res['cpu_ms_per_task'])}"
    )
    print(
        f"  PostgreSQL transactions/task {res['pg_write_transactions_per_task']} writing, "
        f"~{res['pg_transactions_per_task']} in all; NATS msgs/task "
        f"{res['nats_msgs_per_task']}"
    )
    if "split" in tp:
        api, wk = tp["split"]["api_alone"], tp["split"]["workers_alone"]
        print(
            f"{'submit rate, workers frozen':<34} {api['submit_rate_per_s']:8.1f}/s  "
            f"CPU/task {api['resources']['cpu_ms_per_task_total']:.2f} ms  "
            f"{_fmt_groups(api['resources']['cpu_ms_per_task'])}"
        )
        print(
            f"{'drain rate, API idle':<34} {wk['completed_per_s']:8.1f}/s  "
            f"CPU/task {wk['resources']['cpu_ms_per_task_total']:.2f} ms  "
            f"{_fmt_groups(wk['resources']['cpu_ms_per_task'])}"
        )
    foreign = [
        ("latency", lat["resources"]["foreign_cpu_cores"]),
        ("throughput", res["foreign_cpu_cores"]),
    ]
    if "split" in tp:
        foreign += [
            ("api alone", tp["split"]["api_alone"]["resources"]["foreign_cpu_cores"]),
            ("workers alone", tp["split"]["workers_alone"]["resources"]["foreign_cpu_cores"]),
        ]
    if any(v and v > 0.2 for _, v in foreign):
        print(
            f"WARNING: other processes used CPU during the run (cores): {dict(foreign)}; "
            "the figures are disturbed"
        )
    print(line)
    for name, v in r["targets"].items():
        mark = "PASS" if v["pass"] else "MISS"
        print(f"{mark}  {name:<20} {v['value']:>8}   target {v['target']}")
    print(line)
    for name, s in r["db_call_costs"].items():
        if not isinstance(s, dict):
            print(f"{name}: {s}")
            continue
        print(
            f"{name:<46} p50 {s['p50_ms']:6.3f} ms, {s['client_cpu_ms_per_call']:6.3f} CPU ms/call"
        )
    prof = r["profile"]
    print(line)
    if "skipped" in prof:
        print(f"profile skipped: {prof['skipped']}")
    else:
        for role in ("api", "worker"):
            if role not in prof:
                continue
            p = prof[role]
            print(
                f"py-spy {role}: shares of {p['samples']} samples applied to the measured "
                f"{p['measured_cpu_ms_per_task']:.2f} CPU ms per task"
            )
            for area, v in p["by_area"].items():
                print(f"  {v['ms_per_task']:7.3f} ms {v['share_pct']:5.1f}%  {area}")
            for op, v in list(p["by_operation"].items())[:12]:
                print(f"      {v['ms_per_task']:7.3f} ms  {op}")
    print(line)
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def _fmt_groups(groups: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in groups.items() if v >= 0.005)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the work tree had changes on top of it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


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
    p.add_argument("--split-tasks", type=int, default=1000, help="0 skips the split phase")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--profile-tasks", type=int, default=1500)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=45.0,
        help="seconds to wait, before each phase, for other processes to go quiet (0: no wait)",
    )
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
        "code": code_version(),
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
