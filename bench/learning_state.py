"""Learning-state benchmark: what one version of the routing weights costs to store and to load.

Run it as ``.venv/bin/python bench/learning_state.py``. In a temporary directory it starts the
embedded PostgreSQL, migrates a database and builds ``--models`` dense models (each scored 300
times on requests of 30 random features, so every covariance is full). Then, for two scenarios
of ``--per-version`` observations between versions, ``--versions`` versions each:

* **outcomes**: latency and cost only (every model call brings them; no covariance changes);
* **quality**: quality scores (feedback, task signals), spread over the models, so a model
  folds its covariance every 64 of them.

Each scenario is run twice on the same observations, alternating version by version:

* **whole**: the layout before parts (a version holds its whole state in ``routing_weights``,
  read back whole and decoded whole), with the statements ``SnapshotStore`` used then;
* **parts**: ``SnapshotStore`` as shipped (large values stored once by digest, a reader keeps
  the parts it has and reuses the covariances no fold changed).

Per version: WAL bytes (``pg_current_wal_lsn``), the store's wall time, PostgreSQL's CPU, the
reader's wall time to fetch the newest version and its CPU to rebuild the weights. Printed and
written to ``bench/results/learning_state.json``. Targets (this bench's own; issue 12 sets none
here; they hold the design to its promise): a version between folds writes <= 0.1x the WAL of
the whole state, and a router loads one in <= 0.5x the time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from _harness import say
from _report import ROOT, code_version, write_results
from spine.platform.db import Database
from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.learning.features import FeatureSpace, SparseFeatures
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.learning.weights import Observation, RoutingWeights
from spine.platform.schema import RoutingWeightsRow, utcnow

RESULTS = ROOT / "bench" / "results" / "learning_state.json"
WEIGHTS: sa.Table = RoutingWeightsRow.__table__  # type: ignore[assignment]
TARGET_WAL_RATIO = 0.1
TARGET_LOAD_RATIO = 0.5
KEEP = 20  # versions the store keeps (as SnapshotStore does)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--per-version", type=int, default=100)
    return parser.parse_args(argv)


def observation(
    rng: random.Random, space: FeatureSpace, model: str, *, quality: bool
) -> Observation:
    if not quality:
        return Observation(model=model, latency_ms=rng.uniform(5, 50), cost=0.001)
    index = sorted(rng.sample(range(space.dims), 30))
    features = SparseFeatures(
        space=space.id, indices=tuple(index), values=tuple(rng.random() for _ in index)
    )
    return Observation(model=model, features=features, quality=rng.random())


class WholeLayout:
    """The layout before parts: the whole state in one row, read and decoded whole."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(self, *, version: int, state: dict[str, Any]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.insert(WEIGHTS).values(
                    version=version, state=state, events=version, created_at=utcnow()
                )
            )
            await conn.execute(sa.delete(WEIGHTS).where(WEIGHTS.c.version <= version - KEEP))

    async def latest(self) -> dict[str, Any]:
        query = sa.select(WEIGHTS).order_by(WEIGHTS.c.version.desc()).limit(1)
        async with self._db.transaction() as conn:
            row = (await conn.execute(query)).mappings().one()
        state: dict[str, Any] = row["state"]
        return state


class PartsLayout:
    """``SnapshotStore`` as shipped, one for the learner and one for a router."""

    def __init__(self, db: Database) -> None:
        self._writer, self._reader = SnapshotStore(db), SnapshotStore(db)

    async def save(self, *, version: int, state: dict[str, Any]) -> None:
        await self._writer.save(version=version, state=state, events=version, applied=[])

    async def latest(self) -> dict[str, Any]:
        snapshot = await self._reader.latest()
        assert snapshot is not None
        return snapshot.state


async def wal(conn: Any) -> float:
    result = await conn.execute(sa.text("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8"))
    return float(result.scalar_one())


def postgres_cpu(workdir: Path) -> float:
    """CPU seconds of the embedded PostgreSQL and its backends so far."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] != "postgres":
                continue
            root = proc if str(workdir) in " ".join(proc.info["cmdline"] or []) else proc.parent()
            if root is not None and str(workdir) in " ".join(root.cmdline()):
                times = proc.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


async def scenario(
    name: str, dbs: dict[str, Database], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    space = FeatureSpace()
    rng = random.Random(11)
    weights = RoutingWeights()
    models = [f"model-{i}" for i in range(args.models)]
    for model in models:
        for _ in range(300):
            weights.observe(observation(rng, space, model, quality=True))
    layouts: dict[str, WholeLayout | PartsLayout] = {
        "whole": WholeLayout(dbs["whole"]),
        "parts": PartsLayout(dbs["parts"]),
    }
    totals = {key: dict.fromkeys(("wal", "save", "pg", "fetch", "build"), 0.0) for key in layouts}
    loaded: dict[str, RoutingWeights | None] = dict.fromkeys(layouts)
    db = dbs["whole"]  # WAL is the server's: read it anywhere
    for each in dbs.values():
        await SnapshotStore(each).reset()
    for version in range(1, args.versions + 2):
        quality = name == "quality"
        for i in range(args.per_version):
            weights.observe(observation(rng, space, models[i % len(models)], quality=quality))
        state = weights.to_dict()
        for key, layout in layouts.items():
            async with db.transaction() as conn:
                before_wal = await wal(conn)
            before_pg = postgres_cpu(workdir)
            started = time.perf_counter()
            await layout.save(version=version, state=state)
            saved = time.perf_counter() - started
            async with db.transaction() as conn:
                written = await wal(conn) - before_wal
            pg = postgres_cpu(workdir) - before_pg
            started = time.perf_counter()
            read = await layout.latest()
            fetched = time.perf_counter() - started
            started = time.process_time()
            previous = loaded[key] if key == "parts" else None
            loaded[key] = RoutingWeights.from_dict(read, previous=previous)
            built = time.process_time() - started
            if version > 1:  # the first version of each layout writes everything: not counted
                for metric, value in zip(
                    ("wal", "save", "pg", "fetch", "build"),
                    (written, saved, pg, fetched, built),
                    strict=True,
                ):
                    totals[key][metric] += value
        for key in layouts:
            rebuilt = loaded[key]
            assert rebuilt is not None, key
            assert rebuilt.to_dict() == state, f"{key} lost the state"
    n = args.versions
    per_version = {
        key: {
            "wal_kb": round(t["wal"] / n / 1000, 1),
            "store_ms": round(t["save"] / n * 1000, 2),
            "postgres_cpu_ms": round(t["pg"] / n * 1000, 2),
            "reader_fetch_ms": round(t["fetch"] / n * 1000, 2),
            "reader_build_cpu_ms": round(t["build"] / n * 1000, 2),
            "reader_load_ms": round((t["fetch"] + t["build"]) / n * 1000, 2),
        }
        for key, t in totals.items()
    }
    whole, parts = per_version["whole"], per_version["parts"]
    ratios = {
        metric: round(parts[metric] / whole[metric], 3) if whole[metric] else None
        for metric in whole
    }
    say(f"{name}: whole {whole}")
    say(f"{name}: parts {parts}")
    return {"per_version": per_version, "parts_over_whole": ratios}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = EmbeddedStack(workdir, ("postgres",), start_timeout=60.0)
    with stack:
        say("starting the embedded PostgreSQL")
        urls = stack.start()
        assert urls.database_url
        admin = Database(urls.database_url)
        dbs: dict[str, Database] = {}
        try:
            # One database per layout, so neither deletes the other's versions.
            async with admin.engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                for key in ("whole", "parts"):
                    await autocommit.execute(sa.text(f"CREATE DATABASE bench_{key}"))
            for key in ("whole", "parts"):
                dbs[key] = Database(urls.database_url.rsplit("/", 1)[0] + f"/bench_{key}")
                await dbs[key].migrate()
            results = {}
            for name in ("outcomes", "quality"):
                say(f"{name}: {args.versions} versions of {args.per_version} observations")
                results[name] = await scenario(name, dbs, workdir, args)
            return results
        finally:
            for each in (*dbs.values(), admin):
                await each.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-bench-learning-state-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    outcomes = results["outcomes"]["parts_over_whole"]
    doc = {
        "benchmark": "learning_state",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": ".venv/bin/python bench/learning_state.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "config": {
            "models": args.models,
            "versions": args.versions,
            "observations_per_version": args.per_version,
            "dense_model": "300 quality scores of 30 random features each",
        },
        **results,
        "targets": {
            "wal_between_folds": {
                "target": f"a version between folds writes <= {TARGET_WAL_RATIO:g}x the whole "
                "state's WAL (outcomes scenario)",
                "value": outcomes["wal_kb"],
                "pass": outcomes["wal_kb"] is not None and outcomes["wal_kb"] <= TARGET_WAL_RATIO,
            },
            "router_load": {
                "target": f"a router loads a version in <= {TARGET_LOAD_RATIO:g}x the time of the "
                "whole state (outcomes scenario)",
                "value": outcomes["reader_load_ms"],
                "pass": outcomes["reader_load_ms"] is not None
                and outcomes["reader_load_ms"] <= TARGET_LOAD_RATIO,
            },
        },
    }
    write_results(doc, RESULTS)
    for name, verdict in doc["targets"].items():
        mark = "PASS" if verdict["pass"] else "MISS"
        print(f"{mark}  {name:<18} {verdict['value']}x  (target {verdict['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
