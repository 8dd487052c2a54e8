"""Phase 1, the baselines: what the pieces a task goes through cost on their own.

A bare nats-py request/reply round trip (the responder in another process), and for reference
a JetStream publish acked after fsync, a PostgreSQL commit, and one model call through LiteLLM
(counting its side requests) and through plain httpx. From these, the floor of this design.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _harness import Harness, say
from _meter import timed_calls, warmup_calls

ECHO_SUBJECT = "bench.echo"
# The responder runs as ``dispatch.py --responder NATS_URL``.
ENTRY_POINT = Path(__file__).resolve().with_name("dispatch.py")


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


async def run_baseline(harness: Harness, conn: Any, requests: int) -> dict[str, Any]:
    """All the baselines, and the floor of this design worked out from them."""
    say(f"baseline: {requests} bare NATS request/reply round trips ...")
    base = await messaging_and_commit(harness, requests, conn)
    rr_p50 = base["nats_request_reply"]["p50_ms"]
    say("baseline: one model call to the fake model, via LiteLLM and via plain httpx ...")
    base.update(await model_call_overhead(harness.fake.url))
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
    say(f"  request/reply p50 {rr_p50:.3f} ms, p99 {base['nats_request_reply']['p99_ms']:.3f} ms")
    return base


async def messaging_and_commit(harness: Harness, requests: int, conn: Any) -> dict[str, Any]:
    """NATS request/reply, a JetStream publish and a PostgreSQL commit."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    responder = harness.spawn(
        "responder",
        [sys.executable, str(ENTRY_POINT), "--responder", harness.endpoints.nats_url],
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
            out["model_call_litellm"] = await timed_calls(via_litellm, calls)
        finally:
            side.post = original_post
        total = calls + warmup_calls(calls)
        out["model_call_litellm"]["side_requests_per_call"] = {
            k: round(v / total, 2) for k, v in side_requests.items()
        }
        out["model_call_plain_httpx"] = await timed_calls(via_httpx, calls)
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
        out["model_call_litellm_model_registered"] = await timed_calls(via_litellm, calls)
    return out
