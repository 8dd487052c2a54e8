"""How the gateway bench calls things: request bodies, interleaved sequential calls, open-loop
rates and closed-loop saturation, and the memory sampler.

Sequential figures interleave the targets call by call (direct, SDK, proxy, ours, direct, ...),
so a neighbor's CPU burst on this shared two-core machine hits all of them alike. Load comes
from aiohttp: on two cores every client CPU millisecond is taken from the servers, and aiohttp
costs a fraction of httpx per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from _harness import Harness
from _meter import Meter, summary_ms

_serial = itertools.count(1)


def body(model: str, *, stream: bool = False, text: str | None = None) -> bytes:
    """A chat completion body; every call gets its own prompt unless ``text`` is given."""
    prompt = text if text is not None else f"ping {next(_serial)}"
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()


@dataclass(slots=True, kw_only=True)
class Endpoint:
    """A chat completions URL, the headers to call it with and the model name it knows."""

    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    expect_cache: str | None = None  # the X-Spine-Cache every answer must carry (ours only)

    def check(self, status: int, headers: Any, text: str) -> None:
        if status != 200:
            raise RuntimeError(f"{self.name} answered {status}: {text[:300]}")
        if self.expect_cache is not None and headers.get("x-spine-cache") != self.expect_cache:
            raise RuntimeError(
                f"{self.name}: expected X-Spine-Cache {self.expect_cache}, "
                f"got {headers.get('x-spine-cache')}"
            )


Call = Callable[[], Awaitable[float | None]]


def post_call(client: Any, endpoint: Endpoint, *, fixed_text: str | None = None) -> Call:
    """One non-streamed completion through ``endpoint`` with an httpx client."""

    async def call() -> None:
        payload = body(endpoint.model, text=fixed_text)
        response = await client.post(endpoint.url, content=payload, headers=endpoint.headers)
        endpoint.check(response.status_code, response.headers, response.text)

    return call


def stream_call(client: Any, endpoint: Endpoint) -> Call:
    """One streamed completion; returns the seconds to the first chunk with content."""

    async def call() -> float | None:
        began = time.perf_counter()
        first: float | None = None
        payload = body(endpoint.model, stream=True)
        async with client.stream(
            "POST", endpoint.url, content=payload, headers=endpoint.headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                endpoint.check(response.status_code, response.headers, response.text)
            async for line in response.aiter_lines():
                if first is not None or not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter() - began
        if first is None:
            raise RuntimeError(f"{endpoint.name}: a stream ended without content")
        return first

    return call


def get_call(client: Any, url: str) -> Call:
    """One GET that must answer 200 (a health probe: the HTTP floor of a server)."""

    async def call() -> None:
        response = await client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}")

    return call


ORDER_SEED = 12  # the shuffled order of interleaved calls is the same in every run


async def interleaved(calls: dict[str, Call], count: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Time ``count`` calls of each, in rounds of one call each, after ``warmup`` each.

    Each round's order is shuffled (seeded): a server still busy after its answer (the proxy's
    logging after each call costs the next call ~0.7 ms here) slows whichever call comes next,
    so every target must follow every other equally often. A rotating order put the same target
    after the proxy in most rounds.

    Per target: wall-time percentiles, this process's CPU per call, and, for calls that return
    a mark (seconds to the first token), the marks' percentiles as ``first_token``.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            await calls[name]()
    walls: dict[str, list[float]] = {n: [] for n in names}
    marks: dict[str, list[float]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0.0)
    order = random.Random(ORDER_SEED)
    for _ in range(count):
        for name in order.sample(names, len(names)):
            cpu0 = time.process_time()
            began = time.perf_counter()
            mark = await calls[name]()
            walls[name].append(time.perf_counter() - began)
            cpu[name] += time.process_time() - cpu0
            if mark is not None:
                marks[name].append(mark)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = {
            **summary_ms(walls[name]),
            "client_cpu_ms_per_call": round(cpu[name] * 1000 / count, 3),
        }
        if marks[name]:
            out[name]["first_token"] = summary_ms(marks[name])
    return out


# -- load ------------------------------------------------------------------------------------


def load_session(connections: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def _one(
    session: Any, endpoint: Endpoint, began: float, latencies: list[float], errors: Counter[str]
) -> float | None:
    """One request of a load run; returns when it ended (None when it failed)."""
    try:
        async with session.post(
            endpoint.url, data=body(endpoint.model), headers=endpoint.headers
        ) as response:
            await response.read()
            if response.status != 200:
                errors[f"HTTP {response.status}"] += 1
                return None
    except Exception as exc:
        errors[type(exc).__name__] += 1
        return None
    ended = time.perf_counter()
    latencies.append(ended - began)
    return ended


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep this process's garbage collector out of a timed load window (collected after).

    Latency counts from each request's scheduled send, so a pause of the sender is counted as
    the server's: a 97 ms full collection in this client (12,000 requests in hand at 300 rps)
    held every send due in that moment, and the server's p99 showed it.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def open_loop(
    harness: Harness,
    endpoint: Endpoint,
    rate: float,
    seconds: float,
    drain: float,
) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule, whatever the answers do.

    Latency counts from each request's *scheduled* time, so a client that falls behind does
    not hide queueing (no coordinated omission). Requests still open ``drain`` seconds after
    the last was sent are cancelled and counted as errors.
    """
    total = max(int(rate * seconds), 1)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    meter = Meter(harness, None)
    async with load_session(4096) as session:
        await meter.start(settle=False)
        with _collector_paused():
            t0 = time.perf_counter() + 0.02
            tasks = []
            late = 0.0
            for index in range(total):
                due = t0 + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late = max(late, -delay)
                tasks.append(asyncio.create_task(_one(session, endpoint, due, latencies, errors)))
            sending = time.perf_counter() - t0
            done, pending = await asyncio.wait(tasks, timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        used = await meter.stop(total)
    if pending:
        errors["unfinished after drain"] += len(pending)
    ends = sorted(end for t in done if not t.cancelled() and (end := t.result()) is not None)
    ok = len(latencies)
    # First answer to last: about the send window for a server that keeps up (each answer
    # is late by about one latency), and the answers' own pace for one that falls behind.
    span = ends[-1] - ends[0] if len(ends) > 1 else 0.0
    return {
        "offered_rps": rate,
        "requests": total,
        "ok": ok,
        "errors": dict(errors),
        "achieved_rps": round((ok - 1) / span, 1) if span > 0 else 0.0,
        "send_rate_rps": round(total / sending, 1) if sending > 0 else None,
        "client_max_lag_ms": round(late * 1000, 1),
        "latency": summary_ms(latencies),
        "cpu_ms_per_request": used["cpu_ms_per_task"],
        "foreign_cpu_cores": used["foreign_cpu_cores"],
    }


async def closed_loop(
    harness: Harness,
    conn: Any,
    endpoint: Endpoint,
    concurrency: int,
    seconds: float,
    warm: float = 2.0,
) -> dict[str, Any]:
    """``concurrency`` clients each sending the next request as soon as one is answered.

    Throughput counts the answers that arrive in the ``seconds`` after a ``warm`` start; CPU
    per request is over every request of the run.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counted = 0
    completed = 0
    meter = Meter(harness, conn)
    await meter.start()
    began = time.perf_counter()
    window = (began + warm, began + warm + seconds)

    async def client(session: Any) -> None:
        nonlocal counted, completed
        while time.perf_counter() < window[1]:
            sent = time.perf_counter()
            ended = await _one(session, endpoint, sent, latencies, errors)
            if ended is None:
                continue
            completed += 1
            if window[0] <= ended <= window[1]:
                counted += 1
            elif ended < window[0]:
                latencies.pop()  # warm-up: not in the percentiles

    async with load_session(concurrency) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    used = await meter.stop(max(completed, 1))
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests": completed,
        "errors": dict(errors),
        "throughput_rps": round(counted / seconds, 1),
        "latency": summary_ms(latencies),
        "resources": used,
    }


# -- memory ----------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples the resident memory of chosen children (with their own children) in the background."""

    harness: Harness
    names: list[str]
    every: float = 0.5
    peak: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def now(self) -> dict[str, int]:
        """RSS in bytes per child, its descendants included."""
        import psutil

        found: dict[str, int] = {}
        for child in self.harness.children:
            if child.name not in self.names:
                continue
            try:
                root = psutil.Process(child.popen.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            found[child.name] = total
        return found

    def start(self) -> None:
        async def run() -> None:
            while True:
                for name, rss in self.now().items():
                    self.peak[name] = max(self.peak.get(name, 0), rss)
                await asyncio.sleep(self.every)

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def mib(value: int) -> float:
    return round(value / 2**20, 1)
