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
import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _baseline import responder_main, run_baseline
from _db_costs import db_call_costs
from _harness import Harness, create_tenant, pg_dsn, say, start_harness, wait_ready
from _latency import run_latency_phase
from _meter import Meter, wait_quiet
from _profile import run_profile
from _report import ROOT, build_document, print_report, write_results
from _throughput import run_split, run_throughput

# The bench's own modules are found because this script's folder is first on sys.path; the
# fake model server comes from the test support package.
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TENANTS = ("bench-prime", "bench-latency", "bench-throughput", "bench-split", "bench-profile")


async def run_all(harness: Harness, args: argparse.Namespace) -> dict[str, Any]:
    """Run the phases in order and return their figures."""
    import asyncpg

    await wait_ready(harness, args.workers)
    conn = await asyncpg.connect(pg_dsn(harness.endpoints.database_url))
    try:
        tenants = {t: await create_tenant(harness.endpoints.database_url, t) for t in TENANTS}

        say("priming both workers (first model call imports LiteLLM) ...")
        await run_throughput(harness, conn, tenants["bench-prime"], 64, 32, timeout=120)

        quiet: dict[str, float] = {}

        async def settle(phase: str) -> None:
            # Other sessions' test suites come and go on a shared machine: before each
            # measured phase, wait a little for them to pause.
            if args.quiet_timeout > 0:
                quiet[phase] = await wait_quiet(harness, args.quiet_timeout)
                say(f"  load from other processes before the {phase}: {quiet[phase]:.2f} cores")

        await settle("baseline")
        base = await run_baseline(harness, conn, args.baseline_requests)

        await settle("latency")
        latency, samples = await run_latency_phase(
            harness,
            conn,
            tenants["bench-latency"].key,
            args.latency_tasks,
            args.warmup,
            base["nats_request_reply"]["p50_ms"],
        )

        say("call costs: one database call, as shipped and leaner ...")
        call_costs = await db_call_costs(harness.endpoints.database_url, samples[-1]["id"])
        await settle("throughput")
        say(f"throughput: {args.throughput_tasks} tasks from {args.clients} clients ...")
        tput = await run_throughput(
            harness,
            conn,
            tenants["bench-throughput"],
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
                harness, conn, tenants["bench-split"], args.split_tasks, args.clients
            )

        profile: dict[str, Any] = {"skipped": "--no-profile"}
        if not args.no_profile:
            say(f"profile: {args.profile_tasks} more tasks sampled with py-spy ...")
            profile = await run_profile(
                harness,
                tput["resources"]["cpu_ms_per_task"],
                conn,
                tenants["bench-profile"],
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--baseline-requests", type=int, default=2000)
    p.add_argument("--latency-tasks", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--throughput-tasks", type=int, default=3000)
    p.add_argument("--clients", type=int, default=32)
    # 3,000 submits take ~2 s: 1,000 took ~0.6 s, a window in which the 32 clients' first
    # connections and the machine's moods moved the rate by a fifth from run to run.
    p.add_argument("--split-tasks", type=int, default=3000, help="0 skips the split phase")
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
    doc = build_document(results, args, argv, started)
    write_results(doc)
    print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
