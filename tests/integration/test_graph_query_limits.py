"""A costly graph query is the caller's 400, stopped before it costs the graph server its memory.

The audit's query, ``UNWIND range(1, 2000000000)`` under one anchored node, made FalkorDB
allocate 32 GB in one expression, past its time limit (checked only between records), until
the kernel killed it. These tests send it, and queries the server itself must stop (one that
runs past its time, one that allocates past its memory), and watch the server's memory while
they do: a 400 naming ``query``, the server's RSS far below a gigabyte, and the next read
answered. A watchdog kills the server past 1 GB, so a regression fails here instead of taking
the host's memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
import pytest

from spine.graph.falkordb_store import FalkorStore
from spine.graph.store import QueryLimitExceeded
from spine.platform.embedded.stack import stack_status
from support.fake_models import FakeModelServer
from support.knowledge import knowledge, tenant_name
from support.live_platform import RunningPlatform, running_platform
from support.servers import BackingServices

pytestmark = pytest.mark.integration

BOUND = 1_000_000_000  # bytes: the server's RSS must stay well under this
HUGE_RANGE = "MATCH (p:Person {tenant: $tenant}) UNWIND range(1,2000000000) AS x RETURN count(x)"
# A billion rows from ten-element lists: the guard lets it through, the server's clock stops it.
DIGITS = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
ENDLESS = (
    f"MATCH (p:Person {{tenant: $tenant}}) WITH {DIGITS} AS d "
    + " ".join(f"UNWIND d AS x{i}" for i in range(9))
    + " RETURN count(*) AS n"
)


def _falkordb(services: BackingServices) -> psutil.Process:
    if services.falkordb_url is None or services.stack is None:
        pytest.skip("needs the embedded FalkorDB")
    (status,) = [s for s in stack_status(services.stack.data_dir) if s.name == "falkordb"]
    assert status.alive and status.pid is not None
    return psutil.Process(status.pid)


class MemoryWatch:
    """The highest RSS of a process while the block runs; the process is killed past ``BOUND``."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self.killed = False
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            with contextlib.suppress(psutil.Error):
                rss = self.process.memory_info().rss
                self.peak = max(self.peak, rss)
                if rss > BOUND:
                    self.killed = True
                    self.process.kill()
                    return

    @contextlib.contextmanager
    def watching(self) -> Iterator[MemoryWatch]:
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            self._done.set()
            sampler.join()
        assert not self.killed, f"the graph server passed {BOUND:,} bytes and was killed"


@pytest.fixture
async def spine(
    services: BackingServices, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    _falkordb(services)
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge(query_timeout=1.0)
    ) as running:
        yield running


@pytest.fixture
async def admin(spine: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    """An admin key of a tenant of its own, whose graph holds ``Person:42``."""
    tenant = tenant_name()
    store = spine.platform.knowledge.store
    assert store is not None
    await store.write(
        [("MERGE (:Person {tenant: $tenant, uid: 'Person:42', name: 'Ann'})", {"tenant": tenant})]
    )
    secret = (await spine.platform.keys.create(tenant=tenant, role="admin")).secret
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    ) as client:
        yield client


async def _read_after(client: httpx.AsyncClient) -> None:
    node = await client.get("/v1/graph/nodes/Person:42")
    assert node.status_code == 200, node.text
    assert node.json()["properties"]["name"] == "Ann"


async def test_the_audited_range_query_is_a_400_and_the_server_keeps_its_memory(
    services: BackingServices, admin: httpx.AsyncClient
) -> None:
    with MemoryWatch(_falkordb(services)).watching() as watch:
        answer = await admin.post("/v1/graph/query", json={"query": HUGE_RANGE})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "query_rejected"
    assert error["field"] == "query"
    assert "range()" in error["message"]
    assert "Retry-After" not in answer.headers
    assert watch.peak < BOUND // 2
    await _read_after(admin)


async def test_a_range_too_large_in_a_parameter_is_refused(admin: httpx.AsyncClient) -> None:
    query = "MATCH (p:Person {tenant: $tenant}) UNWIND range(1, $n) AS x RETURN count(x)"
    answer = await admin.post("/v1/graph/query", json={"query": query, "params": {"n": 10**9}})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == "query"
    small = await admin.post("/v1/graph/query", json={"query": query, "params": {"n": 1000}})
    assert small.status_code == 200, small.text
    assert small.json()["rows"] == [[1000]]


async def test_a_query_past_its_time_limit_is_a_400_naming_query_not_an_outage(
    services: BackingServices, admin: httpx.AsyncClient
) -> None:
    with MemoryWatch(_falkordb(services)).watching() as watch:
        answer = await admin.post("/v1/graph/query", json={"query": ENDLESS})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "query_limit_exceeded"
    assert error["field"] == "query"
    assert error["limit"] == "time"
    assert "Retry-After" not in answer.headers
    assert watch.peak < BOUND // 2
    await _read_after(admin)


@pytest.fixture
async def store(services: BackingServices) -> AsyncIterator[FalkorStore]:
    _falkordb(services)
    assert services.falkordb_url is not None
    store = FalkorStore.connect(services.falkordb_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        # Ten million values held at once: past the memory one query may use.
        ("UNWIND range(1, 10000000) AS x RETURN count(x) AS n", "memory"),
        # A trillion rows: past the time the read gives the server.
        ("UNWIND range(1, 1000000) AS a UNWIND range(1, 1000000) AS b RETURN count(*)", "time"),
    ],
)
async def test_the_server_stops_a_query_at_its_limits_and_answers_the_next(
    services: BackingServices, store: FalkorStore, query: str, limit: str
) -> None:
    watching = MemoryWatch(_falkordb(services)).watching()
    with watching as watch, pytest.raises(QueryLimitExceeded) as raised:
        await store.read(query, {}, timeout=1.0)
    assert raised.value.details == {"limit": limit}
    assert raised.value.status_code == 400
    assert watch.peak < BOUND // 2
    answer: Any = await store.read("RETURN 1 AS one", {}, timeout=1.0)
    assert answer.records == [{"one": 1}]
