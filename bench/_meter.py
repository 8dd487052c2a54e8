"""What the dispatch bench measures with: percentiles, timed calls, and the :class:`Meter`.

The meter takes the CPU time of every process the bench started (grouped by role), the
PostgreSQL transactions and the NATS messages over one phase, and the CPU that processes
outside the bench used meanwhile.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _harness import Harness, say


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


def warmup_calls(calls: int) -> int:
    """How many untimed calls :func:`timed_calls` makes before it times ``calls``."""
    return max(calls // 10, 10)


async def timed_calls(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, Any]:
    """Wall time per call, and this process's CPU per call, after a warm-up."""
    for _ in range(warmup_calls(calls)):
        await call()
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - began)
    cpu = time.process_time() - cpu0
    return {**summary_ms(walls), "client_cpu_ms_per_call": round(cpu * 1000 / calls, 3)}


# -- CPU, transactions and messages ----------------------------------------------------------


def classify(proc: Any, harness: Harness) -> str:
    pids = {c.popen.pid: c.name for c in harness.children}
    if proc.pid not in pids:
        # A process a child started (a server's own workers) counts as that child.
        try:
            owner = next((p.pid for p in proc.parents() if p.pid in pids), None)
        except Exception:
            owner = None
        if owner is not None:
            name = pids[owner]
            return "worker" if name.startswith("worker") else name
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
    """CPU per process group, PostgreSQL transactions and NATS messages over one phase.

    Without a PostgreSQL connection (``conn=None``) the transaction counts are None; without
    a NATS monitor URL the message counts are empty.
    """

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
        if self.conn is not None:
            if settle:
                await asyncio.sleep(1.2)  # let PostgreSQL flush its per-backend statistics
            self.xact0 = await pg_transactions(self.conn)
            self.xid0 = await pg_xid(self.conn)
        self.nats0 = await nats_counters(_monitor_url(self.harness))
        self.cpu0 = cpu_snapshot(self.harness)
        self.busy0 = machine_busy()
        self.wall0 = time.perf_counter()
        self.own_queries = 0

    async def stop(self, tasks: int) -> dict[str, Any]:
        cpu1 = cpu_snapshot(self.harness)
        busy = machine_busy() - self.busy0
        wall = time.perf_counter() - self.wall0
        writes = xact = None
        if self.conn is not None:
            writes = await pg_xid(self.conn) - self.xid0 - 1
            await asyncio.sleep(1.2)
            xact = await pg_transactions(self.conn) - self.xact0 - self.own_queries - 3
        counters = await nats_counters(_monitor_url(self.harness))
        spent = cpu_delta(self.cpu0, cpu1)
        total = sum(spent.values())
        ranked = sorted(spent.items(), key=lambda kv: -kv[1])
        return {
            "wall_s": round(wall, 3),
            "cpu_s": {k: round(v, 3) for k, v in ranked},
            "cpu_ms_per_task": {k: round(v * 1000 / tasks, 3) for k, v in ranked},
            "cpu_ms_per_task_total": round(total * 1000 / tasks, 3),
            "cpu_utilisation_cores": round(total / wall, 2) if wall else None,
            # Other processes on the machine (e.g. a test suite) during the phase; figures
            # taken while this is well above zero are disturbed.
            "foreign_cpu_cores": round(max(busy - total, 0.0) / wall, 2) if wall else None,
            # Exact: each write transaction takes one transaction id.
            "pg_write_transactions_per_task": None if writes is None else round(writes / tasks, 2),
            # All transactions, reads and pool pre-pings included; from pg_stat_database,
            # which backends flush lazily, so approximate.
            "pg_transactions_per_task": None if xact is None else round(xact / tasks, 2),
            "nats_msgs_per_task": {
                k: round((counters.get(k, 0) - self.nats0.get(k, 0)) / tasks, 2) for k in counters
            },
        }


def _monitor_url(harness: Harness) -> str | None:
    return getattr(harness.endpoints, "nats_monitor_url", None)


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
