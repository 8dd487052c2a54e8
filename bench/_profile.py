"""Phase 5, profile: a second throughput pass sampled with py-spy on the API and the workers.

Each operation's share of the samples is multiplied by the CPU per task measured in the
unsampled throughput pass, so the sampling overhead is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _harness import Child, Harness, Tenant
from _throughput import run_throughput

# (file suffix, qualified function) -> operation. A sample counts for the leaf-most operation
# on its stack, so nested operations (a transaction inside the dispatcher) win.
OPERATIONS: list[tuple[str, str, str]] = [
    # worker
    (
        "spine/platform/models/upstream.py",
        "UpstreamClient.call",
        "model call: upstream HTTP or LiteLLM (event loop side)",
    ),
    (
        "spine/platform/tasks/store.py",
        "TaskStore.claim",
        "db: TaskStore.claim (SELECT FOR UPDATE, UPDATE, INSERT event)",
    ),
    (
        "spine/platform/tasks/store.py",
        "TaskStore.cancel_requested",
        "db: TaskStore.cancel_requested (SELECT before the step)",
    ),
    (
        "spine/platform/tasks/store.py",
        "TaskStore.append_event",
        "db: TaskStore.append_event (model_call event, own tx)",
    ),
    ("spine/platform/tasks/store.py", "TaskStore.finish", "db: TaskStore.finish (result, own tx)"),
    ("nats/js/client.py", "PullSubscription.fetch", "nats: pull fetch(1)"),
    ("nats/aio/msg.py", "Msg.ack_sync", "nats: ack_sync (request/reply)"),
    (
        "spine/agents/worker.py",
        "TaskWorker._run_agent",
        "worker: agent glue (input parse, RunContext.step)",
    ),
    ("spine/agents/worker.py", "TaskWorker.handle", "worker: other per-task code"),
    # API
    (
        "spine/platform/tasks/store.py",
        "TaskStore.submit",
        "db: TaskStore.submit (INSERT task + event)",
    ),
    (
        "spine/platform/tasks/store.py",
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
    ("spine/platform/app/api/tasks.py", "submit_task", "api: route body (TaskResponse.of)"),
    (
        "fastapi/routing.py",
        "serialize_response",
        "api: FastAPI response validation + serialisation",
    ),
    ("fastapi/dependencies/utils.py", "request_body_to_args", "api: FastAPI body validation"),
    # both
    ("spine/events/progress.py", "ProgressNudges.__call__", "nats: progress nudges (core publish)"),
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
    operations: list[tuple[str, str, str]] = OPERATIONS,
    fallbacks: list[tuple[str, str]] = FALLBACKS,
) -> tuple[Counter[str], Counter[str], int]:
    """Count samples per operation and per library of the leaf frame."""
    ops: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        op = None
        for func, file in reversed(frames):
            op = next((n for sfx, q, n in operations if _is(func, file, sfx, q)), None)
            if op:
                break
        if op is None:
            files = [file for _, file in frames]
            op = next(
                (name for needle, name in fallbacks if any(needle in f for f in files)),
                "event loop and other",
            )
        ops[op] += count
        leaf = frames[-1][1] if frames else ""
        libs[next((name for needle, name in LIBRARIES if needle in leaf), "other")] += count
    return ops, libs, total


def shares(counts: Counter[str], base: float, total: int) -> dict[str, Any]:
    """Each key's share of ``total`` samples, and that share of ``base`` CPU ms per task."""
    return {
        k: {
            "share_pct": round(100 * v / total, 1),
            "ms_per_task": round(base * v / total, 3),
        }
        for k, v in counts.most_common()
    }


def spawn_spy(harness: Harness, spy: str, target: Child, rate: int, output: Path) -> Child:
    """Start py-spy recording ``target`` into ``output`` (raw collapsed stacks)."""
    return harness.spawn(
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
    )


async def run_profile(
    harness: Harness,
    measured: dict[str, float],
    conn: Any,
    tenant: Tenant,
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
    outputs = {target.name: out_dir / f"{target.name}.txt" for target in targets}
    spies = [spawn_spy(harness, spy, t, rate, outputs[t.name]) for t in targets]
    spy_names = [s.name for s in spies]
    await asyncio.sleep(1.0)  # py-spy attaches
    for target, spy_child in zip(targets, spies, strict=True):
        if not spy_child.alive():
            harness.stop_children(spy_names)
            return {"skipped": f"py-spy could not attach to {target.name}: {spy_child.tail(5)}"}
    try:
        figures = await run_throughput(harness, conn, tenant, count, clients)
    finally:
        for spy_child in spies:
            spy_child.signal(signal.SIGINT)
        for spy_child in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_child.popen.wait(30)
        harness.stop_children(spy_names)
    report: dict[str, Any] = {"tasks": count, "rate_hz": rate, "throughput_while_sampled": figures}
    per_role: dict[str, list[Path]] = defaultdict(list)
    for target in targets:
        output = outputs[target.name]
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
        report[role] = {
            "samples": total,
            "sampled_cpu_ms_per_task": round(total * 1000 / rate / count, 3),
            "measured_cpu_ms_per_task": base,
            "by_area": shares(areas, base, total),
            "by_operation": shares(ops, base, total),
            "by_leaf_library": shares(libs, base, total),
        }
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, keep / f"dispatch-{f.name}")
    return report
