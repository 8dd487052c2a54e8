"""Learning-consumer benchmark: events/s through the production learner, and how soon a new
version of the weights reaches a router.

Run it as ``.venv/bin/python bench/learner.py`` (``--quick``: a smaller run written to
``learner-quick.json``). In a temporary directory it starts the embedded NATS and PostgreSQL,
migrates a database, and then:

1. **Throughput**: ``--events`` learning events (half model outcomes carrying a request's
   features, half feedback scoring those calls, over 4 models) are published to the OUTCOMES
   stream first; then the learner (``spine learner``'s FastStream consumer, snapshots stored in
   PostgreSQL every second, versions announced on the NATS KV bucket) is started and timed
   until it has applied them all and stored the last snapshot. Target >= 5,000 events/s.
2. **Propagation**: with the learner running, a router-side watcher (what every API and worker
   process runs) follows the announcements; one event at a time is published, and the time from
   its publication to the watcher having *loaded* a version that includes it is measured.
   Target <= 2 s (the default checkpoint interval is 1 s).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import say
from _meter import summary_ms
from _report import ROOT, code_version, write_results
from spine.events.bus import NatsBus
from spine.events.learner import Learner, learner_broker
from spine.events.streams import StreamLayout
from spine.events.weights import WeightsChannel
from spine.platform.db import Database
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.learning.features import FeatureSpace
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.learning.weights import RoutingWeights

RESULTS = ROOT / "bench" / "results" / "learner.json"
QUICK_RESULTS = ROOT / "bench" / "results" / "learner-quick.json"
TARGET_EVENTS_PER_S = 5000.0
TARGET_PROPAGATION_S = 2.0
MODELS = ("alpha", "beta", "gamma", "delta")
WORDS = [
    "apples",
    "pears",
    "trains",
    "how",
    "many",
    "what",
    "is",
    "the",
    "cost",
    "of",
    "a",
    "ticket",
    "when",
    "does",
    "it",
    "leave",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.probes = 10_000, 5
    return args


def events(n: int, space: FeatureSpace, rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n // 2):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
        model = rng.choice(MODELS)
        call = f"call-{i}"
        features = space.extract(prompt, category=rng.choice(["chat", "research", None]))
        out.append(
            {
                "type": "model.outcome",
                "id": call,
                "model": model,
                "outcome": "ok",
                "latency_ms": rng.uniform(50, 500),
                "cost": rng.uniform(0, 0.01),
                "decision": {"features": features.model_dump(mode="json")},
            }
        )
        out.append({"type": "feedback", "id": f"fb-{i}", "call_ids": [call], "score": rng.random()})
    return out


async def publish(bus: NatsBus, batch: list[dict[str, Any]]) -> None:
    for start in range(0, len(batch), 500):
        await asyncio.gather(
            *(
                bus.publish_durable(
                    f"spine.outcomes.bench.{e['type']}", json.dumps(e).encode(), msg_id=e["id"]
                )
                for e in batch[start : start + 500]
            )
        )


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = EmbeddedStack(workdir, ("nats", "postgres"), start_timeout=60.0)
    with stack:
        say("starting embedded NATS and PostgreSQL")
        urls = stack.start()
        assert urls.database_url
        assert urls.nats_url
        db = Database(urls.database_url)
        await db.migrate()
        bus = NatsBus(urls.nats_url, name="bench-learner")
        await bus.wait_connected(10)
        await StreamLayout().ensure(bus.js)
        rng = random.Random(7)
        space = FeatureSpace()
        batch = events(args.events, space, rng)
        total = len(batch)
        say(f"publishing {total} events to OUTCOMES")
        await publish(bus, batch)
        # What the learner is timed against is the stream: this process's copy of the events
        # would only make every full garbage collection of the learner's heap slower.
        del batch
        store = SnapshotStore(db)
        channel = WeightsChannel(bus)
        learner = Learner(store, announce=channel.announce)
        await learner.start()
        broker = learner_broker(urls.nats_url, learner)
        stop = asyncio.Event()
        say("learning them")
        started = time.perf_counter()
        await broker.start()
        checkpoints = asyncio.create_task(learner.run_checkpoints(stop))
        while learner.seen < total:
            await asyncio.sleep(0.02)
        await learner.checkpoint()
        took = time.perf_counter() - started
        throughput = {
            "events": total,
            "seconds": round(took, 2),
            "events_per_s": round(total / took, 1),
            "snapshot_version": learner.version,
        }
        say(f"  {throughput['events_per_s']} events/s")

        loaded: dict[int, float] = {}
        follow_stop = asyncio.Event()

        async def load(version: int) -> None:
            latest = await store.latest()
            if latest is not None:
                await asyncio.to_thread(RoutingWeights.from_dict, latest.state)
                loaded[latest.version] = time.perf_counter()

        follower = asyncio.create_task(channel.follow(load, follow_stop))
        delays: list[float] = []
        say(f"propagation: {args.probes} single events")
        for probe in range(args.probes):
            await asyncio.sleep(0.3)
            target = learner.version + 1
            probe_event = {
                "type": "model.outcome",
                "id": f"probe-{probe}-{uuid.uuid4().hex[:6]}",
                "model": "alpha",
                "outcome": "ok",
                "latency_ms": 100.0,
                "cost": 0.001,
            }
            sent = time.perf_counter()
            await publish(bus, [probe_event])
            deadline = sent + 30
            while not any(v >= target and t >= sent for v, t in loaded.items()):
                assert time.perf_counter() < deadline, "no new weights within 30 s"
                await asyncio.sleep(0.005)
            arrived = min(t for v, t in loaded.items() if v >= target and t >= sent)
            delays.append((arrived - sent) * 1000)
        follow_stop.set()
        stop.set()
        await follower
        await checkpoints
        await broker.stop()
        await bus.close()
        await db.dispose()
    propagation = summary_ms([d / 1000 for d in delays])
    say(f"  p50 {propagation['p50_ms']} ms, max {max(delays):.0f} ms")
    return {"throughput": throughput, "propagation": propagation, "max_ms": round(max(delays), 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-bench-learner-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    rate = results["throughput"]["events_per_s"]
    worst = results["max_ms"] / 1000
    doc = {
        "benchmark": "learner",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/learner.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "config": {"events": args.events, "probes": args.probes, "models": len(MODELS)},
        **results,
        "targets": {
            "throughput": {
                "target": f">= {TARGET_EVENTS_PER_S:g} events/s",
                "value": rate,
                "pass": rate >= TARGET_EVENTS_PER_S,
            },
            "propagation": {
                "target": f"<= {TARGET_PROPAGATION_S:g} s from an event to loaded weights (max)",
                "value": worst,
                "pass": worst <= TARGET_PROPAGATION_S,
            },
        },
    }
    write_results(doc, QUICK_RESULTS if args.quick else RESULTS)
    for name, verdict in doc["targets"].items():
        mark = "PASS" if verdict["pass"] else "MISS"
        print(f"{mark}  {name:<12} {verdict['value']}  (target {verdict['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
