"""Search bench: ``POST /v1/search`` end to end, the local embedding model, k=10, 100k chunks.

Run it as ``.venv/bin/python bench/search.py`` (``--quick``: 20k chunks and fewer queries, about
a minute, written to ``search-quick.json``). In a temporary directory it starts the embedded
NATS and PostgreSQL, migrates a database and creates a tenant's key, embeds a few hundred topic
sentences and the queries with the real local model (in the bench process), writes the chunks
(topic vectors plus noise, see ``_search_data.py``) with binary COPY and builds the HNSW index,
then starts the API (``spine api``, the local model its only embedding model). Phases:

1. **First search**: the first ``POST /v1/search`` once ``/readyz`` answers (what a new user
   sees), and the second.
2. **Warm, interleaved**: for each query in turn, the bare embedding call (``LocalEmbedder`` in
   the bench process), the bare SQL (one prepared asyncpg statement, the shipped ef_search),
   ``GET /healthz`` (the HTTP floor) and ``POST /v1/search`` (k=10): p50/p90/p99 of each,
   recall@10 of the API's hits against the exact top 10 (numpy), the API's CPU per search,
   and the split of the search's p50.
3. **Database path**: the store's statements (asyncpg) beside the same work through
   SQLAlchemy Core as it was written before, in the bench process: wall p50 and CPU.
4. **ef sweep** (bare SQL): recall@10 per ``hnsw.ef_search``; when the shipped setting misses
   recall 0.95, the API is restarted at the smallest ef that reaches it and measured again.
5. **Profile**: the same searches with py-spy on the API (``--no-profile`` skips it): thread
   ms per search by operation.

Figures are printed, each target marked PASS or MISS, and written to
``bench/results/search.json`` with the command, the commit and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import sqlalchemy as sa

from _harness import Harness, create_tenant, migrate, pg_dsn, say
from _meter import pct, wait_quiet
from _report import ROOT, code_version, write_results
from _search_data import MODEL, BareSql, build_corpus, spawn_api
from _search_profile import run_search_profile

sys.path.insert(0, str(ROOT / "tests"))

from spine.platform.db import Database
from spine.platform.documents.vector_search import (
    SearchQuery,
    VectorIndex,
    nearest_statement,
    scan_settings,
)
from spine.platform.models.local_embeddings import LocalEmbedder
from spine.platform.schema import DocumentRow
from spine.platform.settings import DocumentSettings, LocalEmbeddingSettings
from support.vectors import load_chunks, recall_at_k

RESULTS = ROOT / "bench" / "results" / "search.json"
QUICK_RESULTS = RESULTS.with_name("search-quick.json")
TENANT, K = "bench-search", 10
TARGET_P50_MS = 15.0
TARGET_RECALL = 0.95


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="chunks stored")
    parser.add_argument("--topics", type=int, default=1000, help="topic sentences (clusters)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise around a topic")
    parser.add_argument("--queries", type=int, default=200, help="queries per pass")
    parser.add_argument("--warmup", type=int, default=20, help="untimed searches first")
    parser.add_argument("--profile-queries", type=int, default=200)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy phase")
    parser.add_argument("--quiet-timeout", type=float, default=45.0)
    parser.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for the API process (repeatable), e.g. "
        "GENAI_DOCUMENTS__EF_SEARCH=40",
    )
    parser.add_argument(
        "--ef", default="40,100,120,160,200,400", help="ef_search values of the sweep"
    )
    parser.add_argument("--quick", action="store_true", help="20k chunks, 60 queries")
    args = parser.parse_args(argv)
    args.ef_values = [int(v) for v in args.ef.split(",") if v]
    if args.quick:
        args.count, args.queries, args.profile_queries, args.topics = 20_000, 60, 60, 200
    return args


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(pct(values_ms, 50), 2),
        "p90_ms": round(pct(values_ms, 90), 2),
        "p99_ms": round(pct(values_ms, 99), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
    }


class Run:
    """The processes, the data and the clients of one run."""

    def __init__(self, harness: Harness, args: argparse.Namespace) -> None:
        self.harness = harness
        self.args = args
        self.embedder = LocalEmbedder(LocalEmbeddingSettings())
        self.corpus: Any = None
        self.rows: dict[str, int] = {}
        self.key = ""
        self.client: httpx.AsyncClient | None = None

    def embed_blocking(self, texts: list[str]) -> list[list[float]]:
        async def go() -> list[list[float]]:
            return (await self.embedder.embed(texts)).vectors

        return asyncio.run(go())

    async def search(self, query: int) -> tuple[float, list[int]]:
        """Search for query number ``query``; return the ms it took and the rows it found."""
        assert self.client is not None
        text = self.corpus.queries[query]
        began = time.perf_counter()
        answer = await self.client.post("/v1/search", json={"query": text, "k": K})
        elapsed = (time.perf_counter() - began) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"search answered {answer.status_code}: {answer.text[:300]}")
        hits = answer.json()["hits"]
        return elapsed, [self.rows[f"{h['document_id']}:{h['chunk']}"] for h in hits]


async def first_searches(run: Run) -> dict[str, Any]:
    cold, _ = await run.search(0)
    second, _ = await run.search(1)
    return {"first_ms": round(cold, 1), "second_ms": round(second, 1)}


async def warm_pass(run: Run, bare: BareSql) -> dict[str, Any]:
    """Each query: bare embedding, bare SQL, /healthz, the search; interleaved call by call."""
    assert run.client is not None
    api = psutil.Process(next(c for c in run.harness.children if c.name == "api").popen.pid)
    first = run.args.warmup  # the warm pass's queries were never asked before
    for i in range(first):
        await run.search(i)
        await run.embedder.embed([run.corpus.queries[i]])
    embed_ms, sql_ms, floor_ms, search_ms, recalls, sql_recalls = [], [], [], [], [], []
    api_cpu = 0.0
    for i in range(first, first + run.args.queries):
        text = run.corpus.queries[i]
        began = time.perf_counter()
        vector = (await run.embedder.embed([text])).vectors[0]
        embed_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        rows = await bare.nearest(run.corpus.query_vectors[i], K)
        sql_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await run.client.get("/healthz")
        floor_ms.append((time.perf_counter() - began) * 1000)
        cpu0 = sum(api.cpu_times()[:2])
        elapsed, found = await run.search(i)
        api_cpu += sum(api.cpu_times()[:2]) - cpu0
        search_ms.append(elapsed)
        exact = run.corpus.exact(i, K)
        recalls.append(recall_at_k(found, exact))
        sql_recalls.append(
            recall_at_k([run.rows[f"{r['document_id']}:{r['seq']}"] for r in rows], exact)
        )
        del vector
    repeated = [(await run.search(i))[0] for i in range(first, first + min(run.args.queries, 50))]
    figures = {
        "search": summary(search_ms),
        "search_repeated_query": summary(repeated),
        "bare_embedding": summary(embed_ms),
        "bare_sql": summary(sql_ms),
        "http_floor_healthz": summary(floor_ms),
        "recall_at_10": round(statistics.fmean(recalls), 4),
        "recall_min": round(min(recalls), 2),
        "bare_sql_recall_at_10": round(statistics.fmean(sql_recalls), 4),
        "api_cpu_ms_per_search": round(api_cpu * 1000 / len(search_ms), 2),
    }
    p50 = figures["search"]["p50_ms"]
    parts = {
        "embedding_ms (bare call)": figures["bare_embedding"]["p50_ms"],
        "nearest_ms (bare SQL)": figures["bare_sql"]["p50_ms"],
        "http_floor_ms (/healthz)": figures["http_floor_healthz"]["p50_ms"],
    }
    parts["rest_ms (auth, router, metering, ORM, serialisation)"] = round(
        p50 - sum(parts.values()), 2
    )
    figures["split_of_p50"] = parts
    return figures


async def ef_sweep(run: Run, bare: BareSql, values: list[int]) -> dict[str, Any]:
    """Recall@10 and latency of the bare SQL for each ef_search, over the warm pass's queries."""
    first = run.args.warmup
    sweep: dict[str, Any] = {}
    for ef in values:
        await bare.set_ef_search(ef)
        took, recalls = [], []
        for i in range(first, first + run.args.queries):
            began = time.perf_counter()
            rows = await bare.nearest(run.corpus.query_vectors[i], K)
            took.append((time.perf_counter() - began) * 1000)
            found = [run.rows[f"{r['document_id']}:{r['seq']}"] for r in rows]
            recalls.append(recall_at_k(found, run.corpus.exact(i, K)))
        sweep[str(ef)] = {
            "recall_at_10": round(statistics.fmean(recalls), 4),
            "p50_ms": round(pct(took, 50), 2),
        }
        say(f"  ef_search {ef:>4}: recall {sweep[str(ef)]['recall_at_10']:.3f}  "
            f"p50 {sweep[str(ef)]['p50_ms']:.2f} ms")  # fmt: skip
    return sweep


async def phases(run: Run) -> dict[str, Any]:
    args, harness = run.args, run.harness
    url = harness.endpoints.database_url
    results: dict[str, Any] = {}
    await migrate(url)
    run.key = (await create_tenant(url, TENANT)).key
    say("loading the chunks (binary COPY) and building the HNSW index")
    loaded = await load_chunks(
        pg_dsn(url),
        run.corpus.vectors,
        tenant=TENANT,
        model=MODEL,
        metadata=lambda row: {"topic": int(run.corpus.picked[row]) % 10},
        text=run.corpus.text,
    )
    run.rows = {chunk: row for row, chunk in enumerate(loaded.ids)}
    results["load"] = {"copy_s": round(loaded.copy_s, 1), "index_build_s": round(loaded.index_s, 1)}
    say(f"  copy {loaded.copy_s:.1f} s, index build {loaded.index_s:.1f} s")
    extra = dict(item.split("=", 1) for item in args.api_env)
    shipped_ef = int(extra.get("GENAI_DOCUMENTS__EF_SEARCH", DocumentSettings().ef_search))
    say("starting the API (local embedding model) ...")
    results["api_ready_s"] = await start_api(run, extra)
    say("first search after /readyz")
    results["first_search"] = await first_searches(run)
    say(f"  first {results['first_search']['first_ms']} ms, "
        f"second {results['first_search']['second_ms']} ms")  # fmt: skip
    connection = await asyncpg.connect(pg_dsn(url))
    try:
        bare = BareSql(connection, tenant=TENANT, ef_search=shipped_ef)
        await bare.prepare()
        results["foreign_cores_before_warm"] = await wait_quiet(harness, args.quiet_timeout)
        say(f"warm pass (ef_search {shipped_ef}): {args.queries} queries, with their baselines")
        results["warm"] = await warm_pass(run, bare)
        say_warm(results["warm"])
        say("database path: the store's asyncpg statements beside SQLAlchemy Core")
        results["db_path"] = await db_paths(run, shipped_ef)
        for name, figures in results["db_path"].items():
            say(f"  {name}: p50 {figures['p50_ms']} ms, {figures['cpu_ms_per_search']} ms CPU")
        say("ef sweep (bare SQL): recall@10 and p50 per hnsw.ef_search")
        results["ef_sweep_bare_sql"] = sweep = await ef_sweep(run, bare, args.ef_values)
        reaching = [ef for ef in args.ef_values if sweep[str(ef)]["recall_at_10"] >= TARGET_RECALL]
        if results["warm"]["recall_at_10"] < TARGET_RECALL and reaching:
            chosen = reaching[0]
            say(f"restarting the API with ef_search {chosen} (recall >= {TARGET_RECALL})")
            await stop_api(run)
            await start_api(run, {**extra, "GENAI_DOCUMENTS__EF_SEARCH": str(chosen)})
            await bare.set_ef_search(chosen)
            results["foreign_cores_before_operating_point"] = await wait_quiet(
                harness, args.quiet_timeout
            )
            results["at_recall_095"] = {"ef_search": chosen, **await warm_pass(run, bare)}
            say_warm(results["at_recall_095"])
    finally:
        await connection.close()
    if not args.no_profile:
        say(f"profile: {args.profile_queries} searches under py-spy")
        offset = args.warmup + args.queries

        async def one(i: int) -> None:
            await run.search(offset + i)

        results["profile"] = await run_search_profile(harness, one, args.profile_queries, args.rate)
    await stop_api(run)
    return results


async def db_paths(run: Run, ef_search: int) -> dict[str, Any]:
    """The store's database work per search in the bench process, beside the SQLAlchemy form.

    ``store``: :meth:`VectorIndex.models` and :meth:`VectorIndex.nearest` (asyncpg, three round
    trips). ``sqlalchemy``: the same two steps as they were written before, through Core
    (the models query in one transaction, then :func:`scan_settings` and
    :func:`nearest_statement` in another). Interleaved query by query; wall p50 and this
    process's CPU per search.
    """
    db = Database(run.harness.endpoints.database_url)
    settings = DocumentSettings(ef_search=ef_search)
    index = VectorIndex(db, settings)
    docs: sa.Table = DocumentRow.__table__  # type: ignore[assignment]

    async def store(vector: list[float]) -> Any:
        await index.models(TENANT)
        return await index.nearest(vector, SearchQuery(query="q", k=K), tenant=TENANT, model=MODEL)

    async def reference(vector: list[float]) -> Any:
        async with db.transaction() as conn:
            query = sa.select(docs.c.model).where(
                docs.c.tenant == TENANT, docs.c.status == "embedded"
            )
            (await conn.execute(query.distinct())).scalars().all()
        async with db.transaction() as conn:
            await scan_settings(
                conn,
                ef_search=max(ef_search, K * settings.oversample),
                max_scan_tuples=settings.max_scan_tuples,
            )
            statement = nearest_statement(
                vector, tenant=TENANT, model=MODEL, k=K, metadata={},
                oversample=settings.oversample,
            )  # fmt: skip
            return (await conn.execute(statement)).all()

    paths = {"store (asyncpg)": store, "sqlalchemy core (before)": reference}
    walls: dict[str, list[float]] = {name: [] for name in paths}
    cpus: dict[str, float] = dict.fromkeys(paths, 0.0)
    first = run.args.warmup
    try:
        for i in range(first, first + run.args.queries):
            vector = run.corpus.query_vectors[i].tolist()
            for name, path in paths.items():
                cpu0, began = time.process_time(), time.perf_counter()
                await path(vector)
                walls[name].append((time.perf_counter() - began) * 1000)
                cpus[name] += time.process_time() - cpu0
    finally:
        await db.dispose()
    return {
        name: {
            "p50_ms": round(pct(walls[name][5:], 50), 2),
            "p90_ms": round(pct(walls[name][5:], 90), 2),
            "cpu_ms_per_search": round(cpus[name] * 1000 / len(walls[name]), 2),
        }
        for name in paths
    }


def say_warm(figures: dict[str, Any]) -> None:
    say(f"  search p50 {figures['search']['p50_ms']} ms, recall {figures['recall_at_10']}, "
        f"API CPU {figures['api_cpu_ms_per_search']} ms per search")  # fmt: skip


async def start_api(run: Run, extra: dict[str, str]) -> float:
    """Start the API with ``extra`` settings and a client for it; return seconds to /readyz."""
    began = time.perf_counter()
    spawn_api(run.harness, extra)
    headers = {"Authorization": f"Bearer {run.key}"}
    run.client = httpx.AsyncClient(
        base_url=run.harness.api_url, headers=headers, timeout=30, trust_env=False
    )
    api = next(c for c in run.harness.children if c.name == "api")
    while True:
        if not api.alive():
            raise RuntimeError(f"the API exited early; its log ends:\n{api.tail()}")
        try:
            if (await run.client.get("/readyz")).status_code == 200:
                return round(time.perf_counter() - began, 2)
        except httpx.HTTPError:
            pass
        if time.perf_counter() - began > 90:
            raise RuntimeError("the API was not ready within 90 s")
        await asyncio.sleep(0.1)


async def stop_api(run: Run) -> None:
    if run.client is not None:
        await run.client.aclose()
        run.client = None
    run.harness.stop_children(["api"])


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    warm = results["warm"]
    p50 = warm["search"]["p50_ms"]
    found = {
        "search_p50": {
            "target": f"POST /v1/search p50 <= {TARGET_P50_MS:g} ms (local model, k=10)",
            "value": p50,
            "pass": p50 <= TARGET_P50_MS,
        },
        "recall_at_10": {
            "target": f">= {TARGET_RECALL} (API hits against the exact top 10)",
            "value": warm["recall_at_10"],
            "pass": warm["recall_at_10"] >= TARGET_RECALL,
        },
        "search_loses_no_recall": {
            "target": "API recall@10 = the bare SQL's at the same ef_search",
            "value": [warm["recall_at_10"], warm["bare_sql_recall_at_10"]],
            "pass": warm["recall_at_10"] >= warm["bare_sql_recall_at_10"] - 0.005,
        },
    }
    point = results.get("at_recall_095")
    if point is not None:
        found["search_p50_at_recall_095"] = {
            "target": f"p50 <= {TARGET_P50_MS:g} ms at ef_search {point['ef_search']}, the "
            f"smallest reaching recall {TARGET_RECALL} here",
            "value": [point["search"]["p50_ms"], point["recall_at_10"]],
            "pass": point["search"]["p50_ms"] <= TARGET_P50_MS
            and point["recall_at_10"] >= TARGET_RECALL,
        }
    return found


def print_report(doc: dict[str, Any]) -> None:
    warm = doc["warm"]
    print("-" * 78)
    print(f"search bench  {doc['config']['chunks']} chunks, k={K}, {doc['machine']['cpus']} CPUs")
    print("-" * 78)
    first = doc["first_search"]
    print(f"API ready after {doc['api_ready_s']} s; first search {first['first_ms']} ms, "
          f"second {first['second_ms']} ms")  # fmt: skip
    print(f"{'warm (ms)':<28}{'p50':>8}{'p90':>8}{'p99':>8}")
    for name in (
        "search",
        "search_repeated_query",
        "bare_embedding",
        "bare_sql",
        "http_floor_healthz",
    ):
        s = warm[name]
        print(f"{name:<28}{s['p50_ms']:>8.2f}{s['p90_ms']:>8.2f}{s['p99_ms']:>8.2f}")
    point = doc.get("at_recall_095")
    if point is not None:
        s = point["search"]
        print(f"{'search at ef ' + str(point['ef_search']):<28}{s['p50_ms']:>8.2f}"
              f"{s['p90_ms']:>8.2f}{s['p99_ms']:>8.2f}  recall {point['recall_at_10']}")  # fmt: skip
    print(f"recall@10 {warm['recall_at_10']} (bare SQL {warm['bare_sql_recall_at_10']}); "
          f"API CPU {warm['api_cpu_ms_per_search']} ms per search")  # fmt: skip
    for name, figures in doc.get("db_path", {}).items():
        print(f"db path, {name}: p50 {figures['p50_ms']} ms, "
              f"{figures['cpu_ms_per_search']} ms CPU (bench process)")  # fmt: skip
    print("split of the search p50:")
    for name, ms in warm["split_of_p50"].items():
        print(f"  {name:<56}{ms:>8.2f}")
    profile = doc.get("profile")
    if profile and "by_operation_ms" in profile:
        print(f"profile (py-spy, thread ms per search, {profile['thread_ms_per_search']} in all):")
        for name, ms in profile["by_operation_ms"].items():
            print(f"  {name:<56}{ms:>8.2f}")
    for name, verdict in doc["targets"].items():
        print(f"{'PASS' if verdict['pass'] else 'MISS'} {name}: {verdict['value']} "
              f"({verdict['target']})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    from spine.platform.embedded.stack import EmbeddedStack

    with tempfile.TemporaryDirectory(prefix="spine-bench-search-") as tmp:
        harness = Harness(tmp=Path(tmp))
        run = Run(harness, args)
        try:
            say("starting the embedded NATS and PostgreSQL (pgvector)")
            harness.stack = EmbeddedStack(Path(tmp) / "servers", ["nats", "postgres"])
            harness.endpoints = harness.stack.start()
            wanted = args.warmup + args.queries + args.profile_queries
            say(f"embedding {args.topics} topics and {wanted} queries (bench process)")
            run.corpus = build_corpus(
                run.embed_blocking,
                count=args.count,
                topics=args.topics,
                queries=wanted,
                spread=args.spread,
            )
            results = asyncio.run(phases(run))
        except BaseException:
            for child in harness.children:
                if not child.alive():
                    print(f"--- {child.name} log tail ---\n{child.tail()}", file=sys.stderr)
            raise
        finally:
            run.embedder.close()
            harness.close()
    doc = {
        "benchmark": "search",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/search.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "config": {
            "chunks": args.count,
            "topics": args.topics,
            "spread": args.spread,
            "dimensions": 384,
            "k": K,
            "queries": args.queries,
            "model": f"{MODEL} (local, int8 ONNX)",
            "api_env": args.api_env,
            "client": "httpx.AsyncClient, one keep-alive connection, sequential",
        },
        **results,
    }
    doc["targets"] = verdicts(results)
    out = QUICK_RESULTS if args.quick else RESULTS
    write_results(doc, out)
    print_report(doc)
    say(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
