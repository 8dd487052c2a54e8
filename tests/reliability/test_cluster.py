"""A real cluster under faults: 3 NATS nodes (R3 streams), 2 APIs, 3 workers, one of each killed.

A thousand chat tasks go in through both APIs (alternating, as a load balancer would spread
them; a request that gets no answer goes to the other API with the same ``Idempotency-Key``).
While they run, the node leading the workers' consumer is SIGKILLed and started again, then one
API process, then one worker. Every accepted task (a 2xx answer) must succeed exactly once: one
``succeeded`` event from its last attempt, attempts numbered without a gap, the right result,
a model call row for each, no task the client did not ask for, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa

from spine.events.streams import DLQ_STREAM, TASKS_STREAM, consumer_name
from spine.platform.db import Database
from spine.platform.keys import KeyStore
from spine.platform.schema import ModelCallRow, TaskRow
from support.cluster import (
    FAKE_MODEL,
    ApiProcess,
    FailoverClient,
    NatsCluster,
    distinct_ports,
    platform_env,
    running_processes,
    write_models_file,
)
from support.fake_models import FakeModelServer
from support.reliability import (
    ACK_WAIT,
    BACKOFF,
    MAX_ATTEMPTS,
    WorkerProcess,
    read_ledger,
    state_counts,
    wait_until,
)

pytestmark = pytest.mark.reliability

TASKS = 1000
CONNECTIONS = 16  # requests in flight from the client
# Submissions are paced so the three faults (NATS node down and back takes several seconds)
# strike while tasks still come in, however fast the APIs answer: 1,000 tasks over ~20 s.
SUBMIT_RATE = 50.0
WORKER_CONCURRENCY = 8
NATS_DOWN = 2.0  # seconds the killed node stays down
# Each fault comes once this many tasks are accepted (and the fault before it is done).
NATS_KILL_AT = TASKS // 10
API_KILL_AT = TASKS * 3 // 10
WORKER_KILL_AT = TASKS // 2


@dataclass(slots=True, kw_only=True)
class Fault:
    what: str
    victim: str
    accepted_at_kill: int
    at: float  # seconds after the first submission
    restarted_after: float = 0.0  # seconds from the kill until it was back


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached after {timeout}s"
        await asyncio.sleep(0.01)


async def _running_prompts(db: Database) -> dict[str, str]:
    """Return the prompt of each running task, by task id."""
    query = sa.select(TaskRow.id, TaskRow.input).where(TaskRow.state == "running")
    async with db.session() as session:
        return {task_id: data["prompt"] for task_id, data in await session.execute(query)}


async def test_cluster_of_3_nats_2_apis_3_workers_loses_nothing_when_one_of_each_is_killed(
    pg_url: str, tmp_path: Path
) -> None:
    db = Database(pg_url)
    await db.migrate()
    key = (await KeyStore(db).create(tenant="acme", role="admin")).secret
    run = uuid.uuid4().hex[:8]
    prompts = [f"cluster {run} task {i:04d}" for i in range(TASKS)]
    faults: list[Fault] = []
    victim_held: set[str] = set()  # tasks running on the worker when it was killed
    # One fake model server per worker: its calls tell when that worker is taking tasks. The
    # victim's answers take 50 ms, so a freeze finds tasks it called the model for still
    # running: at 0 ms a task is running-and-called only for the ~1 ms between its model's
    # answer and its finish statement, and 30 s of tries could miss every one of them.
    with (
        NatsCluster(tmp_path / "nats", size=3) as cluster,
        FakeModelServer(models=[FAKE_MODEL], latency=0.05) as model_1,
        FakeModelServer(models=[FAKE_MODEL]) as model_2,
        FakeModelServer(models=[FAKE_MODEL]) as model_3,
    ):
        models = [model_1, model_2, model_3]
        models_file = write_models_file(tmp_path / "models.yaml")

        def env(model: FakeModelServer) -> dict[str, str]:
            return platform_env(
                database_url=pg_url,
                nats_url=cluster.url,  # all three nodes, comma-separated
                ollama_url=model.url,
                data_dir=tmp_path / "data",
                replicas=3,
                GENAI_API__SWEEP_INTERVAL="0.5",
                GENAI_WORKER__ACK_WAIT=str(ACK_WAIT),
                GENAI_WORKER__MAX_ATTEMPTS=str(MAX_ATTEMPTS),
                GENAI_WORKER__BACKOFF=BACKOFF,
                GENAI_MODELS_FILE=str(models_file),
            )

        apis = [
            ApiProcess(f"api-{n}", env(model_1), tmp_path / f"api-{n}", port)
            for n, port in enumerate(distinct_ports(2), start=1)
        ]
        workers = [
            WorkerProcess(f"worker-{n}", env(model), tmp_path / f"worker-{n}", WORKER_CONCURRENCY)
            for n, model in enumerate(models, start=1)
        ]
        processes = [*apis, *workers]
        with running_processes(processes):
            booting = time.monotonic()
            # Tasks go in as soon as the APIs answer; the workers join as they come up.
            await asyncio.gather(*(api.wait_ready(90) for api in apis))
            ready_in = time.monotonic() - booting
            nc = await nats.connect(servers=cluster.urls)
            try:
                stream = await nc.jetstream().stream_info(TASKS_STREAM)
            finally:
                await nc.close()
            assert stream.config.num_replicas == 3
            assert stream.cluster is not None and len(stream.cluster.replicas or []) == 2

            client = FailoverClient(
                [api.url for api in apis], key, connections=CONNECTIONS, rate=SUBMIT_RATE
            )
            submitting = asyncio.create_task(client.submit_all(prompts, run=run))
            started = time.monotonic()

            async def inject_faults() -> None:
                # The node leading the workers' consumer (every worker pulls from it): its
                # replicas elect a new leader while the workers fetch and ack.
                await _until(lambda: client.accepted >= NATS_KILL_AT, "NATS kill point")
                leaders = await cluster.leaders()
                node = leaders[consumer_name("normal")]
                assert node is not None
                cluster.kill(node)
                led = [name for name, leader in leaders.items() if leader == node]
                fault = Fault(
                    what=f"nats node (leading {', '.join(led)})",
                    victim=node,
                    accepted_at_kill=client.accepted,
                    at=time.monotonic() - started,
                )
                faults.append(fault)
                await asyncio.sleep(NATS_DOWN)
                await asyncio.to_thread(cluster.restart, node)
                fault.restarted_after = time.monotonic() - started - fault.at

                # An API with requests in flight; a supervisor would start it again at once.
                await _until(lambda: client.accepted >= API_KILL_AT, "API kill point")
                api = apis[1]
                api.kill()
                api_fault = Fault(
                    what="api process",
                    victim=api.name,
                    accepted_at_kill=client.accepted,
                    at=time.monotonic() - started,
                )
                faults.append(api_fault)
                api.start()

                async def api_back() -> None:
                    await api.wait_ready(90)
                    api_fault.restarted_after = time.monotonic() - started - api_fault.at

                api_returning = asyncio.create_task(api_back())

                # A worker taking tasks (its model server is being called), with a backlog.
                victim, its_model = workers[0], models[0]
                try:
                    await _until(
                        lambda: client.accepted >= WORKER_KILL_AT and its_model.count() >= 20,
                        "worker kill point",
                        timeout=90,
                    )
                except AssertionError:
                    calls = [m.count() for m in models]
                    counts = dict(await state_counts(db))
                    raise AssertionError(
                        f"the workers stopped taking tasks after the NATS node was killed: model "
                        f"calls per worker {calls}, task states {counts}, {client.accepted} "
                        "accepted"
                    ) from None
                # Frozen, it holds what it holds: killed once that includes a task it called
                # the model for (else thawed and tried again).
                assert victim.proc is not None
                deadline = time.monotonic() + 30
                while True:
                    assert time.monotonic() < deadline, "the victim never held a called task"
                    victim.proc.send_signal(signal.SIGSTOP)
                    # A statement it sent just before (a finish) still commits: let it land,
                    # or a task read as running here ends without running again.
                    await asyncio.sleep(0.2)
                    by_victim = {c.prompt for c in its_model.calls()}
                    running = await _running_prompts(db)
                    victim_held.update(t for t, p in running.items() if p in by_victim)
                    if victim_held:
                        break
                    victim.proc.send_signal(signal.SIGCONT)
                    await asyncio.sleep(0.05)
                victim.kill()
                fault = Fault(
                    what=f"worker process (holding {len(victim_held)} tasks it had called for)",
                    victim=victim.name,
                    accepted_at_kill=client.accepted,
                    at=time.monotonic() - started,
                )
                faults.append(fault)
                victim.start()
                await victim.wait_ready(90)
                fault.restarted_after = time.monotonic() - started - fault.at
                await api_returning

            await asyncio.gather(submitting, inject_faults())
            submissions = submitting.result()
            submitted_in = client.last_answered - client.first_sent
            accepted = {s.task_id: s for s in submissions if s.task_id is not None}
            final = await wait_until(
                db,
                lambda c: (
                    sum(c[s] for s in ("succeeded", "failed", "dead_lettered", "cancelled"))
                    >= len(accepted)
                ),
                timeout=90,
                what="every accepted task finished",
                workers=processes,
            )
            elapsed = time.monotonic() - started
            ledger = await read_ledger(db)
            async with db.session() as session:
                call_rows = Counter(
                    task_id for (task_id,) in await session.execute(sa.select(ModelCallRow.task_id))
                )
            nc = await nats.connect(servers=cluster.urls)
            try:
                dead_letters = (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages
            finally:
                await nc.close()
            tracebacks = {p.name: p.tracebacks() for p in processes}
        calls = Counter(c.prompt for model in models for c in model.calls())
    await db.dispose()

    failed_over = [s for s in submissions if s.failures]
    retried = {t for t, row in ledger.tasks.items() if row.attempts > 1}
    replayed = [s for s in submissions if s.replayed]
    attempts = Counter(row.attempts for row in ledger.tasks.values())
    duplicated = sum(max(0, ledger.count_state_events(t, "succeeded") - 1) for t in ledger.tasks)
    lost = len(accepted) - final["succeeded"]
    print(
        f"\n[cluster: 3 NATS nodes (R3), 2 APIs, 3 workers x {WORKER_CONCURRENCY}] {TASKS} tasks:"
        f" APIs ready in {ready_in:.1f}s; accepted {len(accepted)}, succeeded {final['succeeded']}, lost {lost}, duplicated "
        f"{duplicated}; submitted in {submitted_in:.1f}s, all finished {elapsed:.1f}s after the "
        f"first submit ({len(accepted) / elapsed:.0f} tasks/s with the faults); "
        f"{len(failed_over)} submissions failed over ({len(replayed)} replayed by idempotency "
        f"key); the killed worker held {len(victim_held)} tasks, {len(retried)} ran again; attempts {dict(sorted(attempts.items()))}; model calls {sum(calls.values())}; "
        "faults: "
        + "; ".join(
            f"{f.what} {f.victim} killed at {f.at:.1f}s with {f.accepted_at_kill} accepted, "
            f"back after {f.restarted_after:.1f}s"
            for f in faults
        )
    )
    for name, lines in tracebacks.items():
        if lines:
            print(f"  {name} logged {len(lines)} error lines, first: {lines[0][:200]}")

    # Every task was accepted (a 2xx answer), once: no two submissions got one task.
    unaccepted = [s for s in submissions if s.task_id is None]
    assert not unaccepted, [(s.index, s.failures[-3:]) for s in unaccepted[:5]]
    assert len(accepted) == TASKS
    # Each fault struck while tasks were still coming in.
    assert [f.victim for f in faults][1:] == ["api-2", "worker-1"], faults
    assert all(f.accepted_at_kill < TASKS for f in faults[:2]), faults
    assert any(apis[1].url in f for s in failed_over for f in s.failures), "none met the kill"
    # Nothing lost: every accepted task succeeded, and no task exists that nobody accepted.
    assert final == Counter({"succeeded": TASKS}), final
    assert set(ledger.tasks) == set(accepted)
    # Nothing done twice: one `succeeded` event per task, from its last attempt, whose
    # attempts are numbered 1..n without a gap or a repeat, with the task's own answer.
    for task_id, row in ledger.tasks.items():
        events = ledger.state_events[task_id]
        assert ledger.count_state_events(task_id, "succeeded") == 1, events
        assert events[-1] == {"state": "succeeded", "attempt": row.attempts}, events
        runs = [e["attempt"] for e in events if e["state"] == "running"]
        assert runs == list(range(1, row.attempts + 1)), events
        assert row.result is not None
        assert row.result["text"] == f"echo: {accepted[task_id].prompt}"
    # The tasks the killed worker held ran again.
    assert victim_held, "the killed worker held no task"
    assert victim_held <= retried
    # Model calls: at least one per task; more only for a task that ran again.
    assert set(call_rows) == set(accepted)
    assert {t for t, n in call_rows.items() if n > 1} <= retried
    assert set(calls) == set(prompts)
    repeated = {p for p, n in calls.items() if n > 1}
    assert {s.task_id for s in submissions if s.prompt in repeated} <= retried
    assert dead_letters == 0
