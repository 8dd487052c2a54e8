"""What FastStream would cost the hot task path: CPU per JetStream message, FastStream vs nats-py.

Run it as ``.venv/bin/python bench/faststream_cost.py`` (``--messages N``, default 5,000). It
starts the embedded NATS, then in this one process measures the CPU time (``process_time``) of:

1. **publishing** N messages to a stream with ``msg_id`` (what submitting a task does):
   nats-py's ``js.publish`` against a FastStream ``NatsBroker.publish`` with the same stream;
2. **consuming** them with a durable pull consumer, one handler call and one ack per message
   (what a worker does with tasks): nats-py ``fetch`` in batches of 16 against a FastStream
   pull subscriber of the same batch size.

The learner and the feedback subscriber use FastStream (issue 10: the design card names it for
the event side); the task path keeps raw nats-py where this shows FastStream costing more per
message. Target: none; the figures decide. Written to ``bench/results/faststream_cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js.api import StreamConfig

from _harness import say
from _report import ROOT, code_version, write_results
from spine.platform.embedded.stack import EmbeddedStack

RESULTS = ROOT / "bench" / "results" / "faststream_cost.json"
BATCH = 16


async def raw(url: str, stream: str, n: int) -> tuple[float, float]:
    """CPU µs per message to publish and to consume-and-ack ``n`` messages with nats-py."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    start = time.process_time()
    for i in range(n):
        await js.publish(f"{stream}.x", b'{"i": %d}' % i, headers={"Nats-Msg-Id": str(i)})
    published = time.process_time() - start
    sub = await js.pull_subscribe(f"{stream}.>", durable="raw")
    seen = 0
    start = time.process_time()
    while seen < n:
        for msg in await sub.fetch(BATCH, timeout=5):
            json.loads(msg.data)  # FastStream decodes the body too
            seen += 1
            await msg.ack()
    consumed = time.process_time() - start
    await nc.close()
    return published / n * 1e6, consumed / n * 1e6


async def faststream(url: str, stream: str, n: int) -> tuple[float, float]:
    """The same two steps through FastStream's NATS broker."""
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    await nc.close()
    broker = NatsBroker(url, log_level=0)
    js_stream = JStream(stream, declare=False)
    seen = 0
    done = asyncio.Event()

    @broker.subscriber(
        f"{stream}.>", stream=js_stream, durable="fs", pull_sub=PullSub(batch_size=BATCH)
    )
    async def handle(body: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen >= n:
            done.set()

    await broker.connect()
    start = time.process_time()
    for i in range(n):
        await broker.publish(
            {"i": i}, f"{stream}.x", stream=stream, headers={"Nats-Msg-Id": str(i)}
        )
    published = time.process_time() - start
    start = time.process_time()
    await broker.start()
    await asyncio.wait_for(done.wait(), 120)
    consumed = time.process_time() - start
    await broker.stop()
    return published / n * 1e6, consumed / n * 1e6


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with EmbeddedStack(workdir, ("nats",), start_timeout=60.0) as stack:
        url = stack.start().nats_url
        assert url
        say(f"nats-py: {args.messages} messages")
        raw_pub, raw_sub = await raw(url, "RAWBENCH", args.messages)
        say(f"FastStream: {args.messages} messages")
        fs_pub, fs_sub = await faststream(url, "FSBENCH", args.messages)
    return {
        "publish_cpu_us": {"nats_py": round(raw_pub, 1), "faststream": round(fs_pub, 1)},
        "consume_ack_cpu_us": {"nats_py": round(raw_sub, 1), "faststream": round(fs_sub, 1)},
        "ratio": {
            "publish": round(fs_pub / raw_pub, 2),
            "consume_ack": round(fs_sub / raw_sub, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="spine-fs-cost-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    doc = {
        "benchmark": "faststream_cost",
        "started_at": started.isoformat(timespec="seconds"),
        "command": ".venv/bin/python bench/faststream_cost.py " + " ".join(argv or sys.argv[1:]),
        "code": code_version(),
        "config": {"messages": args.messages, "batch": BATCH},
        **figures,
    }
    write_results(doc, RESULTS)
    for step in ("publish_cpu_us", "consume_ack_cpu_us"):
        f = figures[step]
        print(f"{step:>20}: nats-py {f['nats_py']:8.1f}  FastStream {f['faststream']:8.1f}")
    print(f"FastStream / nats-py: {figures['ratio']}  (no target: informs the task path's choice)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
