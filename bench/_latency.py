"""Phase 2, latency: sequential tasks, each submitted and then followed over SSE.

Reports p50/p99 and the ratio to the bare request/reply p50, a per-stage split from the stored
event timestamps, and what a GET poll and an SSE follow each cost the API.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from typing import Any

from _harness import Harness, say
from _meter import Meter, summary_ms

TERMINAL = {"succeeded", "failed", "cancelled", "dead_lettered"}


def api_client(api_url: str, key: str) -> Any:
    """An httpx client for the API, authenticated with ``key``."""
    import httpx

    return httpx.AsyncClient(
        base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


async def run_latency_phase(
    harness: Harness, conn: Any, key: str, count: int, warmup: int, rr_p50: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The latency figures, and the samples (the tasks, oldest first) they come from."""
    say(f"latency: {warmup} warm-up + {count} sequential tasks ...")
    meter = Meter(harness, conn)
    await meter.start()
    samples = await sequential_tasks(harness.api_url, key, count, warmup)
    resources = await meter.stop(count + warmup)
    latency = {
        "end_to_end": summary_ms([s["total_s"] for s in samples]),
        "submit_only": summary_ms([s["submit_s"] for s in samples]),
        "breakdown": await latency_breakdown(conn, samples),
        "resources": resources,
    }
    latency["ratio_p50_to_request_reply_p50"] = round(latency["end_to_end"]["p50_ms"] / rr_p50, 1)
    say("latency: what following a task costs the API (GET poll versus SSE) ...")
    latency["follow_cost"] = await follow_cost(harness, conn, key, [s["id"] for s in samples[:200]])
    return latency, samples


async def sequential_tasks(api_url: str, key: str, count: int, warmup: int) -> list[dict[str, Any]]:
    """Sequential tasks: submit, then follow the SSE feed until the final state event."""
    from httpx_sse import aconnect_sse

    body = {"agent": "chat", "input": {"prompt": "ping"}}
    samples: list[dict[str, Any]] = []
    async with api_client(api_url, key) as client:
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
                    if not sse.data:  # seen under heavy load: an event with no data line
                        print(f"skipped an SSE event without data: {sse!r}", file=sys.stderr)
                        continue
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
    return samples


async def follow_cost(harness: Harness, conn: Any, key: str, task_ids: list[str]) -> dict[str, Any]:
    """What watching a task costs the API: one GET poll versus one SSE follow (ended tasks)."""
    from httpx_sse import aconnect_sse

    out: dict[str, Any] = {}
    async with api_client(harness.api_url, key) as client:

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


# Stage name -> (the mark it starts at, the mark it ends at). "sent" and "received" are the
# client's clock; the others are the stored events' ``created_at``.
STAGES = {
    "1 POST sent -> queued stamped (HTTP, auth, validation, session)": ("sent", "queued"),
    "2 queued -> running stamped (commit, publish, fetch, claim lock)": ("queued", "running"),
    # The model_call event is written with the task's end (one commit): stage 3 runs to the end.
    "3 running -> model_call stamped (model call, finish with its usage rows)": (
        "running",
        "model_call",
    ),
    "4 model_call -> succeeded stamped (the same commit: 0)": ("model_call", "succeeded"),
    "5 succeeded -> client has it (commit, nudge, SSE)": ("succeeded", "received"),
}


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
        m = {**m, "sent": s["wall0"], "received": s["wall_done"]}
        for name, (start, end) in STAGES.items():
            stages[name].append(m[end] - m[start])
    return {name: summary_ms(values) for name, values in sorted(stages.items())}
