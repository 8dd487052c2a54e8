"""Gateway benchmark: what our ``POST /v1/chat/completions`` adds, beside the LiteLLM proxy.

Run it as ``.venv/bin/python bench/gateway.py`` (``--quick`` for a smoke run under a minute).
It starts everything it needs in a temporary directory: the embedded NATS and PostgreSQL, the
fake model server twice in processes of their own (answering at once, and after 60 ms), our
API as one uvicorn process (``spine api``) and the LiteLLM proxy with one worker, both pointed
at the same two upstreams. Then, in one run on this machine:

1. **Latency**: sequential non-streamed completions, interleaved call by call: the fake
   upstream directly (plain httpx), ``litellm.acompletion`` in this process, the proxy, and
   our gateway (cache miss: every prompt differs), and a bare pass-through on the same HTTP
   server and upstream client with no gateway logic (``_passthrough.py``: the floor of one
   Python hop here). Added latency = p50 minus the direct p50.
2. **Streaming**: time to the first content chunk, direct, through the proxy and through ours.
3. **Cache hits**: the same request again through ours, beside each server's health probe.
4. **Throughput** against the 60 ms upstream: open loop at fixed rates (a server's higher
   rates are skipped once it saturates), then closed loop at high concurrency (the peak);
   CPU per request of every process.
5. **Memory**: resident memory of each server after start-up, at its peak and at the end.
6. **Component costs**: each piece of our path (parse, cache key, key check, budget, usage
   row, outcome publish, render) called alone in this process.
7. **Profile** (py-spy, skipped with ``--no-profile``): our API sampled under closed-loop
   load, CPU ms per request by operation.

Figures are printed and written to ``bench/results/gateway.json`` (``--quick``:
``gateway-quick.json``, not kept in git) with issue 12's targets, each PASS or MISS. It fails
only when something does not work (an error answer).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _gateway_learned import learned_phase
from _gateway_load import (
    Call,
    Endpoint,
    RssSampler,
    closed_loop,
    get_call,
    interleaved,
    mib,
    open_loop,
    post_call,
    stream_call,
)
from _gateway_profile import component_costs, run_gateway_profile
from _gateway_report import RESULTS, build_document, print_report
from _gateway_servers import FAST, SLOW, TENANT, UPSTREAM_MODEL, Servers, start_servers
from _harness import pg_dsn, say
from _meter import Meter, wait_quiet
from _report import ROOT, write_results

sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DIRECT, SDK, PROXY, OURS, FLOOR = (
    "direct upstream",
    "litellm.acompletion",
    "litellm proxy",
    "ours (cache miss)",
    "bare pass-through (floor)",
)
QUICK_RESULTS = RESULTS.with_name("gateway-quick.json")  # ignored by git (bench/.gitignore)
GROUPS = {PROXY: "proxy", "ours": "api"}  # the process group that serves each gateway
OURS_GROUPS = ("api", "postgres", "nats-server")  # what one of our calls costs, servers included


def endpoints(servers: Servers, model: str) -> dict[str, Endpoint]:
    """The chat completions endpoints of the direct upstream, the proxy and ours."""
    upstream = servers.upstream[model]
    return {
        DIRECT: Endpoint(name=DIRECT, url=f"{upstream}/v1/chat/completions", model=UPSTREAM_MODEL),
        PROXY: Endpoint(
            name=PROXY,
            url=f"{servers.proxy_url}/v1/chat/completions",
            model=model,
            headers={"Authorization": f"Bearer {servers.proxy_key}"},
        ),
        OURS: Endpoint(
            name=OURS,
            url=f"{servers.api_url}/v1/chat/completions",
            model=model,
            headers={"Authorization": f"Bearer {servers.api_key}"},
            expect_cache="miss",
        ),
    }


async def run_all(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """Run the phases in order and return their figures."""
    import asyncpg
    import httpx

    harness = servers.harness
    conn = None
    if args.database == "postgres":
        conn = await asyncpg.connect(pg_dsn(servers.database_url))
    sampler = RssSampler(harness, ["api", "proxy", "fake-fast", "fake-slow"])
    results: dict[str, Any] = {"servers_config": servers.config}
    quiet: dict[str, float] = {}

    async def settle(phase: str) -> None:
        # Other sessions' work comes and goes on this shared machine: wait a little for a pause.
        if args.quiet_timeout > 0:
            quiet[phase] = await wait_quiet(harness, args.quiet_timeout)
            say(f"  load from other processes before the {phase}: {quiet[phase]:.2f} cores")

    try:
        async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
            say("priming both gateways on both upstreams (our first call waits for LiteLLM) ...")
            for model in (FAST, SLOW):
                for endpoint in endpoints(servers, model).values():
                    await post_call(client, endpoint)()
            results["memory_start"] = sampler.now()
            sampler.start()
            say("idle: what each process uses with no requests (background loops) ...")
            results["idle_cpu_cores"] = await idle_cpu(harness, conn, args.idle_seconds)

            await settle("latency")
            results["latency"] = await latency_phase(
                harness, conn, client, servers, args, results["idle_cpu_cores"]
            )
            if args.stream_calls:
                say(f"streaming: {args.stream_calls} streams each, interleaved ...")
                results["streaming"] = await streaming_phase(client, servers, args)
            say(f"cache hits: {args.calls} calls beside the health probes ...")
            results["cache_hit"] = await cache_phase(client, servers, args)
            await settle("learned")
            results["learned"] = await learned_phase(client, servers, args.calls)

        await settle("throughput")
        # A quick run leaves out the database counts: they cost seconds of settling.
        results["throughput"] = await throughput_phase(servers, None if args.quick else conn, args)
        await sampler.stop()
        results["memory"] = {
            "start_mib": {k: mib(v) for k, v in results.pop("memory_start").items()},
            "peak_mib": {k: mib(v) for k, v in sampler.peak.items()},
            "end_mib": {k: mib(v) for k, v in sampler.now().items()},
        }
        say("component costs: each piece of our path alone ...")
        results["component_costs"] = await component_costs(
            servers.database_url,
            harness.endpoints.nats_url,
            servers.api_key,
            TENANT,
            args.cost_calls,
        )
        if args.no_profile:
            results["profile"] = {"skipped": "--no-profile"}
        else:
            say(f"profile: {args.profile_seconds:g} s of closed-loop load, our API sampled ...")
            measured = results["throughput"]["closed_loop"]["ours"]["resources"]
            results["profile"] = await run_gateway_profile(
                harness,
                endpoints(servers, SLOW)[OURS],
                measured["cpu_ms_per_task"].get("api", 0.0),
                args.concurrency,
                args.profile_seconds,
                args.closed_warm,
                args.profile_rate,
                args.keep_profiles,
            )
    finally:
        await sampler.stop()
        if conn is not None:
            await conn.close()
    results["foreign_cpu_cores_before_phase"] = quiet
    return results


async def idle_cpu(harness: Any, conn: Any, seconds: float) -> dict[str, float]:
    """CPU cores each process group uses while nothing calls it."""
    meter = Meter(harness, None)
    await meter.start(settle=False)
    await asyncio.sleep(seconds)
    used = await meter.stop(1)
    return {
        group: round(cpu / used["wall_s"], 4)
        for group, cpu in used["cpu_s"].items()
        if group != "bench-client"
    }


async def latency_phase(
    harness: Any,
    conn: Any,
    client: Any,
    servers: Servers,
    args: argparse.Namespace,
    idle: dict[str, float],
) -> dict[str, Any]:
    """Sequential non-streamed calls to the 0 ms upstream, interleaved across the targets."""
    import litellm

    ends = endpoints(servers, FAST)
    fast = servers.upstream[FAST]

    async def sdk() -> None:
        prompt = [{"role": "user", "content": f"sdk {os.urandom(6).hex()}"}]
        await litellm.acompletion(
            model=f"openai/{UPSTREAM_MODEL}",
            messages=prompt,
            api_base=f"{fast}/v1",
            api_key="none",
            timeout=60,
            num_retries=0,
        )

    calls: dict[str, Call] = {
        DIRECT: post_call(client, ends[DIRECT]),
        SDK: sdk,
        PROXY: post_call(client, ends[PROXY]),
        OURS: post_call(client, ends[OURS]),
        FLOOR: post_call(
            client,
            Endpoint(
                name=FLOOR,
                url=f"{servers.passthrough_url}/v1/chat/completions",
                model=UPSTREAM_MODEL,
            ),
        ),
    }
    say(f"latency: {args.warmup} warm-up + {args.calls} sequential calls per target ...")
    meter = Meter(harness, conn)
    await meter.start()
    figures = await interleaved(calls, args.calls, args.warmup)
    per = args.calls + args.warmup
    used = await meter.stop(per)
    cpu = used["cpu_ms_per_task"]
    # At a few calls a second, a server's background loops weigh on its CPU per call: the
    # net figure takes away what the process used idle over the same wall time.
    idle_ms = {g: idle.get(g, 0.0) * used["wall_s"] * 1000 / per for g in cpu}
    net = {g: max(cpu[g] - idle_ms[g], 0.0) for g in cpu}
    base = figures[DIRECT]["p50_ms"]
    return {
        "calls": figures,
        "added_p50_ms": {
            n: round(s["p50_ms"] - base, 3) for n, s in figures.items() if n != DIRECT
        },
        "added_p90_ms": {
            n: round(s["p90_ms"] - figures[DIRECT]["p90_ms"], 3)
            for n, s in figures.items()
            if n != DIRECT
        },
        # CPU of the serving processes per call (the SDK's is its client CPU, this process).
        "server_cpu_ms_per_call": {
            DIRECT: round(cpu.get("fake-fast", 0.0) / len(calls), 3),
            PROXY: cpu.get("proxy", 0.0),
            OURS: round(sum(cpu.get(g, 0.0) for g in OURS_GROUPS), 3),
            FLOOR: cpu.get("passthrough", 0.0),
        },
        "server_cpu_ms_per_call_net_of_idle": {
            DIRECT: round(net.get("fake-fast", 0.0) / len(calls), 3),
            PROXY: round(net.get("proxy", 0.0), 3),
            OURS: round(sum(net.get(g, 0.0) for g in OURS_GROUPS), 3),
            FLOOR: round(net.get("passthrough", 0.0), 3),
        },
        "resources": used,
    }


async def streaming_phase(
    client: Any, servers: Servers, args: argparse.Namespace
) -> dict[str, Any]:
    """Time to the first content chunk, direct, through the proxy and through ours."""
    ends = endpoints(servers, FAST)
    calls = {name: stream_call(client, ends[name]) for name in (DIRECT, PROXY, OURS)}
    figures = await interleaved(calls, args.stream_calls, max(args.warmup // 2, 5))
    base = figures[DIRECT]["first_token"]["p50_ms"]
    return {
        "calls": figures,
        "added_first_token_p50_ms": {
            n: round(s["first_token"]["p50_ms"] - base, 3)
            for n, s in figures.items()
            if n != DIRECT
        },
    }


async def cache_phase(client: Any, servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    """The same request again through ours, beside the health probes (the HTTP floor)."""
    prime = endpoints(servers, FAST)[OURS]
    prime.expect_cache = None
    text = "the same question every time"
    await post_call(client, prime, fixed_text=text)()
    hit = Endpoint(
        name="ours (cache hit)",
        url=prime.url,
        model=prime.model,
        headers=prime.headers,
        expect_cache="hit",
    )
    calls = {
        "ours (cache hit)": post_call(client, hit, fixed_text=text),
        "ours GET /healthz": get_call(client, f"{servers.api_url}/healthz"),
        "proxy GET /health/liveliness": get_call(client, f"{servers.proxy_url}/health/liveliness"),
    }
    return await interleaved(calls, args.calls, args.warmup)


async def throughput_phase(servers: Servers, conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Open loop at each rate (until a server saturates), then closed loop, on the slow upstream."""
    harness = servers.harness
    ends = endpoints(servers, SLOW)
    targets = {PROXY: ends[PROXY], "ours": ends[OURS]}
    targets["ours"].expect_cache = None
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    saturated: dict[str, float] = {}
    for rate in args.rates:
        for name, endpoint in targets.items():
            if name in saturated:
                runs[name].append(
                    {"offered_rps": rate, "skipped": f"saturated at {saturated[name]:g} rps"}
                )
                continue
            say(f"open loop: {name} at {rate:g} rps for {args.rate_seconds:g} s ...")
            run = await open_loop(harness, endpoint, rate, args.rate_seconds, args.drain_seconds)
            runs[name].append(run)
            lat = run["latency"]
            say(
                f"  achieved {run['achieved_rps']:.1f} rps, p50 {lat['p50_ms']:.1f} ms, "
                f"p99 {lat['p99_ms']:.1f} ms, errors {sum(run['errors'].values())}"
            )
            if run["errors"] or run["achieved_rps"] < 0.9 * rate or lat["p99_ms"] > 2000:
                saturated[name] = rate
            await asyncio.sleep(1.0)  # let queues and collectors settle
    closed: dict[str, Any] = {}
    for name, endpoint in targets.items():
        say(f"closed loop: {name}, {args.concurrency} clients for {args.closed_seconds:g} s ...")
        closed[name] = await closed_loop(
            harness, conn, endpoint, args.concurrency, args.closed_seconds, args.closed_warm
        )
        # A worker is one process: it can use one core at most, so 1000 / its CPU ms per
        # request is its ceiling, whatever else the machine is doing.
        server_ms = closed[name]["resources"]["cpu_ms_per_task"].get(GROUPS[name], 0.0)
        closed[name]["cpu_bound_peak_rps"] = round(1000 / server_ms, 1) if server_ms else None
        say(
            f"  {closed[name]['throughput_rps']:.1f} rps, "
            f"p99 {closed[name]['latency']['p99_ms']:.1f} ms"
        )
    return {
        "slow_upstream_ms": args.slow_ms,
        "groups": GROUPS,
        "open_loop": runs,
        "closed_loop": closed,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a short smoke run (under a minute)")
    p.add_argument("--calls", type=int, default=300, help="sequential calls per target")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--stream-calls", type=int, default=150, help="0 skips streaming")
    p.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[25.0, 50.0, 100.0, 150.0, 200.0, 300.0],
        help="open-loop rates, comma-separated",
    )
    p.add_argument("--rate-seconds", type=float, default=4.0)
    p.add_argument("--drain-seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=128, help="closed-loop clients")
    p.add_argument("--closed-seconds", type=float, default=8.0)
    p.add_argument("--closed-warm", type=float, default=2.0, help="seconds before counting")
    p.add_argument("--slow-ms", type=float, default=60.0, help="latency of the slow upstream")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--no-budget", action="store_true", help="no budget: nothing reserved")
    p.add_argument(
        "--redis",
        action="store_true",
        help="the response cache in Redis, as spine up has it (default: in-process)",
    )
    p.add_argument("--cost-calls", type=int, default=300)
    p.add_argument("--idle-seconds", type=float, default=4.0)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--keep-profiles", type=Path, default=None, help="copy py-spy stacks here")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results file (default {RESULTS.relative_to(ROOT)}; --quick: {QUICK_RESULTS.name})",
    )
    p.add_argument("--proxy-timeout", type=float, default=120.0, help="seconds to start")
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=15.0,
        help="seconds to wait, before a phase, for other processes to go quiet (0: no wait)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.warmup, args.stream_calls = 40, 5, 20
        args.rates, args.rate_seconds, args.drain_seconds = [50.0, 150.0], 1.5, 5.0
        args.concurrency, args.closed_seconds, args.closed_warm = 32, 2.0, 1.0
        args.cost_calls, args.profile_seconds = 30, 2.0
        args.quiet_timeout, args.idle_seconds = 0.0, 1.0
    if args.output is None:
        # A smoke run never overwrites the recorded figures, nor does a run with Redis.
        args.output = QUICK_RESULTS if args.quick else RESULTS
        if args.redis:
            args.output = args.output.with_name(f"{args.output.stem}-redis.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = datetime.now(UTC)
    # The SDK phase needs LiteLLM here too: import it (seconds) while the servers start.
    threading.Thread(target=importlib.import_module, args=("litellm",), daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="spine-bench-gateway-"))
    servers = start_servers(
        tmp,
        database=args.database,
        slow_ms=args.slow_ms,
        budget=not args.no_budget,
        proxy_timeout=args.proxy_timeout,
        redis=args.redis,
    )
    try:
        results = asyncio.run(run_all(servers, args))
    except BaseException:
        for child in list(servers.harness.children):
            print(f"--- {child.name} log tail ---\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        say("stopping everything ...")
        servers.harness.close()
    doc = build_document(results, args, argv, started)
    write_results(doc, args.output)
    print_report(doc, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
