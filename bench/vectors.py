"""Vector search benchmark: QPS at recall@10 >= 0.95 on 100k x 384 vectors, beside an exact scan.

Run it as ``.venv/bin/python bench/vectors.py`` (``--quick``: 20k vectors and fewer queries, a
smoke run of about a minute, written to ``vectors-quick.json``). In a temporary directory it
starts the embedded PostgreSQL with pgvector, migrates a database, writes the vectors as one
tenant's chunks (binary COPY) and builds the HNSW index the schema declares (m=16,
ef_construction=64, cosine). The vectors are synthetic and clustered like embeddings
(``--dataset uniform``: spread evenly over the sphere, the hard case). Then:

1. **Exact answers**: the true top 10 of every query, in numpy.
2. **ef sweep**: the store's search (``DocumentStore.nearest``: SQLAlchemy, asyncpg, an HNSW
   scan) with no oversampling, for each ``hnsw.ef_search``: recall@10, p50 latency and
   sequential QPS. The smallest ef reaching recall 0.95 is the operating point.
3. **Throughput** at that point and for the exact scan (the same statement with index scans
   turned off: a sequential scan and a top-N sort), ``--clients`` concurrent clients.
4. **As shipped**: the settings' defaults (ef_search 100, 4x oversampling re-ranked exactly,
   iterative scans), without a filter and with metadata filters that pass 10% and 1% of the
   rows; the plan PostgreSQL chose for each.

Figures are printed and written to ``bench/results/vectors.json``. Everything runs on this
machine's two cores, the client included; the load average is recorded beside the figures.
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import sqlalchemy as sa

from _harness import pg_dsn, say
from _meter import pct
from _report import ROOT, code_version, write_results

sys.path.insert(0, str(ROOT / "tests"))

from spine.platform.db import Database
from spine.platform.documents.store import DocumentStore
from spine.platform.documents.vector_search import SearchQuery, nearest_statement, scan_settings
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.settings import DocumentSettings
from support.vectors import (
    clustered_vectors,
    exact_top_k,
    load_chunks,
    recall_at_k,
    uniform_vectors,
)

RESULTS = ROOT / "bench" / "results" / "vectors.json"
QUICK_RESULTS = RESULTS.with_name("vectors-quick.json")
TENANT, MODEL, K = "bench", "synthetic", 10
TARGET_RECALL = 0.95
FILTERS: dict[str, tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray]]] = {
    "none": ({}, lambda rows: np.ones(len(rows), dtype=bool)),
    "10% pass": ({"tenth": 3}, lambda rows: rows % 10 == 3),
    "1% pass": ({"hundredth": 42}, lambda rows: rows % 100 == 42),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="vectors stored")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--dataset", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument(
        "--ef", default="10,20,40,80,160,320", help="hnsw.ef_search values of the sweep"
    )
    parser.add_argument("--quick", action="store_true", help="20k vectors, 60 queries")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.queries = 20_000, 60
    args.ef_values = [int(v) for v in args.ef.split(",")]
    return args


def metadata(row: int) -> dict[str, Any]:
    return {"tenth": row % 10, "hundredth": row % 100}


class Bench:
    """The database, the store and the data of one run."""

    def __init__(self, url: str, vectors: np.ndarray, queries: np.ndarray, ids: list[str]) -> None:
        self.db = Database(url)
        self.vectors = vectors
        self.queries = queries
        self.rows = {chunk: row for row, chunk in enumerate(ids)}
        self.exact: dict[str, list[list[int]]] = {}

    def store(self, **settings: Any) -> DocumentStore:
        return DocumentStore(self.db, settings=DocumentSettings(**settings), calls=None)  # type: ignore[arg-type]

    def ground_truth(self) -> None:
        every = np.arange(len(self.vectors))
        for name, (_, mask_of) in FILTERS.items():
            mask = mask_of(every)
            self.exact[name] = [exact_top_k(self.vectors, q, K, mask) for q in self.queries]

    async def approximate(
        self, store: DocumentStore, query: np.ndarray, filter: dict[str, Any]
    ) -> list[int]:
        hits = await store.nearest(
            query.tolist(), SearchQuery(query="q", k=K, filter=filter), TENANT, MODEL
        )
        return [self.rows[f"{hit.document_id}:{hit.chunk}"] for hit in hits]

    async def exact_scan(self, query: np.ndarray, filter: dict[str, Any]) -> list[int]:
        statement = nearest_statement(
            query.tolist(), tenant=TENANT, model=MODEL, k=K, metadata=filter
        )
        async with self.db.transaction() as conn:
            await scan_settings(conn, ef_search=40, max_scan_tuples=20_000)
            await conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
            await conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
            rows = (await conn.execute(statement)).all()
        return [self.rows[f"{r.document_id}:{r.seq}"] for r in rows]

    async def plan(self, settings: DocumentSettings, filter: dict[str, Any]) -> str:
        statement = nearest_statement(
            self.queries[0].tolist(), tenant=TENANT, model=MODEL, k=K, metadata=filter,
            oversample=settings.oversample,
        )  # fmt: skip
        async with self.db.transaction() as conn:
            await scan_settings(
                conn, ef_search=settings.ef_search, max_scan_tuples=settings.max_scan_tuples
            )
            sql = statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            lines = [str(r[0]) for r in await conn.exec_driver_sql(f"EXPLAIN {sql}")]
        text = "\n".join(lines)
        if "ix_chunks_embedding" in text:
            return "hnsw index scan (filters on the rows it returns)"
        if "ix_chunks_metadata" in text:
            return "metadata index (bitmap), then an exact top-N sort"
        if "ix_chunks_tenant" in text:
            return "tenant index, then an exact top-N sort"
        return "sequential scan, then an exact top-N sort"


async def measure(
    bench: Bench, search: Callable[[np.ndarray], Awaitable[list[int]]], truth: list[list[int]]
) -> dict[str, Any]:
    """Run every query once in turn: recall@10, latency percentiles, sequential QPS."""
    await search(bench.queries[0])  # warm the connection and the plan
    latencies, recalls = [], []
    started = time.perf_counter()
    for query, exact in zip(bench.queries, truth, strict=True):
        t0 = time.perf_counter()
        found = await search(query)
        latencies.append((time.perf_counter() - t0) * 1000)
        recalls.append(recall_at_k(found, exact))
    elapsed = time.perf_counter() - started
    return {
        "recall_at_10": round(statistics.fmean(recalls), 4),
        "recall_min": round(min(recalls), 2),
        "p50_ms": round(pct(latencies, 50), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "qps_sequential": round(len(latencies) / elapsed, 1),
    }


async def throughput(
    bench: Bench, search: Callable[[np.ndarray], Awaitable[list[int]]], clients: int
) -> float:
    """Queries per second with ``clients`` concurrent clients, each running every query once."""

    async def client(offset: int) -> None:
        for i in range(len(bench.queries)):
            await search(bench.queries[(i + offset) % len(bench.queries)])

    started = time.perf_counter()
    await asyncio.gather(*(client(c * 7) for c in range(clients)))
    return round(clients * len(bench.queries) / (time.perf_counter() - started), 1)


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    db = Database(url)
    await db.migrate()
    await db.dispose()
    say(f"generating {args.count} + {args.queries} {args.dataset} vectors of 384 dimensions")
    make = clustered_vectors if args.dataset == "clustered" else uniform_vectors
    every = make(args.count + args.queries, seed=3)
    vectors, queries = every[: args.count], every[args.count :]
    say("loading them (binary COPY) and building the HNSW index")
    loaded = await load_chunks(pg_dsn(url), vectors, tenant=TENANT, model=MODEL, metadata=metadata)
    say(f"  copy {loaded.copy_s:.1f} s, index build {loaded.index_s:.1f} s")
    bench = Bench(url, vectors, queries, loaded.ids)
    try:
        say("exact answers in numpy")
        bench.ground_truth()
        results: dict[str, Any] = {
            "load": {"copy_s": round(loaded.copy_s, 1), "index_build_s": round(loaded.index_s, 1)},
        }
        say("ef sweep: HNSW scans, no oversampling, no filter")
        sweep = {}
        for ef in args.ef_values:
            store = bench.store(ef_search=ef, oversample=1)
            figures = await measure(
                bench, lambda q, s=store: bench.approximate(s, q, {}), bench.exact["none"]
            )
            sweep[str(ef)] = figures
            say(
                f"  ef_search {ef:>4}: recall {figures['recall_at_10']:.3f}  p50 {figures['p50_ms']:.1f} ms  {figures['qps_sequential']:.0f} q/s"
            )
        results["ef_sweep"] = sweep
        reaching = [ef for ef in args.ef_values if sweep[str(ef)]["recall_at_10"] >= TARGET_RECALL]
        chosen = reaching[0] if reaching else None

        say("exact scan (index scans off)")
        exact = await measure(bench, lambda q: bench.exact_scan(q, {}), bench.exact["none"])
        exact["qps_concurrent"] = await throughput(
            bench, lambda q: bench.exact_scan(q, {}), args.clients
        )
        results["exact_scan"] = exact
        say(
            f"  recall {exact['recall_at_10']:.3f}  p50 {exact['p50_ms']:.1f} ms  {exact['qps_sequential']:.0f} q/s, {exact['qps_concurrent']:.0f} q/s with {args.clients} clients"
        )

        if chosen is not None:
            store = bench.store(ef_search=chosen, oversample=1)
            point = dict(sweep[str(chosen)])
            point["ef_search"] = chosen
            point["qps_concurrent"] = await throughput(
                bench, lambda q, s=store: bench.approximate(s, q, {}), args.clients
            )
            point["speedup_over_exact"] = round(
                point["qps_concurrent"] / exact["qps_concurrent"], 1
            )
            results["at_recall_095"] = point
            say(
                f"  at ef_search {chosen}: {point['qps_concurrent']:.0f} q/s with {args.clients} clients, {point['speedup_over_exact']}x the exact scan"
            )

        shipped = DocumentSettings()
        say(
            f"as shipped (ef_search {shipped.ef_search}, oversample {shipped.oversample}, "
            "iterative scans), with filters"
        )
        as_shipped = {}
        for name, (filter, _) in FILTERS.items():
            store = bench.store()
            figures = await measure(
                bench, lambda q, s=store, f=filter: bench.approximate(s, q, f), bench.exact[name]
            )
            figures["plan"] = await bench.plan(shipped, filter)
            as_shipped[name] = figures
            say(
                f"  {name:>8}: recall {figures['recall_at_10']:.3f}  p50 {figures['p50_ms']:.1f} ms  {figures['qps_sequential']:.0f} q/s  [{figures['plan']}]"
            )
        results["as_shipped"] = as_shipped
        return results
    finally:
        await bench.db.dispose()


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    point = results.get("at_recall_095")
    shipped = results["as_shipped"]
    return {
        "recall_at_10_operating_point": {
            "target": f">= {TARGET_RECALL} at the reported QPS",
            "value": point["recall_at_10"] if point else None,
            "pass": bool(point),
        },
        "recall_at_10_as_shipped": {
            "target": f">= {TARGET_RECALL} without a filter and with 10% and 1% filters",
            "value": {name: figures["recall_at_10"] for name, figures in shipped.items()},
            "pass": all(f["recall_at_10"] >= TARGET_RECALL for f in shipped.values()),
        },
        "faster_than_exact": {
            "target": "HNSW QPS above the exact scan's at recall >= 0.95",
            "value": point["speedup_over_exact"] if point else None,
            "pass": bool(point) and point["speedup_over_exact"] > 1,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="spine-bench-vectors-") as tmp:
        say("starting the embedded PostgreSQL (pgvector)")
        stack = EmbeddedStack(Path(tmp), ["postgres"])
        try:
            endpoints = stack.start()
            assert endpoints.database_url is not None
            url = asyncio.run(_fresh_database(endpoints.database_url))
            results = asyncio.run(run(args, url))
        finally:
            with contextlib.suppress(Exception):
                stack.stop()
    doc = {
        "benchmark": "vectors",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/vectors.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "config": {
            "vectors": args.count,
            "dimensions": 384,
            "dataset": args.dataset,
            "queries": args.queries,
            "k": K,
            "clients": args.clients,
            "index": "hnsw (m=16, ef_construction=64, vector_cosine_ops)",
            "search_path": "DocumentStore.nearest: SQLAlchemy Core on asyncpg, one transaction per query",
        },
        **results,
    }
    doc["targets"] = verdicts(results)
    write_results(doc, QUICK_RESULTS if args.quick else RESULTS)
    say(f"written to {(QUICK_RESULTS if args.quick else RESULTS).relative_to(ROOT)}")
    for name, verdict in doc["targets"].items():
        say(
            f"  {'PASS' if verdict['pass'] else 'MISS'} {name}: {verdict['value']} ({verdict['target']})"
        )
    return 0


async def _fresh_database(server_url: str) -> str:
    connection = await asyncpg.connect(pg_dsn(server_url))
    try:
        await connection.execute('DROP DATABASE IF EXISTS "bench_vectors"')
        await connection.execute('CREATE DATABASE "bench_vectors"')
    finally:
        await connection.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/bench_vectors"


if __name__ == "__main__":
    raise SystemExit(main())
