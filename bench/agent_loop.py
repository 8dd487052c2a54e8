"""Agent-loop benchmark: what the platform adds per step of a tool-using agent.

Run it as ``.venv/bin/python bench/agent_loop.py`` (``--quick`` for a short run). It starts the
embedded NATS and PostgreSQL, a 0 ms fake model server in a process of its own (as a model
server is; ``--model-in-thread`` runs it as a thread of this process, as this bench did before:
its HTTP serving then competes with the platform for the GIL) and one platform with its worker
in this process, then in one run:

1. **Dispatch**: sequential one-call ``chat`` tasks, submit to final state (the backbone's
   figure), p50/p99.
2. **Loop**: sequential tasks of an agent whose model asks for a no-op tool on every step but
   the last. Per task, the platform's time per step is the time from the ``running`` event to
   the ``final`` event, less the model calls' time (their usage rows: routing, LiteLLM, HTTP
   and the fake model) and the tools' time (their ``tool_call_finished`` durations), divided
   by the steps. What is left is the loop itself: the journal commits, the progress events
   (database and NATS), the registry and the checkpoints.

Figures are printed and written to ``bench/results/agent_loop.json``; the target is at most
3 ms per step.
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

from _harness import say
from _meter import summary_ms
from _report import ROOT, code_version

sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

RESULTS = ROOT / "bench" / "results" / "agent_loop.json"
TARGET_MS = 3.0
AGENT = """name: bench
description: calls a no-op tool until told to stop
instructions: Call noop, then answer.
tools: [noop]
model: {models: [llama3.2]}
max_steps: 50
"""


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import sqlalchemy as sa
    from pydantic import BaseModel

    from spine.platform.app.wiring import Platform
    from spine.platform.embedded.stack import EmbeddedStack
    from spine.platform.keys import Principal
    from spine.platform.schema import ModelCallRow
    from spine.platform.settings import load_settings
    from spine.platform.tasks import TaskSubmission
    from spine.tools.tool import ModelArguments, Tool, ToolContext
    from support.fake_models import FakeModelProcess, FakeModelServer, tool_loop_rules

    steps = args.steps

    class NoArguments(BaseModel):
        pass

    async def noop(_: NoArguments, ctx: ToolContext) -> str:
        return "ok"

    with tempfile.TemporaryDirectory(prefix="spine-bench-loop-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "agents").mkdir()
        (tmp / "agents" / "bench.yaml").write_text(AGENT)
        models: FakeModelServer | FakeModelProcess
        if args.model_in_thread:
            models = FakeModelServer(latency=0.0)
            for rule in tool_loop_rules("loop", "noop", steps):
                models.add(rule)
        else:
            models = FakeModelProcess(latency=0.0, tool_loop=("loop", "noop", steps))
        with EmbeddedStack(tmp / "servers", ["nats", "postgres"]) as stack, models:
            endpoints = stack.start()
            settings = load_settings(
                _env_file=None,
                database_url=endpoints.database_url,
                nats_url=endpoints.nats_url,
                ollama_url=models.url,
                data_dir=tmp / "data",
                agents_dir=tmp / "agents",
                log_level="WARNING",
                cache={"ttl": 1},
            )
            platform = Platform.build(settings, name="bench-loop")
            await platform.start()
            await platform.bus.wait_connected(10)
            await platform.ensure_streams_when_connected()
            platform.tools.register(
                Tool(
                    name="noop",
                    description="Does nothing.",
                    arguments=ModelArguments(NoArguments),
                    handler=noop,
                )
            )
            stop = asyncio.Event()
            worker = asyncio.create_task(platform.worker().run(stop))
            principal = Principal(key_id="bench", tenant="bench", role="admin")
            try:
                await platform.warm_router()

                async def run_task(agent: str, prompt: str) -> str:
                    task, _ = await platform.dispatcher.submit(
                        TaskSubmission(agent=agent, input={"prompt": prompt}),
                        principal=principal,
                        idempotency_key=None,
                    )
                    # Followed as a client would (stored events, then NATS nudges), not polled:
                    # a poll every millisecond was most of the loop's own CPU.
                    async for event in platform.feed.follow(task.id, tenant="bench"):
                        if event.is_final:
                            assert event.data["state"] == "succeeded", event.data
                            return task.id
                    raise AssertionError(f"the feed of {task.id} ended before its final state")

                say("warming up ...")
                for i in range(5):
                    await run_task("chat", f"warm {i}")
                    await run_task("bench", f"loop warm {i}")

                say(f"dispatch: {args.tasks} sequential chat tasks ...")
                dispatch: list[float] = []
                for i in range(args.tasks):
                    started = time.perf_counter()
                    await run_task("chat", f"dispatch {i}")
                    dispatch.append(time.perf_counter() - started)

                say(f"loop: {args.tasks} sequential tasks of {steps} steps ...")
                per_step: list[float] = []
                model_ms: list[float] = []
                tool_ms: list[float] = []
                wall_ms: list[float] = []
                loop_cpu = 0.0
                for i in range(args.tasks):
                    # CPU of this thread, the event loop's: the platform, the worker, the model
                    # client and the follower; not the fake model server (its own thread or process).
                    cpu_started = time.thread_time()
                    task_id = await run_task("bench", f"loop {i}")
                    loop_cpu += time.thread_time() - cpu_started
                    events = await platform.tasks.events(task_id, tenant="bench")
                    running = next(e for e in events if e.data.get("state") == "running")
                    final = next(e for e in events if e.type == "final")
                    wall = (final.created_at - running.created_at).total_seconds() * 1000
                    tools = sum(
                        float(e.data["duration_ms"])
                        for e in events
                        if e.type == "tool_call_finished"
                    )
                    async with platform.db.transaction() as conn:
                        model = float(
                            (
                                await conn.execute(
                                    sa.select(sa.func.sum(ModelCallRow.latency_ms)).where(
                                        ModelCallRow.task_id == task_id
                                    )
                                )
                            ).scalar()
                            or 0
                        )
                    wall_ms.append(wall)
                    model_ms.append(model / steps)
                    tool_ms.append(tools / steps)
                    per_step.append((wall - model - tools) / steps)
            finally:
                stop.set()
                await asyncio.wait_for(worker, 30)
                await platform.close()

    overhead_p50 = statistics.median(per_step)
    cpu_per_step = 1000 * loop_cpu / (args.tasks * steps)
    return {
        "benchmark": "agent_loop",
        "command": ".venv/bin/python bench/agent_loop.py " + " ".join(sys.argv[1:]),
        "code": code_version(),
        "config": {
            "tasks": args.tasks,
            "steps_per_task": steps,
            "fake_model_latency_ms": 0,
            "fake_model": "thread of this process" if args.model_in_thread else "own process",
        },
        "dispatch_ms": summary_ms(dispatch),
        "loop": {
            "platform_ms_per_step": {
                "p50": round(overhead_p50, 3),
                "p90": round(sorted(per_step)[int(len(per_step) * 0.9)], 3),
                "mean": round(statistics.fmean(per_step), 3),
            },
            "model_call_ms_per_step_p50": round(statistics.median(model_ms), 3),
            "tool_ms_per_step_p50": round(statistics.median(tool_ms), 3),
            "task_wall_ms_p50": round(statistics.median(wall_ms), 1),
            "event_loop_cpu_ms_per_step": round(cpu_per_step, 3),
        },
        "targets": {
            "platform_ms_per_step": {
                "target": f"<= {TARGET_MS:g} ms",
                "value": round(overhead_p50, 3),
                "pass": overhead_p50 <= TARGET_MS,
            }
        },
    }


def report(doc: dict[str, Any]) -> None:
    loop = doc["loop"]
    print()
    print(f"dispatch (one-call chat task), ms: {doc['dispatch_ms']}")
    print(f"agent loop, {doc['config']['steps_per_task']} steps per task:")
    print(f"  platform time per step, ms: {loop['platform_ms_per_step']}")
    print(f"  model call per step p50: {loop['model_call_ms_per_step_p50']} ms")
    print(f"  tool per step p50: {loop['tool_ms_per_step_p50']} ms")
    print(f"  task wall p50: {loop['task_wall_ms_p50']} ms")
    print(
        f"  event loop CPU per step (platform, worker, model client; not the fake model): "
        f"{loop['event_loop_cpu_ms_per_step']} ms"
    )
    verdict = doc["targets"]["platform_ms_per_step"]
    print(
        f"target {verdict['target']}: {verdict['value']} ms -> {'PASS' if verdict['pass'] else 'MISS'}"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="5 tasks of 5 steps")
    parser.add_argument(
        "--model-in-thread",
        action="store_true",
        help="the fake model server as a thread of this process (the method before)",
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.steps = 5, 5
    return args


if __name__ == "__main__":
    arguments = parse()
    started = datetime.now(UTC)
    document = asyncio.run(main(arguments))
    document["started_at"] = started.isoformat(timespec="seconds")
    report(document)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    import json

    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    say(f"wrote {RESULTS}")
