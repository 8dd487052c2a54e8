"""The gateway bench's results: the JSON document, its targets, and the printed table."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from _report import LINE, ROOT, _fmt_groups, code_version

RESULTS = ROOT / "bench" / "results" / "gateway.json"

# Issue 12's targets (issue 3's p99 at 150 rps kept: it must not regress).
ADDED_RATIO = 0.15  # our added latency p50 <= 0.15x the proxy's
ADDED_P50_MS = 1.5  # and <= 1.5 ms
PEAK_RATIO = 5.0  # our peak throughput >= 5x the proxy's, one worker process each
P99_RATE, P99_MS = 150, 110.0  # p99 <= 110 ms at 150 requests/s against a 60 ms upstream
CACHE_HIT_P50_MS = 1.5
LEARNED_ADDED_MS = 1.0
# What the issue measured for the proxy on this machine (LiteLLM 1.108.7), for comparison.
ISSUE_PROXY_FIGURES = {
    "litellm_version": "1.108.7",
    "proxy_added_p50_ms": 9,
    "proxy_cpu_ms_per_request": 9,
    "proxy_peak_rps": "100-108",
    "proxy_p99_le_110ms_up_to_rps": "20-30",
    "proxy_full_gc_pause_ms": 400,
    "sdk_added_ms": 3,
}


def build_document(
    results: dict[str, Any], args: argparse.Namespace, argv: list[str] | None, started: datetime
) -> dict[str, Any]:
    """The whole document: the run, the machine, the config, the figures, the targets."""
    doc: dict[str, Any] = {
        "benchmark": "gateway",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/gateway.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "litellm": _version("litellm"),
        },
        "config": {
            "quick": args.quick,
            "slow_upstream_ms": args.slow_ms,
            "sequential_calls": args.calls,
            "warmup_calls": args.warmup,
            "stream_calls": args.stream_calls,
            "rates_rps": args.rates,
            "rate_seconds": args.rate_seconds,
            "closed_loop_concurrency": args.concurrency,
            "closed_loop_seconds": args.closed_seconds,
            "closed_loop_warm_seconds": args.closed_warm,
            "latency_client": "httpx, keep-alive, calls interleaved across targets in a shuffled order each round (seeded)",
            "load_client": "aiohttp, keep-alive; open-loop latency counted from the scheduled send",
            **results.pop("servers_config"),
        },
        "issue_reference": ISSUE_PROXY_FIGURES,
        **results,
    }
    doc["targets"] = verdicts(results)
    doc["foreign_cpu_cores_during_phase"] = disturbance(doc)
    return doc


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    added = results["latency"]["added_p50_ms"]
    ours, proxy = added.get("ours (cache miss)"), added.get("litellm proxy")
    if ours is not None and proxy:
        ratio = round(ours / proxy, 3)
        out["added_latency_p50_vs_proxy"] = {
            "target": f"ours <= {ADDED_RATIO:g}x the proxy's added p50",
            "value": f"{ours:.2f} ms vs {proxy:.2f} ms = {ratio}x",
            "pass": ratio <= ADDED_RATIO,
        }
        floor = added.get("bare pass-through (floor)")
        beside = (
            f" (a bare pass-through on the same server and client adds {floor:.2f} ms: "
            f"ours {ours - floor:.2f} ms beyond that floor)"
            if floor is not None
            else ""
        )
        out["added_latency_p50"] = {
            "target": f"ours <= {ADDED_P50_MS:g} ms",
            "value": f"{ours:.2f} ms{beside}",
            "pass": ours <= ADDED_P50_MS,
        }
    peak = results.get("throughput", {}).get("closed_loop", {})
    if "ours" in peak and "litellm proxy" in peak:
        a, b = peak["ours"]["throughput_rps"], peak["litellm proxy"]["throughput_rps"]
        ratio = round(a / b, 2) if b else None
        out["peak_throughput_vs_proxy"] = {
            "target": f">= {PEAK_RATIO:g}x the proxy's peak, one worker process each",
            "value": f"{a:.0f} vs {b:.0f} rps = {ratio}x" if ratio else "the proxy answered none",
            "pass": ratio is not None and ratio >= PEAK_RATIO,
        }
        # The same ratio from CPU per request (1000 / a worker's CPU ms): what one core allows,
        # which a machine shared with other work disturbs far less than the achieved rates.
        ours_cpu = peak["ours"].get("cpu_bound_peak_rps")
        proxy_cpu = peak["litellm proxy"].get("cpu_bound_peak_rps")
        if ours_cpu and proxy_cpu:
            ceiling = round(ours_cpu / proxy_cpu, 2)
            out["peak_cpu_ceiling_vs_proxy"] = {
                "target": f">= {PEAK_RATIO:g}x the proxy's one-core ceiling (1000 / CPU ms per request)",
                "value": f"{ours_cpu:.0f} vs {proxy_cpu:.0f} rps = {ceiling}x",
                "pass": ceiling >= PEAK_RATIO,
            }
    at = _at_rate(results, "ours", P99_RATE)
    skipped = _skipped_at(results, "ours", P99_RATE)
    if at is None and skipped is not None:
        out[f"p99_at_{P99_RATE}_rps"] = {
            "target": f"p99 <= {P99_MS:g} ms at {P99_RATE} rps (60 ms upstream), no errors",
            "value": f"not run: {skipped}",
            "pass": False,
        }
    if at is not None:
        p99 = at["latency"]["p99_ms"]
        clean = not at["errors"] and at["achieved_rps"] >= 0.95 * P99_RATE
        out[f"p99_at_{P99_RATE}_rps"] = {
            "target": f"p99 <= {P99_MS:g} ms at {P99_RATE} rps (60 ms upstream), no errors",
            "value": f"{p99:.1f} ms, {at['achieved_rps']:.0f} rps achieved, "
            f"{sum(at['errors'].values())} errors",
            "pass": p99 <= P99_MS and clean,
        }
    hit = results.get("cache_hit", {}).get("ours (cache hit)")
    if hit is not None:
        probe = results["cache_hit"].get("ours GET /healthz")
        beside = f" (GET /healthz {probe['p50_ms']:.2f} ms, same client)" if probe else ""
        out["cache_hit_p50"] = {
            "target": f"p50 <= {CACHE_HIT_P50_MS:g} ms",
            "value": f"{hit['p50_ms']:.2f} ms{beside}",
            "pass": hit["p50_ms"] <= CACHE_HIT_P50_MS,
        }
    learned = results.get("learned")
    if learned is not None:
        added = learned["learned_added_p50_ms"]
        same = learned["models"]["learned"] == learned["models"]["local_first"]
        out["learned_decision_added_p50"] = {
            "target": f"the learned strategy adds <= {LEARNED_ADDED_MS:g} ms p50 beside local_first",
            "value": f"{added:+.3f} ms (models {learned['models']})",
            "pass": added <= LEARNED_ADDED_MS and same,
        }
    return out


def _at_rate(results: dict[str, Any], server: str, rate: float) -> dict[str, Any] | None:
    runs = results.get("throughput", {}).get("open_loop", {}).get(server, [])
    return next((r for r in runs if r.get("offered_rps") == rate and "latency" in r), None)


def _skipped_at(results: dict[str, Any], server: str, rate: float) -> str | None:
    runs = results.get("throughput", {}).get("open_loop", {}).get(server, [])
    return next(
        (r["skipped"] for r in runs if r.get("offered_rps") == rate and "skipped" in r), None
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def print_report(doc: dict[str, Any], path: Path = RESULTS) -> None:
    """Print the figures of ``doc`` as tables, with each target's PASS or MISS."""
    m = doc["machine"]
    print(LINE)
    print(
        f"gateway benchmark  {m['cpus']} CPUs, Python {m['python']}, LiteLLM {m['litellm']}, "
        f"{doc['config']['database']}"
    )
    print(LINE)
    lat = doc["latency"]
    print("sequential non-streamed completions, 0 ms upstream (interleaved, same run)")
    print(
        f"  {'':<26}{'p50':>8}{'p90':>8}{'p99':>8}{'added p50':>11}"
        f"{'client CPU':>12}{'server CPU':>12}{'net of idle':>13}   ms"
    )
    for name, s in lat["calls"].items():
        added = lat["added_p50_ms"].get(name)
        server = lat["server_cpu_ms_per_call"].get(name)
        net = lat["server_cpu_ms_per_call_net_of_idle"].get(name)
        print(
            f"  {name:<26}{s['p50_ms']:8.2f}{s['p90_ms']:8.2f}{s['p99_ms']:8.2f}"
            f"{_num(added, 11)}{s['client_cpu_ms_per_call']:12.2f}{_num(server, 12)}"
            f"{_num(net, 13)}"
        )
    print(f"  server CPU by process: {_fmt_groups(lat['resources']['cpu_ms_per_task'])}")
    idle = _fmt_groups(doc["idle_cpu_cores"]) or "every server below 0.005"
    print(f"  idle CPU (cores): {idle}")
    print(LINE)
    st = doc.get("streaming")
    if st:
        print("streaming, 0 ms upstream: time to the first content chunk (and to the end)")
        for name, s in st["calls"].items():
            ft = s["first_token"]
            added = st["added_first_token_p50_ms"].get(name)
            print(
                f"  {name:<26} first token p50 {ft['p50_ms']:7.2f}  p99 {ft['p99_ms']:7.2f}"
                f"  added p50 {_num(added, 6)}   whole stream p50 {s['p50_ms']:7.2f} ms"
            )
        print(LINE)
    ch = doc.get("cache_hit")
    if ch:
        print("cache hits (the same request again) beside the HTTP floor of each server")
        for name, s in ch.items():
            if isinstance(s, dict) and "p50_ms" in s:
                print(
                    f"  {name:<34} p50 {s['p50_ms']:7.2f}  p99 {s['p99_ms']:7.2f} ms"
                    f"   client CPU {s['client_cpu_ms_per_call']:.2f} ms"
                )
        print(LINE)
    tp = doc.get("throughput")
    if tp:
        _print_throughput(tp)
    mem = doc.get("memory")
    if mem:
        print("resident memory (MiB, a process and its children): after start-up / peak / end")
        for name in mem["end_mib"]:
            print(
                f"  {name:<14} {mem['start_mib'].get(name, float('nan')):8.1f}"
                f" {mem['peak_mib'].get(name, float('nan')):8.1f} {mem['end_mib'][name]:8.1f}"
            )
        print(LINE)
    costs = doc.get("component_costs")
    if costs:
        print("pieces of our path called alone (in the bench process): p50 wall, CPU per call")
        for name, s in costs.items():
            print(f"  {name:<62} {s['p50_ms']:7.3f} {s['client_cpu_ms_per_call']:7.3f} ms")
        print(LINE)
    _print_profile(doc.get("profile", {}))
    foreign = disturbance(doc)
    if any(v > 0.2 for v in foreign.values()):
        print(
            f"WARNING: other processes used CPU during the run (cores): {foreign}; "
            "wall-clock figures are disturbed, CPU per request less so"
        )
        print(LINE)
    for name, v in doc["targets"].items():
        mark = "PASS" if v["pass"] else "MISS"
        print(f"{mark}  {name:<30} {v['value']:<40} target {v['target']}")
    print(LINE)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"results written to {shown}")


def disturbance(doc: dict[str, Any]) -> dict[str, float]:
    """The CPU cores other processes used during each measured phase."""
    found: dict[str, float] = {}
    lat = doc.get("latency", {}).get("resources", {})
    if lat.get("foreign_cpu_cores") is not None:
        found["latency"] = lat["foreign_cpu_cores"]
    tp = doc.get("throughput", {})
    for server, runs in tp.get("open_loop", {}).items():
        for r in runs:
            if r.get("foreign_cpu_cores") is not None:
                found[f"{server} {r['offered_rps']:g} rps"] = r["foreign_cpu_cores"]
    for server, r in tp.get("closed_loop", {}).items():
        if r["resources"].get("foreign_cpu_cores") is not None:
            found[f"{server} peak"] = r["resources"]["foreign_cpu_cores"]
    return found


def _print_throughput(tp: dict[str, Any]) -> None:
    print(f"open loop against the {tp['slow_upstream_ms']:g} ms upstream (fixed send rate)")
    print(
        f"  {'server':<14}{'offered':>8}{'achieved':>9}{'p50':>8}{'p99':>9}{'max':>9}"
        f"{'errors':>7}{'server CPU/req':>16}"
    )
    for server, runs in tp["open_loop"].items():
        for r in runs:
            if "latency" not in r:
                print(f"  {server:<14}{r['offered_rps']:8.0f}   skipped: {r['skipped']}")
                continue
            lat = r["latency"]
            cpu = r["cpu_ms_per_request"].get(tp["groups"][server], 0.0)
            print(
                f"  {server:<14}{r['offered_rps']:8.0f}{r['achieved_rps']:9.1f}"
                f"{lat['p50_ms']:8.1f}{lat['p99_ms']:9.1f}{lat['max_ms']:9.1f}"
                f"{sum(r['errors'].values()):7d}{cpu:13.2f} ms"
            )
    print("closed loop (peak): as many requests as the server answers")
    for server, r in tp["closed_loop"].items():
        lat = r["latency"]
        res = r["resources"]
        print(
            f"  {server:<14} {r['throughput_rps']:7.1f} rps  c={r['concurrency']}  "
            f"p50 {lat['p50_ms']:.1f}  p99 {lat['p99_ms']:.1f}  max {lat['max_ms']:.1f} ms  "
            f"errors {sum(r['errors'].values())}"
        )
        print(f"      CPU ms/request: {_fmt_groups(res['cpu_ms_per_task'])}")
        print(
            f"      one core's worth of the server process: {r['cpu_bound_peak_rps']:.0f} rps "
            "(1000 / its CPU ms per request: the ceiling of one worker, noise aside)"
        )
        if res.get("pg_write_transactions_per_task") is not None:
            print(
                f"      PostgreSQL write transactions/request {res['pg_write_transactions_per_task']}"
                f", NATS msgs/request {res['nats_msgs_per_task']}"
            )
    print(LINE)


def _print_profile(prof: dict[str, Any]) -> None:
    if not prof:
        return
    if "skipped" in prof:
        print(f"profile skipped: {prof['skipped']}")
        print(LINE)
        return
    print(
        f"py-spy on our API: {prof['samples']} samples, shares applied to the measured "
        f"{prof['measured_api_cpu_ms_per_request']:.2f} CPU ms per request"
    )
    for op, v in prof["by_operation"].items():
        print(f"  {v['ms_per_task']:7.3f} ms {v['share_pct']:5.1f}%  {op}")
    print("  inside LiteLLM (inclusive):")
    for name, v in list(prof["litellm_inclusive"].items())[:10]:
        print(f"    {v['ms_per_request']:7.3f} ms {v['share_pct']:5.1f}%  {name}")
    print(LINE)


def _num(value: float | None, width: int) -> str:
    return f"{value:{width}.2f}" if value is not None else " " * (width - 1) + "-"
