"""Memory benchmark: what the platform's processes hold, idle and after some work.

Run it as ``.venv/bin/python bench/memory.py`` (``--code DIR`` runs the platform's code from
another checkout of this repository, a ``git worktree`` of an older commit for example, with the
same venv: its five source folders go first on ``PYTHONPATH``). In a temporary directory it
starts the fake model server (0 ms) and ``spine up`` as the tests do: the embedded NATS,
PostgreSQL and FalkorDB, the API, the workers and the learner, supervised. The fake server
stands in for OpenAI (``--provider openai``, the default: calls go through the ``openai`` SDK)
or for Ollama (``--provider ollama``, as in the tests: a provider only LiteLLM serves, so the
processes that call models load LiteLLM by design). Then:

1. **Idle**: once the API answers and every worker pulls, it waits ``--settle`` seconds (the
   router's warm-up runs in the background) and reads RSS and PSS (``/proc/PID/smaps_rollup``)
   of the API, of one worker, and of every process of the stack (``spine up`` and all its
   descendants; the fake model server is not part of it, and no local model is started).
   Targets: API <= 150 MiB, worker <= 150 MiB, stack <= 600 MiB, all RSS (the issue's measure:
   a page shared by N processes counts N times); the stack's PSS (shared pages counted once) is
   reported beside it.
2. **After work** (``--tasks``, 0 skips it): that many chat tasks through ``POST /v1/tasks``,
   waited for, then the same figures again (the issue's after-benchmark target is 200 MiB).

Figures are printed and written to ``bench/results/memory.json`` (``memory-ollama.json`` with
``--provider ollama``; ``--out`` elsewhere). This is
not a test: it fails only when the platform does not start or a task does not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import free_port, say
from _report import ROOT, code_version, write_results

sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "bench" / "results" / "memory.json"
OLLAMA_RESULTS = ROOT / "bench" / "results" / "memory-ollama.json"
MIB = 1024 * 1024
TARGET_API_MIB = 150.0
TARGET_WORKER_MIB = 150.0
TARGET_STACK_MIB = 600.0
TARGET_AFTER_WORK_MIB = 200.0
SOURCE_FOLDERS = ("platform", "events", "graph", "tools", "agents")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds idle before reading")
    parser.add_argument("--tasks", type=int, default=200, help="chat tasks after the idle read")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--provider",
        choices=("openai", "ollama"),
        default="openai",
        help="what the fake model server stands in for (ollama: a LiteLLM-only provider)",
    )
    parser.add_argument("--code", type=Path, default=None, help="run the platform from DIR")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = OLLAMA_RESULTS if args.provider == "ollama" else RESULTS
    return args


def memory_of(pid: int) -> dict[str, float]:
    """RSS and PSS of one process in MiB, from ``/proc/PID/smaps_rollup``."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty"):
                found[key.lower()] = round(int(rest.split()[0]) / 1024, 1)
    return found


def read_memory(run: Any) -> dict[str, Any]:
    """The memory of the API, of one worker, of each child and of the whole stack."""
    import psutil

    children = run.children()
    named = {name: record["pid"] for name, record in children.items() if record.get("pid")}
    per_child: dict[str, Any] = {}
    for name, pid in sorted(named.items()):
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
            rows = [memory_of(p.pid) for p in family]
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue
        per_child[name] = {
            "pid": pid,
            "processes": len(rows),
            "rss_mib": round(sum(r.get("rss", 0.0) for r in rows), 1),
            "pss_mib": round(sum(r.get("pss", 0.0) for r in rows), 1),
        }
    stack_rows = []
    for proc in run.stack_processes():
        try:
            stack_rows.append(memory_of(proc.pid) | {"pid": proc.pid, "name": proc.name()})
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            continue
    unique = {row["pid"]: row for row in stack_rows}
    with_up = memory_of(run.proc.pid)
    per_child["spine up"] = {
        "pid": run.proc.pid,
        "processes": 1,
        "rss_mib": with_up.get("rss", 0.0),
        "pss_mib": with_up.get("pss", 0.0),
    }
    worker = next(name for name in sorted(per_child) if name.startswith("worker"))
    return {
        "api": per_child["api"],
        "worker": per_child[worker] | {"name": worker},
        "children": per_child,
        "stack": {
            "processes": len(unique),
            "rss_mib": round(sum(r.get("rss", 0.0) for r in unique.values()), 1),
            "pss_mib": round(sum(r.get("pss", 0.0) for r in unique.values()), 1),
        },
    }


async def wait_workers(run: Any, timeout: float = 120.0) -> int:
    """Wait until every worker of ``spine up`` pulls on the normal lane; return how many."""
    import nats

    from spine.platform.embedded.stack import endpoints_for, read_state

    workers = sum(1 for name in run.children() if name.startswith("worker"))
    state = read_state(run.data_dir)
    assert state is not None
    nc = await nats.connect(endpoints_for(run.data_dir, state.endpoints).nats_url)
    deadline = time.monotonic() + timeout
    try:
        js = nc.jetstream()
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info("TASKS", "workers-normal")
                if (info.num_waiting or 0) >= workers:
                    return workers
            except Exception:
                pass
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    raise RuntimeError(f"the {workers} workers did not pull within {timeout:.0f} s")


async def run_tasks(url: str, key: str, count: int, clients: int) -> dict[str, Any]:
    """Submit ``count`` chat tasks from ``clients`` connections and wait for them all."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    ids: list[str] = []
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        queue = iter(range(count))

        async def submit() -> None:
            for _ in queue:
                body = {"agent": "chat", "input": {"prompt": "ping"}}
                response = await client.post("/v1/tasks", json=body)
                response.raise_for_status()
                ids.append(response.json()["id"])

        await asyncio.gather(*(submit() for _ in range(clients)))
        pending = set(ids)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                state = (await client.get(f"/v1/tasks/{task_id}")).json().get("state")
                if state in ("succeeded", "failed", "cancelled", "dead_lettered"):
                    if state != "succeeded":
                        raise RuntimeError(f"task {task_id} ended {state}")
                    pending.discard(task_id)
            await asyncio.sleep(0.5)
        if pending:
            raise RuntimeError(f"{len(pending)} tasks did not finish")
    return {"tasks": count, "clients": clients, "seconds": round(time.perf_counter() - began, 1)}


def code_env(code: Path | None) -> dict[str, str]:
    """``PYTHONPATH`` that runs the platform from ``code``'s source folders, if given."""
    if code is None:
        return {}
    folders = [str((code / name).resolve()) for name in SOURCE_FOLDERS]
    return {"PYTHONPATH": os.pathsep.join(folders)}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from support.fake_models import FakeModelProcess
    from support.spine_up import start_spine_up, up_env

    say("starting the fake model server (0 ms) ...")
    fake = FakeModelProcess(latency=0.0).start()
    up = None
    try:
        port = free_port()
        env = up_env(fake, port=port, data_dir=workdir / "data", GENAI_LOG_LEVEL="WARNING")
        env |= code_env(args.code)
        if args.provider == "openai":
            del env["GENAI_OLLAMA_URL"]
            env |= {
                "GENAI_DEFAULT_PROVIDER": "openai",
                "GENAI_OPENAI_API_KEY": "sk-bench",
                "GENAI_OPENAI_BASE_URL": fake.openai_url,
            }
        say(f"starting spine up (API on port {port}) ...")
        up = start_spine_up(workdir, env)
        workers = asyncio.run(wait_workers(up))
        say(f"ready ({workers} workers); idle for {args.settle:.0f} s ...")
        time.sleep(args.settle)
        idle = read_memory(up)
        print_phase("idle", idle)
        after: dict[str, Any] | None = None
        work: dict[str, Any] | None = None
        if args.tasks:
            say(f"{args.tasks} chat tasks from {args.clients} clients ...")
            work = asyncio.run(run_tasks(up.url, up.admin_key(), args.tasks, args.clients))
            time.sleep(3)
            after = read_memory(up)
            print_phase("after work", after)
    finally:
        if up is not None:
            up.stop()
        fake.stop()
    return {"idle": idle, "work": work, "after_work": after}


def print_phase(phase: str, figures: dict[str, Any]) -> None:
    print(f"--- {phase}")
    for name, row in figures["children"].items():
        print(
            f"  {name:<12} RSS {row['rss_mib']:7.1f} MiB  PSS {row['pss_mib']:7.1f} MiB"
            f"  ({row['processes']} process{'es' if row['processes'] > 1 else ''})"
        )
    stack = figures["stack"]
    print(
        f"  {'stack':<12} RSS {stack['rss_mib']:7.1f} MiB  PSS {stack['pss_mib']:7.1f} MiB"
        f"  ({stack['processes']} processes, spine up and all its descendants)"
    )


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    idle = results["idle"]
    checks = {
        "api_idle_rss": (idle["api"]["rss_mib"], TARGET_API_MIB),
        "worker_idle_rss": (idle["worker"]["rss_mib"], TARGET_WORKER_MIB),
        "stack_idle_rss": (idle["stack"]["rss_mib"], TARGET_STACK_MIB),
    }
    if results["after_work"] is not None:
        after = results["after_work"]
        checks["api_after_work_rss"] = (after["api"]["rss_mib"], TARGET_AFTER_WORK_MIB)
        checks["worker_after_work_rss"] = (after["worker"]["rss_mib"], TARGET_AFTER_WORK_MIB)
    found = {
        name: {"target": f"<= {target:g} MiB", "value": value, "pass": value <= target}
        for name, (value, target) in checks.items()
    }
    found["stack_idle_rss"]["pss"] = idle["stack"]["pss_mib"]
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-memory-") as tmp:
        results = run(args, Path(tmp))
    code = code_version()
    if args.code is not None:
        head = subprocess.run(
            ["git", "-C", str(args.code), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        code = {"from": str(args.code), "commit": head.stdout.strip()}
    doc = {
        "benchmark": "memory",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/memory.py " + " ".join(argv or sys.argv[1:]),
        "code": code,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "config": {
            "settle_s": args.settle,
            "provider": args.provider,
            "models": f"fake model server as {args.provider} (0 ms); no local model",
            "units": "MiB; RSS and PSS from /proc/PID/smaps_rollup",
        },
        **results,
    }
    doc["targets"] = verdicts(results)
    print("--- targets")
    for name, verdict in doc["targets"].items():
        mark = "PASS" if verdict["pass"] else "MISS"
        pss = f"  (PSS {verdict['pss']:.1f} MiB)" if "pss" in verdict else ""
        print(f"  {name:<24} {verdict['value']:7.1f} MiB  {verdict['target']:<12} {mark}{pss}")
    write_results(doc, args.out)
    say(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
