"""Where our gateway spends CPU per request: py-spy on the API, and each piece timed alone.

:func:`run_gateway_profile` samples the API process with py-spy (``--gil``: Python CPU only)
during a closed-loop run; each operation's share of the samples is multiplied by the CPU per
request measured without py-spy, so the sampling overhead is left out. SQLAlchemy runs its
statements, and the pool checkouts of the budget and usage writes (asyncpg statements on
PostgreSQL), in greenlets, whose stacks do not show the caller: those are one line there, and
:func:`component_costs` times each write alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from _gateway_load import Endpoint, closed_loop
from _harness import Harness
from _meter import timed_calls
from _profile import attribute, parse_collapsed, shares, spawn_spy

# (file suffix, qualified function) -> operation; the leaf-most on a stack wins.
OPERATIONS: list[tuple[str, str, str]] = [
    (
        "spine/platform/models/upstream.py",
        "UpstreamClient.call",
        "model call: upstream HTTP or LiteLLM (awaited)",
    ),
    (
        "spine/platform/models/openai_wire.py",
        "ChatCompletionRequest.parse",
        "request: JSON parse + pydantic validation",
    ),
    (
        "spine/platform/models/openai_wire.py",
        "ChatCompletionRequest.messages_out",
        "request: messages/params dump",
    ),
    (
        "spine/platform/models/openai_wire.py",
        "ChatCompletionRequest.params",
        "request: messages/params dump",
    ),
    ("spine/platform/app/api/_openai.py", "completion_body", "answer: completion body"),
    ("starlette/responses.py", "JSONResponse.render", "answer: JSON render"),
    ("starlette/responses.py", "JSONResponse.__init__", "answer: JSON render"),
    ("spine/platform/app/api/auth.py", "authenticate", "auth: key check (cached)"),
    ("spine/platform/metering/cache.py", "CacheKey.of", "cache: key (canonical JSON + SHA-256)"),
    ("spine/platform/metering/cache.py", "MemoryResponseCache.get", "cache: get"),
    ("spine/platform/metering/cache.py", "MemoryResponseCache.put", "cache: put (encode answer)"),
    ("spine/platform/metering/budgets.py", "BudgetLedger.reserve", "db: budget reserve (own tx)"),
    ("spine/platform/metering/budgets.py", "BudgetLedger.settle", "db: budget settle (own tx)"),
    (
        "spine/platform/metering/budgets.py",
        "BudgetLedger._settle_many",
        "db: budget settle (written behind, batched)",
    ),
    (
        "spine/platform/metering/usage.py",
        "UsageLedger.record_many",
        "db: usage row insert (own tx)",
    ),
    ("spine/platform/router/router.py", "ModelRouter.plan", "routing: plan (requirements, order)"),
    ("spine/platform/router/catalog.py", "Requirements.of", "routing: requirements (json.dumps)"),
    (
        "spine/events/outcomes.py",
        "OutcomePublisher._publish",
        "nats: outcome publish (JetStream ack)",
    ),
    ("spine/events/outcomes.py", "OutcomePublisher.__call__", "nats: outcome queued"),
    (
        "spine/platform/metering/metered.py",
        "MeteredModels.complete",
        "gateway: metering glue (metered.py)",
    ),
    ("spine/platform/router/router.py", "ModelRouter.complete", "gateway: router glue"),
    ("spine/platform/app/api/gateway.py", "chat_completions", "gateway: route body"),
]
FALLBACKS: list[tuple[str, str]] = [
    ("/litellm/", "LiteLLM off the awaited path (logging callbacks, threads, tasks)"),
    ("concurrent/futures/thread.py", "thread pool (other)"),
    (
        "/sqlalchemy/",
        "db: SQLAlchemy in greenlets (pool checkouts of the asyncpg statements, other statements)",
    ),
    ("/asyncpg/", "db: asyncpg protocol callbacks"),
    ("/aiosqlite/", "db: aiosqlite thread"),
    ("/nats/", "nats: client read loop, flusher"),
    ("/httpx/", "upstream HTTP client (httpx, outside the awaited call)"),
    ("/httpx2/", "upstream HTTP client (httpx, outside the awaited call)"),
    ("/httpcore/", "upstream HTTP client (httpx, outside the awaited call)"),
    ("/aiohttp/", "upstream HTTP client (aiohttp, outside the awaited call)"),
    ("/uvicorn/", "HTTP server (uvicorn, Starlette, FastAPI)"),
    ("/starlette/", "HTTP server (uvicorn, Starlette, FastAPI)"),
    ("/fastapi/", "HTTP server (uvicorn, Starlette, FastAPI)"),
]


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/platform/spine/", "/events/spine/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def inclusive(
    stacks: list[tuple[list[tuple[str, str]], int]], needle: str, top: int
) -> list[tuple[str, int]]:
    """The functions in files containing ``needle`` that most samples pass through."""
    seen: Counter[str] = Counter()
    for frames, count in stacks:
        names = {f"{func} ({_short(file)})" for func, file in frames if needle in file}
        for name in names:
            seen[name] += count
    return seen.most_common(top)


def leaves(stacks: list[tuple[list[tuple[str, str]], int]], top: int) -> list[tuple[str, int]]:
    """The functions that most samples were inside of (self time)."""
    seen: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            func, file = frames[-1]
            seen[f"{func} ({_short(file)})"] += count
    return seen.most_common(top)


async def run_gateway_profile(
    harness: Harness,
    endpoint: Endpoint,
    measured_ms: float,
    concurrency: int,
    seconds: float,
    warm: float,
    rate: int,
    keep: Path | None,
) -> dict[str, Any]:
    """Sample the API with py-spy during a closed-loop run; CPU ms per request by operation."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    target = next(c for c in harness.children if c.name == "api")
    output = harness.tmp / "profiles" / "gateway-api.txt"
    output.parent.mkdir(exist_ok=True)
    spy_child = spawn_spy(harness, spy, target, rate, output)
    await asyncio.sleep(1.0)  # py-spy attaches
    if not spy_child.alive():
        harness.stop_children([spy_child.name])
        return {"skipped": f"py-spy could not attach to the API: {spy_child.tail(5)}"}
    try:
        run = await closed_loop(harness, None, endpoint, concurrency, seconds, warm)
    finally:
        spy_child.signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy_child.popen.wait(30)
        harness.stop_children([spy_child.name])
    if not output.exists():
        return {"skipped": f"py-spy wrote nothing: {spy_child.tail(5)}"}
    stacks = parse_collapsed(output)
    ops, libs, total = attribute(stacks, OPERATIONS, FALLBACKS)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(output, keep / output.name)
    if not total:
        return {"skipped": "py-spy took no samples"}

    def per_request(samples: int) -> float:
        return round(measured_ms * samples / total, 3)

    return {
        "samples": total,
        "rate_hz": rate,
        "requests_while_sampled": run["requests"],
        "throughput_while_sampled_rps": run["throughput_rps"],
        "measured_api_cpu_ms_per_request": measured_ms,
        "by_operation": shares(ops, measured_ms, total),
        "by_leaf_library": shares(libs, measured_ms, total),
        "litellm_inclusive": {
            name: {"share_pct": round(100 * n / total, 1), "ms_per_request": per_request(n)}
            for name, n in inclusive(stacks, "/litellm/", 15)
        },
        "top_self": {
            name: {"share_pct": round(100 * n / total, 1), "ms_per_request": per_request(n)}
            for name, n in leaves(stacks, 20)
        },
    }


async def component_costs(
    database_url: str, nats_url: str, api_key: str, tenant: str, calls: int
) -> dict[str, Any]:
    """Each piece of the gateway's per-request path, called alone in this process.

    Wall time and this process's CPU per call: the database and NATS work includes the
    round trips (the servers' CPU is not in ``client_cpu_ms_per_call``).
    """
    from starlette.responses import JSONResponse

    from spine.events.bus import NatsBus
    from spine.events.outcomes import ModelOutcome
    from spine.events.subjects import outcome_subject
    from spine.platform.app.api._openai import ChatCompletionRequest, completion_body
    from spine.platform.db import Database
    from spine.platform.keys import KeyStore
    from spine.platform.metering.budgets import BudgetLedger, BudgetLimits, budget_scopes
    from spine.platform.metering.cache import CacheKey, MemoryResponseCache
    from spine.platform.metering.usage import ModelCallRecord, UsageLedger
    from spine.platform.models import Completion

    # The bench's own connection says so when it closes; that is not news.
    logging.getLogger("spine.events.bus").setLevel(logging.ERROR)
    raw = b'{"model": "bench-fast", "messages": [{"role": "user", "content": "ping 1"}]}'
    messages = [{"role": "user", "content": "ping 1"}]
    answer = Completion(
        text="echo: ping 1", model="bench-fast", provider="openai-compatible", input_tokens=2
    )
    cache = MemoryResponseCache()
    key = CacheKey.of(tenant=tenant, model="bench-fast", messages=messages, params={})
    await cache.put(key, answer)
    db = Database(database_url)
    bus = NatsBus(nats_url, name="bench-costs")
    out: dict[str, Any] = {}
    try:
        keys = KeyStore(db, cache_seconds=3600)
        principal = await keys.verify(api_key)
        ledger = BudgetLedger(db, BudgetLimits(tenants={tenant: Decimal("1000000")}))
        usage = UsageLedger(db)
        scopes = budget_scopes(tenant=tenant, key_id=principal.key_id)
        bus.start()
        await bus.wait_connected(10)
        record = ModelCallRecord(tenant=tenant, model="bench-fast", provider="openai-compatible")

        async def parse() -> None:
            ChatCompletionRequest.parse(raw).params()

        async def cache_key() -> None:
            CacheKey.of(tenant=tenant, model="bench-fast", messages=messages, params={})

        async def cache_get() -> None:
            await cache.get(key)

        async def render() -> None:
            JSONResponse(completion_body(answer, completion_id="chatcmpl-x", created=0))

        async def verify() -> None:
            await keys.verify(api_key)

        async def reserve() -> None:
            await ledger.reserve(scopes, Decimal("0.0025"))

        held = await ledger.reserve(scopes, Decimal("0.0025"))

        async def settle() -> None:
            # As a call settles: queued, and applied by the writer (flushed here at once).
            await ledger.settle_later(held, Decimal("0.000002"))
            await ledger.flush()

        async def usage_row() -> None:
            await usage.record(ModelCallRecord(tenant=tenant, model="bench-fast", provider="x"))

        async def outcome() -> None:
            event = ModelOutcome.of(record)
            await bus.publish_durable(
                outcome_subject(tenant), event.model_dump_json().encode(), msg_id=event.id
            )

        pieces = {
            "request parse + validation (ChatCompletionRequest.parse, params)": parse,
            "cache key (CacheKey.of)": cache_key,
            "cache hit read (MemoryResponseCache.get)": cache_get,
            "answer body + JSONResponse render": render,
            "key check, cached (KeyStore.verify)": verify,
            "budget reserve (BudgetLedger.reserve)": reserve,
            "budget settlement, a batch of one (settle_later + flush)": settle,
            "usage row insert, a batch of one (UsageLedger.record)": usage_row,
            "outcome event publish (JetStream, awaits the ack)": outcome,
        }
        for name, piece in pieces.items():
            out[name] = await timed_calls(piece, calls)
    finally:
        await bus.close()
        await db.dispose()
    return out
