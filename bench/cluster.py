"""Cluster benchmark: a 3-node NATS cluster (R3), 2 APIs, 3 workers, against 1 NATS, 1 API, 2 workers.

Run it as ``.venv/bin/python bench/cluster.py`` (``--tasks``: 1,000 per topology, ``--rounds``:
how many times each is measured, alternating). In a temporary directory it starts the embedded
PostgreSQL once and the fake model server (0 ms) in its own process, then for each topology in
turn, on a fresh database:

* **single**: one ``nats-server`` (JetStream, fsync always, streams at 1 replica), one
  ``spine api``, two ``spine worker`` processes;
* **cluster**: three ``nats-server`` nodes routed to each other on loopback (each with its own
  store, fsync always), every stream at 3 replicas (``GENAI_STREAMS__REPLICAS=3``), two
  ``spine api`` and three ``spine worker`` processes, every process given all three NATS URLs.

Each topology is primed (64 tasks, so every process is warm), then ``--tasks`` chat tasks go in
from ``--clients`` concurrent connections, round robin over its APIs (the failover client of the
cluster test, which also retries on another API; nothing fails here). Reported per round:
completed tasks/s (first submit to the last ``finished_at`` in the database), the submit rate
and latency, created-to-finished p50/p99, and the CPU seconds per task of the API, worker and
NATS processes (the figure that moves least with what else runs on this shared machine). The
figures are printed and written to ``bench/results/cluster.json``. This is not a test: it fails
only when the platform does not work (a task that does not succeed).

Everything runs on this machine's two cores: three NATS nodes and five Python processes share
them with the client and PostgreSQL, so the cluster's figure here is what the extra replication
and processes cost on one host, not what three hosts would do. The load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import pg_dsn, say
from _report import ROOT, code_version, write_results

sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

RESULTS = ROOT / "bench" / "results" / "cluster.json"
PRIME_TASKS = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    nats_nodes: int
    replicas: int
    apis: int
    workers: int


TOPOLOGIES = (
    Topology(name="single", nats_nodes=1, replicas=1, apis=1, workers=2),
    Topology(name="cluster", nats_nodes=3, replicas=3, apis=2, workers=3),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=1000, help="measured tasks per round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per topology")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks per worker at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take")
    return parser.parse_args(argv)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes used so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def running(
    topology: Topology, workdir: Path, database_url: str, model_url: str, concurrency: int
) -> Iterator[Any]:
    """Start one topology's NATS nodes, APIs and workers; stop them all on exit."""
    from support.cluster import (
        ApiProcess,
        NatsCluster,
        distinct_ports,
        platform_env,
        running_processes,
        write_models_file,
    )
    from support.reliability import WorkerProcess

    models_file = write_models_file(workdir / "models.yaml")
    with NatsCluster(workdir / "nats", size=topology.nats_nodes) as cluster:
        env = platform_env(
            database_url=database_url,
            nats_url=cluster.url,
            ollama_url=model_url,
            data_dir=workdir / "data",
            replicas=topology.replicas,
            GENAI_MODELS_FILE=str(models_file),
            GENAI_LOG_LEVEL="WARNING",
        )
        apis = [
            ApiProcess(f"api-{n}", env, workdir / f"api-{n}", port)
            for n, port in enumerate(distinct_ports(topology.apis), start=1)
        ]
        workers = [
            WorkerProcess(f"worker-{n}", env, workdir / f"worker-{n}", concurrency)
            for n in range(1, topology.workers + 1)
        ]
        with running_processes([*apis, *workers]):
            yield cluster, apis, workers


async def measure(
    topology: Topology,
    workdir: Path,
    server_url: str,
    model_url: str,
    round_no: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run one round of one topology and return its figures."""
    import asyncpg

    from spine.platform.db import Database
    from spine.platform.keys import KeyStore
    from support.cluster import FailoverClient
    from support.databases import create_database

    database_url = create_database(server_url)
    db = Database(database_url)
    await db.migrate()
    prime_key = (await KeyStore(db).create(tenant="bench-prime")).secret
    key = (await KeyStore(db).create(tenant="bench-cluster")).secret
    await db.dispose()
    say(f"{topology.name} round {round_no}: starting {topology}")
    with running(topology, workdir, database_url, model_url, args.concurrency) as (
        cluster,
        apis,
        workers,
    ):
        await asyncio.gather(*(api.wait_ready(120) for api in apis))
        conn = await asyncpg.connect(pg_dsn(database_url))
        try:
            urls = [api.url for api in apis]
            say(f"{topology.name}: priming with {PRIME_TASKS} tasks")
            await FailoverClient(urls, prime_key, connections=8).submit_all(
                [f"prime {i}" for i in range(PRIME_TASKS)], run=uuid.uuid4().hex
            )
            await wait_finished(conn, "bench-prime", PRIME_TASKS, args.timeout)
            pids = {
                "api": [api.pid for api in apis],
                "worker": [w.pid for w in workers],
                "nats-server": [n.proc.pid for n in cluster.nodes if n.proc is not None],
            }
            cpu_before = {role: cpu_seconds(p) for role, p in pids.items()}
            load_before = os.getloadavg()[0]
            say(f"{topology.name}: {args.tasks} tasks from {args.clients} connections")
            client = FailoverClient(urls, key, connections=args.clients)
            began = time.monotonic()
            submissions = await client.submit_all(
                [f"bench {i}" for i in range(args.tasks)], run=uuid.uuid4().hex
            )
            submitted = time.monotonic() - began
            await wait_finished(conn, "bench-cluster", args.tasks, args.timeout)
            cpu = {role: cpu_seconds(p) - cpu_before[role] for role, p in pids.items()}
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE state = 'succeeded') AS ok, "
                "extract(epoch FROM max(finished_at) - min(created_at)) AS span, "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
                "finished_at - created_at)) AS p50, "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM "
                "finished_at - created_at)) AS p99 FROM tasks WHERE tenant = 'bench-cluster'"
            )
        finally:
            await conn.close()
    if row["ok"] != args.tasks:
        raise RuntimeError(f"{topology.name}: only {row['ok']} of {args.tasks} tasks succeeded")
    unaccepted = [s for s in submissions if s.task_id is None]
    if unaccepted:
        raise RuntimeError(f"{topology.name}: {len(unaccepted)} submissions not accepted")
    latencies = [s.seconds for s in submissions]
    span = float(row["span"])
    return {
        "round": round_no,
        "completed_per_s": round(args.tasks / span, 1),
        "first_submit_to_last_finished_s": round(span, 2),
        "submit_rate_per_s": round(args.tasks / submitted, 1),
        "submit_latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
        },
        "created_to_finished_ms": {
            "p50": round(float(row["p50"]) * 1000, 1),
            "p99": round(float(row["p99"]) * 1000, 1),
        },
        "cpu_ms_per_task": {role: round(s * 1000 / args.tasks, 2) for role, s in cpu.items()},
        "cpu_ms_per_task_total": round(sum(cpu.values()) * 1000 / args.tasks, 2),
        "failovers": sum(1 for s in submissions if s.failures),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


async def wait_finished(conn: Any, tenant: str, count: int, timeout: float) -> None:
    """Poll the database until ``count`` tasks of ``tenant`` ended."""
    deadline = time.monotonic() + timeout
    while True:
        ended = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE tenant = $1 AND state IN "
            "('succeeded', 'failed', 'cancelled', 'dead_lettered')",
            tenant,
        )
        if ended >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tenant}: {ended} of {count} tasks ended after {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start PostgreSQL and the fake model server, then measure each topology in turn."""
    from spine.platform.embedded.stack import EmbeddedStack
    from support.cluster import FAKE_MODEL
    from support.fake_models import FakeModelProcess

    say("starting the embedded PostgreSQL and the fake model server (0 ms) ...")
    with EmbeddedStack(workdir / "servers", ["postgres"]) as stack:
        endpoints = stack.start()
        assert endpoints.database_url is not None
        fake = FakeModelProcess(latency=0.0)
        fake.args += ["--model", FAKE_MODEL]
        with fake:
            rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in TOPOLOGIES}
            for round_no in range(1, args.rounds + 1):
                for topology in TOPOLOGIES:
                    where = workdir / f"{topology.name}-{round_no}"
                    figures = await measure(
                        topology, where, endpoints.database_url, fake.url, round_no, args
                    )
                    say(
                        f"{topology.name}: {figures['completed_per_s']} tasks/s, "
                        f"{figures['cpu_ms_per_task_total']} CPU ms per task"
                    )
                    rounds[topology.name].append(figures)
    summary = {
        name: {
            "completed_per_s_median": round(
                statistics.median(r["completed_per_s"] for r in runs), 2
            ),
            "cpu_ms_per_task_median": round(
                statistics.median(r["cpu_ms_per_task_total"] for r in runs), 2
            ),
        }
        for name, runs in rounds.items()
    }
    single, cluster = summary["single"], summary["cluster"]
    summary["cluster_vs_single"] = {
        "throughput_ratio": round(
            cluster["completed_per_s_median"] / single["completed_per_s_median"], 2
        ),
        "cpu_per_task_ratio": round(
            cluster["cpu_ms_per_task_median"] / single["cpu_ms_per_task_median"], 2
        ),
    }
    return {"rounds": rounds, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-bench-cluster-") as tmp:
        results = asyncio.run(run(Path(tmp), args))
    doc = {
        "benchmark": "cluster",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/cluster.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "config": {
            "tasks": args.tasks,
            "rounds": args.rounds,
            "clients": args.clients,
            "worker_concurrency": args.concurrency,
            "fake_model_latency_ms": 0,
            "nats_sync_interval": "always",
            "topologies": {
                t.name: {
                    "nats_nodes": t.nats_nodes,
                    "stream_replicas": t.replicas,
                    "apis": t.apis,
                    "workers": t.workers,
                }
                for t in TOPOLOGIES
            },
        },
        **results,
    }
    write_results(doc, RESULTS)
    print()
    print(
        f"{'topology':<10} {'tasks/s':>8} {'submit/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU ms/task':>12}"
    )
    for name, runs in results["rounds"].items():
        for r in runs:
            print(
                f"{name:<10} {r['completed_per_s']:>8} {r['submit_rate_per_s']:>9} "
                f"{r['created_to_finished_ms']['p50']:>8} {r['created_to_finished_ms']['p99']:>8} "
                f"{r['cpu_ms_per_task_total']:>12}  {r['cpu_ms_per_task']}"
            )
    ratio = results["summary"]["cluster_vs_single"]
    print(
        f"cluster / single: throughput x{ratio['throughput_ratio']}, "
        f"CPU per task x{ratio['cpu_per_task_ratio']}"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
