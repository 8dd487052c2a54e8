"""Knowledge-graph benchmark: ingestion throughput, and depth-2 neighbors beside the raw driver.

Run it as ``.venv/bin/python bench/graph.py`` (``--quick``: a smoke run of about a minute,
written to ``graph-quick.json``). In a temporary directory it starts the embedded NATS,
PostgreSQL and FalkorDB (over its Redis protocol, with a password and an fsynced append-only
file), migrates a database, and then:

1. **Intake**: ``EventIntake.accept`` (what ``POST /v1/events`` runs after parsing: schema
   check, the ``pending`` rows in PostgreSQL, JetStream publishes with ``Nats-Msg-Id``) on
   batches of 100 events, in this process.
2. **Ingestion**: with those events (a mix of hires that supersede each other, meetings and
   updates, over 500 people) already on the EVENTS stream, the graph ingestion consumer is
   started and timed until the stream is drained: fetch, parse, map, the batched ``UNWIND``
   writes (each fsynced before it is answered), the event log's status rows, the acks. Target
   >= 1,000 events/s.
3. **Neighbors**: a graph of ``--nodes`` people (100,000), each KNOWS ``--degree`` others at
   random, written straight through the store; then depth-2 neighbors of random people,
   ``GraphExplorer.neighbors`` (our store: query built, tenant bound, result turned into the
   viewer's JSON) interleaved with the very same Cypher and parameters through the raw
   ``falkordb`` client (``GRAPH.RO_QUERY``, its records parsed by the client, nothing more).
   p50/p99 of each and their ratio. Target: ours <= 1.2x the raw client at p50.

Everything runs on this machine's two cores; the load average is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from falkordb.asyncio.graph import AsyncGraph

from _harness import say
from _meter import pct
from _report import ROOT, code_version, write_results
from spine.events.bus import NatsBus
from spine.events.cloudevent import CloudEvent
from spine.events.intake import EventIntake
from spine.events.log import EventLog
from spine.events.schemas import EventSchemas
from spine.events.streams import EVENTS_STREAM, INGEST_CONSUMER, StreamLayout
from spine.graph.backends import open_store
from spine.graph.explore import GraphExplorer
from spine.graph.falkordb_store import GRAPH
from spine.graph.ingest import GraphIngestor
from spine.graph.mapping import MappingSet
from spine.graph.store import GraphStore
from spine.platform.db import Database
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.settings import KnowledgeSettings, load_settings

RESULTS = ROOT / "bench" / "results" / "graph.json"
QUICK_RESULTS = RESULTS.with_name("graph-quick.json")
EXAMPLES = ROOT / "graph" / "spine" / "graph" / "examples"
TARGET_EVENTS_PER_S = 1000.0
TARGET_RATIO = 1.2
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events ingested")
    parser.add_argument("--nodes", type=int, default=100_000, help="people in the big graph")
    parser.add_argument("--degree", type=int, default=2, help="KNOWS out of each person")
    parser.add_argument("--queries", type=int, default=400, help="neighbor queries each way")
    parser.add_argument("--batch", type=int, default=256, help="ingestion batch size")
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.nodes, args.queries = 3000, 10_000, 100
    return args


def workload(tenant: str, count: int) -> list[CloudEvent]:
    """Hires (people move between companies), meetings and updates over 500 people."""
    events = []
    for i in range(count):
        person = i % 500
        if i % 3 == 0:
            kind = "hired"
            data: dict[str, Any] = {
                "person": {"id": person, "name": f"person {person}"},
                "company": {"id": f"c{i % 40}", "name": f"company {i % 40}"},
                "role": f"role {i % 9}",
            }
        elif i % 3 == 1:
            kind, data = "met", {"a": person, "b": (person * 7 + 1) % 500, "where": f"w{i % 5}"}
        else:
            kind, data = "updated", {"id": person, "name": f"name {i}", "email": f"p{person}@x"}
        events.append(
            CloudEvent.model_validate(
                {
                    "specversion": "1.0",
                    "id": uuid.uuid4().hex,
                    "source": "/bench",
                    "type": f"com.example.person.{kind}",
                    "time": (T0 + timedelta(seconds=i)).isoformat(),
                    "data": data,
                }
            )
        )
    return events


async def intake_phase(intake: EventIntake, events: list[CloudEvent]) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, len(events), 100):
        await intake.accept(events[start : start + 100], tenant="bench-ingest")
    seconds = time.perf_counter() - started
    return {
        "events": len(events),
        "batch": 100,
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds, 1),
    }


async def ingest_phase(
    bus: NatsBus, ingestor: GraphIngestor, store: GraphStore, count: int
) -> dict[str, Any]:
    stop = asyncio.Event()
    started = time.perf_counter()
    running = asyncio.create_task(ingestor.run(stop))
    # Done when every stored event is acked: the consumer's own pending count lags a publish.
    last = (await bus.js.stream_info(EVENTS_STREAM)).state.last_seq
    while True:
        info = await bus.js.consumer_info(EVENTS_STREAM, INGEST_CONSUMER)
        if info.num_ack_pending == 0 and info.ack_floor.stream_seq >= last:
            break
        if running.done():
            running.result()
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    stop.set()
    await running
    nodes = await store.read("MATCH (n {tenant: 'bench-ingest'}) RETURN count(n) AS c", {})
    rels = await store.read("MATCH (n {tenant: 'bench-ingest'})-[r]->() RETURN count(r) AS c", {})
    stats = ingestor.stats
    return {
        "events": count,
        "seconds": round(seconds, 2),
        "events_per_s": round(count / seconds, 1),
        "batches": stats.batches,
        "mapped": stats.mapped,
        "dead_lettered": stats.dead_lettered,
        "retried": stats.retried,
        "graph": {"nodes": nodes.records[0]["c"], "relationships": rels.records[0]["c"]},
        "includes": "start-up (schema, bind), fetch, parse, map, graph writes, event-log rows, acks",
    }


async def build_graph(store: GraphStore, nodes: int, degree: int) -> dict[str, Any]:
    started = time.perf_counter()
    await store.ensure_schema(["Person"])
    people = [{"u": f"Person:{i}", "i": i, "n": f"person {i}"} for i in range(nodes)]
    create = (
        "UNWIND $rows AS row CREATE (:Person {tenant: 'bench', uid: row.u, id: row.i, "
        "name: row.n, valid_from: 0})"
    )
    for start in range(0, nodes, 2000):
        await store.write([(create, {"rows": people[start : start + 2000]})])
    rng = random.Random(7)
    links = [
        {"a": f"Person:{i}", "b": f"Person:{rng.randrange(nodes)}"}
        for i in range(nodes)
        for _ in range(degree)
    ]
    link = (
        "UNWIND $rows AS row MATCH (a:Person {tenant: 'bench', uid: row.a}) "
        "MATCH (b:Person {tenant: 'bench', uid: row.b}) "
        "CREATE (a)-[:KNOWS {tenant: 'bench', valid_from: 0}]->(b)"
    )
    for start in range(0, len(links), 2000):
        await store.write([(link, {"rows": links[start : start + 2000]})])
    return {
        "nodes": nodes,
        "relationships": len(links),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


async def neighbors_phase(
    explorer: GraphExplorer, falkordb_url: str, nodes: int, queries: int
) -> dict[str, Any]:
    rng = random.Random(11)
    starts = [f"Person:{rng.randrange(nodes)}" for _ in range(queries + 20)]
    ours: list[float] = []
    raw: list[float] = []
    sizes: list[int] = []
    client = redis.Redis.from_url(falkordb_url, decode_responses=True)
    graph = AsyncGraph(client, GRAPH)

    async def raw_query(text: str, params: dict[str, Any]) -> int:
        result = await graph.ro_query(text, params)
        return len(result.result_set)

    for index, uid in enumerate(starts):
        text, params = explorer.neighbors_query(uid, tenant="bench", depth=2, limit=100)
        # Alternate which goes first, so neither always meets a warmer cache.
        order = ("ours", "raw") if index % 2 == 0 else ("raw", "ours")
        for which in order:
            began = time.perf_counter()
            if which == "ours":
                view = await explorer.neighbors(uid, tenant="bench", depth=2, limit=100)
                elapsed = time.perf_counter() - began
                if index >= 20:
                    ours.append(elapsed * 1000)
                    sizes.append(len(view.nodes))
            else:
                await raw_query(text, params)
                elapsed = time.perf_counter() - began
                if index >= 20:
                    raw.append(elapsed * 1000)
    await client.aclose()
    result = {
        "queries_each": queries,
        "warmup": 20,
        "depth": 2,
        "limit": 100,
        "mean_nodes_returned": round(sum(sizes) / len(sizes), 1),
        "ours_ms": {"p50": round(pct(ours, 50), 3), "p99": round(pct(ours, 99), 3)},
        "raw_client_ms": {"p50": round(pct(raw, 50), 3), "p99": round(pct(raw, 99), 3)},
    }
    result["ratio_p50"] = round(result["ours_ms"]["p50"] / result["raw_client_ms"]["p50"], 3)
    result["ratio_p99"] = round(result["ours_ms"]["p99"] / result["raw_client_ms"]["p99"], 3)
    return result


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = EmbeddedStack(workdir, ("nats", "postgres", "graph"), start_timeout=60.0)
    with stack:
        say("starting embedded NATS, PostgreSQL and FalkorDB")
        urls = stack.start()
        settings = load_settings(
            _env_file=None,
            database_url=urls.database_url,
            nats_url=urls.nats_url,
            falkordb_url=urls.falkordb_url,
            knowledge={
                "mappings_dir": EXAMPLES / "mappings",
                "schemas_dir": EXAMPLES / "schemas",
                "ingest_batch": args.batch,
            },
        )
        knowledge: KnowledgeSettings = settings.knowledge
        assert settings.database_url
        assert settings.nats_url
        assert settings.falkordb_url
        db = Database(settings.database_url)
        await db.migrate()
        bus = NatsBus(settings.nats_url, name="bench-graph")
        await bus.wait_connected(10)
        layout = StreamLayout()
        await layout.ensure(bus.js)
        store = open_store(settings)
        assert store is not None
        mappings = MappingSet.load(knowledge.mappings_dir)
        schemas = EventSchemas.load(knowledge.schemas_dir)
        log = EventLog(db)
        try:
            say(f"intake: {args.events} events in batches of 100")
            intake = EventIntake(bus=bus, log=log, schemas=schemas)
            intake_result = await intake_phase(intake, workload("bench", args.events))
            say(f"  {intake_result['events_per_s']} events/s")
            say("ingestion: draining the EVENTS stream into the graph")
            ingestor = GraphIngestor(
                bus=bus,
                log=log,
                schemas=schemas,
                mappings=mappings,
                store=store,
                layout=layout,
                settings=knowledge,
            )
            ingest = await ingest_phase(bus, ingestor, store, args.events)
            say(f"  {ingest['events_per_s']} events/s, graph {ingest['graph']}")
            say(f"building a graph of {args.nodes} people, {args.degree} KNOWS each")
            graph = await build_graph(store, args.nodes, args.degree)
            say(f"  built in {graph['build_seconds']} s")
            explorer = GraphExplorer(store, mappings)
            say(f"neighbors at depth 2: {args.queries} queries each way")
            neighbors = await neighbors_phase(
                explorer, settings.falkordb_url, args.nodes, args.queries
            )
            neighbors["graph"] = graph
            say(
                f"  ours p50 {neighbors['ours_ms']['p50']} ms, raw client p50 "
                f"{neighbors['raw_client_ms']['p50']} ms, ratio {neighbors['ratio_p50']}"
            )
        finally:
            await store.close()
            await bus.close()
            await db.dispose()
    return {"intake": intake_result, "ingestion": ingest, "neighbors": neighbors}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-bench-graph-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    ingest = results["ingestion"]["events_per_s"]
    ratio = results["neighbors"]["ratio_p50"]
    doc = {
        "benchmark": "graph",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/graph.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "config": {
            "events": args.events,
            "batch": args.batch,
            "nodes": args.nodes,
            "degree": args.degree,
            "graph_server": "FalkorDB 4.16 over its Redis protocol (embedded, appendfsync "
            "always), falkordb client",
            "database": "PostgreSQL (embedded)",
        },
        **results,
        "targets": {
            "ingestion": {
                "target": f">= {TARGET_EVENTS_PER_S:g} events/s",
                "value": ingest,
                "pass": ingest >= TARGET_EVENTS_PER_S,
            },
            "neighbors_p50_ratio": {
                "target": f"<= {TARGET_RATIO:g}x the raw client",
                "value": ratio,
                "pass": ratio <= TARGET_RATIO,
            },
        },
    }
    write_results(doc, QUICK_RESULTS if args.quick else RESULTS)
    print(json.dumps(doc["targets"], indent=2))
    for name, verdict in doc["targets"].items():
        print(
            f"{name}: {verdict['value']} ({verdict['target']}) {'PASS' if verdict['pass'] else 'MISS'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
