"""Phase 3, throughput: many tasks from concurrent HTTP clients against the workers.

:func:`run_throughput` reports completed tasks/s (first submit to the last ``finished_at`` in
the database) and the submit rate; :func:`run_split` the two halves alone: submitting with the
workers frozen, and the workers draining the queue, then the same client against
``GET /healthz`` (:func:`http_floor`: what the API spends on a request that does nothing).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from _harness import Harness, Tenant
from _meter import Meter, summary_ms


@dataclass
class Submitted:
    first_wall: float  # time.time() when the first POST began
    seconds: float  # first POST began -> last POST answered
    latencies: list[float]


async def submit_many(api_url: str, key: str, count: int, clients: int) -> Submitted:
    """POST ``count`` chat tasks from ``clients`` concurrent keep-alive connections."""
    body = json.dumps({"agent": "chat", "input": {"prompt": "ping"}})
    return await send_many(api_url, key, count, clients, path="/v1/tasks", body=body, ok=202)


async def send_many(
    api_url: str,
    key: str,
    count: int,
    clients: int,
    *,
    path: str,
    body: str | None,
    ok: int,
) -> Submitted:
    """Send ``count`` requests (POST with ``body``, GET without) from ``clients`` connections.

    The load generator is aiohttp, not httpx: on two cores every client CPU millisecond is
    taken from the platform, and aiohttp costs a fraction of httpx per request.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    method = "GET" if body is None else "POST"
    next_index = 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            began = time.perf_counter()
            async with session.request(method, f"{api_url}{path}", data=body) as response:
                await response.read()
                if response.status != ok:
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
        raise RuntimeError(f"{method} {path} failed: {dict(errors)}")
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
    tenant: Tenant,
    count: int,
    clients: int,
    meter: Meter | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Submit ``count`` tasks while the workers run; completed tasks/s and submit rate."""
    if meter is not None:
        await meter.start()
    sent = await submit_many(harness.api_url, tenant.key, count, clients)
    polls = await wait_finished(conn, tenant.name, count, timeout)
    metered = None
    if meter is not None:
        meter.own_queries = polls
        metered = await meter.stop(count)
    stats = await finished_stats(conn, tenant.name, count)
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


FLOOR_REQUESTS = 1000


async def http_floor(
    harness: Harness, conn: Any, tenant: Tenant, count: int, clients: int
) -> dict[str, Any]:
    """The same load client against ``GET /healthz``: what a request that does nothing costs.

    The API's CPU per request here is the part of a submit no platform code can remove (the
    HTTP server, the framework, this client's connections).
    """
    meter = Meter(harness, conn)
    await meter.start()
    sent = await send_many(
        harness.api_url, tenant.key, count, clients, path="/healthz", body=None, ok=200
    )
    used = await meter.stop(count)
    return {
        "path": "GET /healthz",
        "requests": count,
        "rate_per_s": round(count / sent.seconds, 1),
        "api_cpu_ms_per_request": used["cpu_ms_per_task"].get("api", 0.0),
        "bench_client_cpu_ms_per_request": used["cpu_ms_per_task"].get("bench-client", 0.0),
        "latency": summary_ms(sent.latencies),
    }


async def run_split(
    harness: Harness,
    conn: Any,
    tenant: Tenant,
    count: int,
    clients: int,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """The two halves alone: submit with the workers frozen, then let them drain the queue."""
    api_meter = Meter(harness, conn)
    await api_meter.start()
    drain_meter = Meter(harness, conn)
    harness.signal_workers(signal.SIGSTOP)
    try:
        sent = await submit_many(harness.api_url, tenant.key, count, clients)
        api_only = await api_meter.stop(count)
        await drain_meter.start(settle=False)
    finally:
        harness.signal_workers(signal.SIGCONT)
    resumed = time.time()
    polls = await wait_finished(conn, tenant.name, count, timeout)
    drain_meter.own_queries = polls
    workers_only = await drain_meter.stop(count)
    stats = await finished_stats(conn, tenant.name, count)
    drain_s = stats["last_finished"] - resumed
    floor = await http_floor(harness, conn, tenant, max(count, FLOOR_REQUESTS), clients)
    return {
        "tasks": count,
        "api_alone": {
            "submit_rate_per_s": round(count / sent.seconds, 1),
            "submit_latency": summary_ms(sent.latencies),
            "resources": api_only,
            "http_floor": floor,
        },
        "workers_alone": {
            "completed_per_s": round(count / drain_s, 1),
            "drain_s": round(drain_s, 3),
            "resources": workers_only,
        },
    }
