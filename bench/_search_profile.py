"""The search bench's py-spy phase: where a search's time goes inside the API process.

py-spy samples every thread that is not idle (no ``--gil``: onnxruntime runs the model with the
GIL released, in the embedder's thread, and that time counts). Each sample is attributed to the
leaf-most operation of its stack; at ``rate`` samples per second a sample stands for
``1000 / rate`` ms of one thread, so the counts divided by the searches give milliseconds of
thread time per search, by operation. The sampling itself slows the API down a little.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _gateway_profile import leaves
from _harness import Harness
from _profile import parse_collapsed

# (file part, function or "" for any) -> operation. The leaf-most match on a stack wins.
OPERATIONS: list[tuple[str, str, str]] = [
    ("onnxruntime/", "", "embedding: onnxruntime session.run"),
    ("local_embeddings.py", "_encode", "embedding: tokenizer, pooling (numpy)"),
    ("local_embeddings.py", "", "embedding: embedder other (load, queue)"),
    ("spine/platform/metering/", "", "metering: plan, reserve, usage, settle"),
    ("spine/platform/router/", "", "router: plan, breaker, dispatch"),
    ("sqlalchemy/", "", "db: SQLAlchemy + asyncpg"),
    ("asyncpg/", "", "db: SQLAlchemy + asyncpg"),
    ("pgvector/", "", "db: SQLAlchemy + asyncpg"),
    ("spine/platform/documents/", "", "documents: store, search, hits"),
    ("spine/platform/keys.py", "", "api: key check"),
    ("spine/platform/app/api/auth.py", "", "api: key check"),
    ("pydantic", "", "api: pydantic (parse, validate, serialise)"),
    ("fastapi/", "", "api: FastAPI, Starlette, uvicorn"),
    ("starlette/", "", "api: FastAPI, Starlette, uvicorn"),
    ("uvicorn/", "", "api: FastAPI, Starlette, uvicorn"),
    ("spine/platform/app/", "", "api: platform routes and middleware"),
    ("asyncio/", "", "event loop, other"),
]


# Leaves where a thread waits (in C, where py-spy cannot always tell it is idle).
IDLE: list[tuple[str, str]] = [
    ("concurrent/futures/thread.py", "_worker"),
    ("asyncio/runners.py", "Runner.run"),
    ("asyncio/base_events.py", "run_forever"),
    ("selectors.py", "select"),
    ("threading.py", "wait"),
]


def attribute(stacks: list[tuple[list[tuple[str, str]], int]]) -> tuple[Counter[str], int]:
    """Count samples per operation (the leaf-most frame that names one), idle ones apart."""
    ops: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        if frames and any(
            frames[-1][1].endswith(part) and frames[-1][0].endswith(func) for part, func in IDLE
        ):
            ops["(idle: waiting in C, not counted)"] += count
            continue
        total += count
        op = "event loop, other"
        for func, file in reversed(frames):
            found = next(
                (
                    name
                    for part, wanted, name in OPERATIONS
                    if part in file and (not wanted or func.endswith(wanted))
                ),
                None,
            )
            if found:
                op = found
                break
        ops[op] += count
    return ops, total


def db_callers(stacks: list[tuple[list[tuple[str, str]], int]]) -> Counter[str]:
    """Count the database's samples by the platform function nearest to them on the stack."""
    found: Counter[str] = Counter()
    for frames, count in stacks:
        files = [file for _, file in frames]
        if not any("sqlalchemy/" in f or "asyncpg/" in f for f in files):
            continue
        caller = next(
            (f"{func} ({file.rsplit('/spine/', 1)[-1]})" for func, file in reversed(frames)
             if "/spine/" in file),
            "(no platform frame)",
        )  # fmt: skip
        found[caller] += count
    return found


async def run_search_profile(
    harness: Harness, search: Callable[[int], Awaitable[Any]], count: int, rate: int
) -> dict[str, Any]:
    """Sample the API during ``count`` sequential searches; ms of thread time per search."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    api = next(c for c in harness.children if c.name == "api")
    output = harness.tmp / "profile-api.txt"
    argv = [spy, "record", "--pid", str(api.popen.pid), "--rate", str(rate), "--full-filenames"]
    argv += ["--format", "raw", "--output", str(output)]
    spy_child = harness.spawn("py-spy-api", argv, env=os.environ.copy())
    await asyncio.sleep(1.0)  # py-spy attaches
    if not spy_child.alive():
        harness.stop_children([spy_child.name])
        return {"skipped": f"py-spy could not attach: {spy_child.tail(5)}"}
    try:
        for i in range(count):
            await search(i)
    finally:
        spy_child.signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy_child.popen.wait(30)
        harness.stop_children([spy_child.name])
    stacks = parse_collapsed(output)
    ops, total = attribute(stacks)
    per_search = 1000 / rate / count
    return {
        "searches": count,
        "rate_hz": rate,
        "samples": total,
        "thread_ms_per_search": round(total * per_search, 2),
        "by_operation_ms": {op: round(n * per_search, 2) for op, n in ops.most_common()},
        "db_time_by_caller_ms": {
            name: round(n * per_search, 2) for name, n in db_callers(stacks).most_common(8)
        },
        "top_leaves": [
            {"function": name, "ms_per_search": round(n * per_search, 2)}
            for name, n in leaves(stacks, 15)
        ],
    }
