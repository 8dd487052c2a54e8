"""Real backing servers for a test session: embedded (from pip packages) or containers.

``backing_services("embedded", workdir)`` runs :class:`spine.platform.embedded.stack.EmbeddedStack`
on free ports (FalkorDB is the graph and the cache, over its Redis protocol, with a password);
``backing_services("containers", workdir)`` runs the production images through testcontainers
(NATS 2.10 with JetStream, PostgreSQL 16 with pgvector, Neo4j 5 without auth, Redis 7) and
needs a reachable Docker engine. Either way the test sees the URLs of four services (the graph:
``falkordb_url`` or ``neo4j_uri``), plus
:meth:`BackingServices.kill` / :meth:`BackingServices.restart` for reliability tests that take a
server down and bring it back on the same port with the same data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spine.platform.embedded.stack import SERVICES, EmbeddedStack

logger = logging.getLogger(__name__)

Backend = Literal["embedded", "containers"]
SERVICE_NAMES = ("nats", "postgres", "graph", "redis")
CONTAINER_START_TIMEOUT = 180.0


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine (e.g. no Docker engine)."""


@dataclass
class BackingServices:
    """The URLs of the session's servers and a handle to take them down and back up."""

    backend: str
    nats_url: str
    database_url: str
    redis_url: str
    neo4j_uri: str | None
    falkordb_url: str | None = None
    stack: EmbeddedStack | None = None
    _kill: Callable[[str], None] = field(repr=False, default=lambda name: None)
    _restart: Callable[[str, bool], None] = field(repr=False, default=lambda name, kill: None)

    def kill(self, service: str) -> None:
        """SIGKILL one server (``nats``, ``postgres``, ``graph``/``redis``); it stays down.

        Embedded, ``graph`` and ``redis`` are one FalkorDB server: either takes both down.
        """
        _check_service(service)
        self._kill(service)

    def restart(self, service: str, *, kill: bool = False) -> None:
        """Take one server down (SIGKILL if ``kill``) unless it is down, and start it again.

        It comes back on the same port with the same data and answers before this returns.
        """
        _check_service(service)
        self._restart(service, kill)


@contextlib.contextmanager
def backing_services(backend: str, workdir: Path) -> Iterator[BackingServices]:
    """Run real servers for as long as the block lasts.

    Args:
        backend: ``"embedded"`` or ``"containers"``.
        workdir: A directory the servers may keep their data in.

    Raises:
        BackendUnavailable: ``containers`` was chosen and Docker does not answer.
    """
    if backend == "embedded":
        with _embedded(workdir) as services:
            yield services
    elif backend == "containers":
        with _containers() as services:
            yield services
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'embedded' or 'containers'")


def _check_service(service: str) -> None:
    if service not in SERVICE_NAMES:
        raise ValueError(f"unknown service {service!r}; choose from {SERVICE_NAMES}")


@contextlib.contextmanager
def embedded_data_dir(
    workdir: Path, name: str = "embedded", *, remove_in_background: bool = False
) -> Iterator[Path]:
    """Yield a fresh data directory for an embedded stack, removed afterwards (by a detached
    ``rm -rf`` with ``remove_in_background``: the session's holds hundreds of test databases,
    whose removal took 6-9 s at the end of every run).

    As root, PostgreSQL runs as another user that must traverse every parent of its data
    directory. pytest resets ``/tmp/pytest-of-root`` to mode 0700 whenever any pytest session
    starts, which would lock that user out mid-run; so as root the data lives in a directory
    of its own under the system temp dir, with a symlink ``workdir/name`` pointing at it.
    """
    if os.geteuid() != 0:
        path = workdir / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=f"spine-{name}-"))
    link = workdir / name
    with contextlib.suppress(OSError):
        link.symlink_to(path, target_is_directory=True)
    try:
        yield path
    finally:
        if remove_in_background and shutil.which("rm"):
            subprocess.Popen(
                ["rm", "-rf", str(path)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _embedded(workdir: Path) -> Iterator[BackingServices]:
    with embedded_data_dir(workdir, remove_in_background=True) as data_dir:
        stack = EmbeddedStack(data_dir, SERVICES, start_timeout=60.0)
        with _running(stack) as services:
            yield services


@contextlib.contextmanager
def _running(stack: EmbeddedStack) -> Iterator[BackingServices]:
    def restart(name: str, kill: bool) -> None:
        stack.restart(name, kill=kill)

    with stack:
        urls = stack.start()
        assert urls.nats_url and urls.database_url and urls.redis_url and urls.falkordb_url
        try:
            yield BackingServices(
                backend="embedded",
                nats_url=urls.nats_url,
                database_url=urls.database_url,
                redis_url=urls.redis_url,
                neo4j_uri=None,
                falkordb_url=urls.falkordb_url,
                stack=stack,
                _kill=stack.kill,
                _restart=restart,
            )
        finally:
            # The data is thrown away: no clean shutdown needed. PostgreSQL's shutdown
            # checkpoint over the run's hundreds of databases outlasted the 10 s grace, then
            # was killed anyway (10 s at the end of every run).
            stack.stop(timeout=1.0)


# --- containers -------------------------------------------------------------------------------


def _require_docker() -> None:
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        raise BackendUnavailable(
            "--backend=containers needs a reachable Docker engine, and Docker does not answer "
            f"here ({exc}); run the tests with --backend=embedded"
        ) from exc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, probe: Callable[[], Any], timeout: float = CONTAINER_START_TIMEOUT) -> None:
    """Call ``probe`` until it returns without raising."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer within {timeout:.0f}s: {exc}") from exc
            time.sleep(0.5)


def _run_async(coro_factory: Callable[[], Any]) -> Any:
    # A fresh loop in a thread: session fixtures may be set up while the test loop runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_factory()).result()


def _nats_probe(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=2) as sock:
        line = sock.makefile("rb").readline()
    if b'"jetstream":true' not in line.replace(b" ", b""):
        raise ConnectionError(f"NATS answered without JetStream: {line[:200]!r}")


def _postgres_probe(dsn: str) -> None:
    import asyncpg

    async def check() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()

    _run_async(check)


def _redis_probe(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _neo4j_probe(uri: str) -> None:
    import neo4j

    with neo4j.GraphDatabase.driver(uri, auth=None) as driver, driver.session() as session:
        session.run("RETURN 1").consume()


@contextlib.contextmanager
def _containers() -> Iterator[BackingServices]:
    _require_docker()
    from testcontainers.core.container import DockerContainer

    # Host ports are fixed up front so a restarted container keeps its URL.
    nats_port = _free_port()
    nats = DockerContainer("nats:2.10", command="-js").with_bind_ports(4222, nats_port)
    postgres = (
        DockerContainer("pgvector/pgvector:pg16")
        .with_env("POSTGRES_PASSWORD", "postgres")
        .with_env("POSTGRES_DB", "spine")
        .with_bind_ports(5432, _free_port())
    )
    neo4j = DockerContainer("neo4j:5").with_env("NEO4J_AUTH", "none")
    neo4j = neo4j.with_bind_ports(7687, _free_port())
    redis = DockerContainer("redis:7").with_bind_ports(6379, _free_port())
    containers = {"nats": nats, "postgres": postgres, "graph": neo4j, "redis": redis}

    with contextlib.ExitStack() as started:
        for container in containers.values():
            started.enter_context(container)
        host = nats.get_container_host_ip()

        def port(container: DockerContainer, inner: int) -> int:
            return int(container.get_exposed_port(inner))

        urls = {
            "nats": f"nats://{host}:{port(nats, 4222)}",
            "postgres": f"postgresql://postgres:postgres@{host}:{port(postgres, 5432)}/spine",
            "graph": f"bolt://{host}:{port(neo4j, 7687)}",
            "redis": f"redis://{host}:{port(redis, 6379)}/0",
        }
        probes: dict[str, Callable[[], None]] = {
            "nats": lambda: _nats_probe(host, port(nats, 4222)),
            "postgres": lambda: _postgres_probe(urls["postgres"]),
            "graph": lambda: _neo4j_probe(urls["graph"]),
            "redis": lambda: _redis_probe(urls["redis"]),
        }
        for name, probe in probes.items():
            _wait(f"the {name} container", probe)

        def kill(name: str) -> None:
            containers[name].get_wrapped_container().kill()

        def restart(name: str, kill_first: bool) -> None:
            wrapped = containers[name].get_wrapped_container()
            wrapped.reload()
            if wrapped.status == "running":
                if kill_first:
                    wrapped.kill()
                else:
                    wrapped.stop(timeout=10)
            # Same container, same filesystem: NATS keeps its JetStream store.
            wrapped.start()
            _wait(f"the restarted {name} container", probes[name])

        yield BackingServices(
            backend="containers",
            nats_url=urls["nats"],
            database_url=urls["postgres"],
            redis_url=urls["redis"],
            neo4j_uri=urls["graph"],
            _kill=kill,
            _restart=restart,
        )
