"""The dispatch bench's results: the JSON document, its targets, and the printed report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dispatch.json"
# Issue 12's targets.
TARGET_RATIO = 30.0  # task p50 <= 30x bare request/reply p50
TARGET_TPS = 400.0  # completed tasks per second, two workers (stretch 600)
TARGET_CPU_MS = 4.0  # CPU per task across API, workers, PostgreSQL and NATS
TARGET_SUBMIT = 1500.0  # the submit path alone (workers frozen), tasks per second


def build_document(
    results: dict[str, Any],
    args: argparse.Namespace,
    argv: list[str] | None,
    started: datetime,
) -> dict[str, Any]:
    """The whole results document: the run, the machine, the config, the figures, the targets."""
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
    return doc


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    ratio = results["latency"]["ratio_p50_to_request_reply_p50"]
    tps = results["throughput"]["completed_per_s"]
    used = results["throughput"]["resources"]["cpu_ms_per_task"]
    # The platform's CPU: API, workers, PostgreSQL, NATS (not the bench client, not the fake).
    cpu = round(sum(v for k, v in used.items() if k not in ("bench-client", "fake-model")), 3)
    found = {
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
        "cpu_ms_per_task": {
            "target": f"<= {TARGET_CPU_MS:g} ms (API, workers, PostgreSQL, NATS)",
            "value": cpu,
            "pass": cpu <= TARGET_CPU_MS,
        },
    }
    split = results["throughput"].get("split")
    if split is not None:
        rate = split["api_alone"]["submit_rate_per_s"]
        found["submit_rate"] = {
            "target": f">= {TARGET_SUBMIT:g} tasks/s (workers frozen)",
            "value": rate,
            "pass": rate >= TARGET_SUBMIT,
        }
        floor = split["api_alone"].get("http_floor")
        if floor is not None:
            found["submit_rate"]["beside"] = submit_floor(floor, results["baseline"])
    return found


def submit_floor(floor: dict[str, Any], baseline: dict[str, Any]) -> str:
    """What one API process could submit with no platform code: the HTTP floor measured with
    the same client, plus the bare client CPU of the commit and the JetStream publish."""
    pieces = (
        floor["api_cpu_ms_per_request"]
        + baseline["postgres_insert_commit"]["client_cpu_ms_per_call"]
        + baseline["jetstream_publish_fsync"]["client_cpu_ms_per_call"]
    )
    return (
        f"GET /healthz from the same client: {floor['rate_per_s']:.0f}/s, API CPU "
        f"{floor['api_cpu_ms_per_request']:.2f} ms/request; with a bare commit and publish "
        f"({pieces:.2f} ms) one API process tops out at {1000 / pieces:.0f}/s with no "
        "platform code at all"
    )


LINE = "-" * 78


def print_report(doc: dict[str, Any]) -> None:
    """Print the figures of ``doc``, one section per phase, with the targets' PASS or MISS."""
    print(LINE)
    print(
        f"dispatch benchmark  {doc['machine']['cpus']} CPUs, Python {doc['machine']['python']}, "
        f"{doc['config']['workers']} workers x {doc['config']['concurrency']}"
    )
    print(LINE)
    _print_baseline(doc["baseline"])
    print(LINE)
    _print_latency(doc["latency"])
    print(LINE)
    _print_throughput(doc["throughput"], doc["latency"])
    print(LINE)
    for name, v in doc["targets"].items():
        mark = "PASS" if v["pass"] else "MISS"
        print(f"{mark}  {name:<20} {v['value']:>8}   target {v['target']}")
        if "beside" in v:
            print(f"      {v['beside']}")
    print(LINE)
    for name, s in doc["db_call_costs"].items():
        if not isinstance(s, dict):
            print(f"{name}: {s}")
            continue
        print(
            f"{name:<46} p50 {s['p50_ms']:6.3f} ms, {s['client_cpu_ms_per_call']:6.3f} CPU ms/call"
        )
    print(LINE)
    _print_profile(doc["profile"])
    print(LINE)
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def _print_baseline(base: dict[str, Any]) -> None:
    for name, s in base.items():
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


def _print_latency(lat: dict[str, Any]) -> None:
    e2e = lat["end_to_end"]
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


def _print_throughput(tp: dict[str, Any], lat: dict[str, Any]) -> None:
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
    foreign = [
        ("latency", lat["resources"]["foreign_cpu_cores"]),
        ("throughput", res["foreign_cpu_cores"]),
    ]
    if "split" in tp:
        api, wk = tp["split"]["api_alone"], tp["split"]["workers_alone"]
        rates = (
            ("submit rate, workers frozen", api["submit_rate_per_s"], api["resources"]),
            ("drain rate, API idle", wk["completed_per_s"], wk["resources"]),
        )
        for label, rate, used in rates:
            print(
                f"{label:<34} {rate:8.1f}/s  CPU/task {used['cpu_ms_per_task_total']:.2f} ms  "
                f"{_fmt_groups(used['cpu_ms_per_task'])}"
            )
        foreign += [
            ("api alone", api["resources"]["foreign_cpu_cores"]),
            ("workers alone", wk["resources"]["foreign_cpu_cores"]),
        ]
    if any(v and v > 0.2 for _, v in foreign):
        print(
            f"WARNING: other processes used CPU during the run (cores): {dict(foreign)}; "
            "the figures are disturbed"
        )


def _print_profile(prof: dict[str, Any]) -> None:
    if "skipped" in prof:
        print(f"profile skipped: {prof['skipped']}")
        return
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


def write_results(doc: dict[str, Any], path: Path = RESULTS) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
