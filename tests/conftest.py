"""Session fixtures: real backing servers, the fake model server, and a running platform.

``--backend=embedded`` (default) starts nats-server, PostgreSQL+pgvector and FalkorDB from their
pip packages; ``--backend=containers`` starts the production images with testcontainers where
Docker works. Model providers are always the fake model server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from spine.platform.api import create_app
from spine.platform.db import Database
from spine.platform.keys import KeyStore
from spine.platform.settings import Settings, load_settings
from spine.platform.wiring import Platform
from support.fake_models import FakeModelServer
from support.servers import backing_services


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=["embedded", "containers"],
        default="embedded",
        help="where backing servers come from",
    )


@pytest.fixture(scope="session")
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    backend = request.config.getoption("--backend")
    with backing_services(backend, tmp_path_factory.mktemp("servers")) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def fake_models() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def models(fake_models: FakeModelServer) -> Iterator[FakeModelServer]:
    """The fake model server, with this test's rules and records only."""
    fake_models.reset()
    yield fake_models
    fake_models.reset()


@pytest.fixture
def pg_url(services: Any) -> str:
    """A fresh PostgreSQL database for one test."""
    return create_database(services.database_url)


def create_database(server_url: str) -> str:
    """Create an empty database on the test server and return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(_asyncpg_dsn(server_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    # A fresh loop in a thread: fixtures may be set up while the test loop is running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind, for state-layer tests that must pass on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/genai.db"
    return create_database(request.getfixturevalue("services").database_url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database of each kind (see ``database_url``)."""
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


@pytest.fixture
async def clean_jetstream(services: Any) -> None:
    """Delete the platform's streams so no message of an earlier test is delivered."""
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    for stream in ("TASKS", "TASKS_DLQ", "OUTCOMES"):
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    await nc.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(
    services: Any, database_url: str, models: FakeModelServer, **env: Any
) -> Settings:
    """Settings for a test platform: real servers, the fake model server, short timers."""
    overrides: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": services.nats_url,
        "redis_url": services.redis_url,
        "neo4j_uri": services.neo4j_uri,
        "ollama_url": models.url,
        "default_provider": "ollama",
        "api": {"port": free_port(), "sweep_interval": 0.5, "key_cache_seconds": 0},
        "worker": {"ack_wait": 3, "max_attempts": 3, "backoff": [0.2, 0.5], "concurrency": 8},
        # Tests share one Redis: each gets its own response cache, never an earlier test's.
        "cache": {"prefix": f"spine:test:{uuid.uuid4().hex}:"},
    }
    for key, value in env.items():
        if isinstance(value, dict) and isinstance(overrides.get(key), dict):
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    return load_settings(_env_file=None, **overrides)


@dataclass
class RunningPlatform:
    """An API server and a worker running in the test's event loop."""

    settings: Settings
    url: str
    key: str
    tenant: str
    client: httpx.AsyncClient
    platform: Platform
    workers: list[Platform] = field(default_factory=list)

    async def new_key(self, tenant: str) -> str:
        issued = await self.platform.keys.create(tenant=tenant)
        return issued.secret

    async def wait_for(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll a task until it ends and return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            body = (await self.client.get(f"/v1/tasks/{task_id}")).json()
            if body["state"] in {"succeeded", "failed", "cancelled", "dead_lettered"}:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"task {task_id} still {body['state']} after {timeout}s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def run_platform(settings: Settings, *, workers: int = 1) -> AsyncIterator[RunningPlatform]:
    """Serve the API and run workers in this event loop until the block ends."""
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.api.port, log_config=None, lifespan="on"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    platform: Platform = app.state.platform
    await platform.bus.wait_connected(10)
    await platform.ensure_streams_when_connected()
    stop = asyncio.Event()
    worker_platforms = [Platform.build(settings, name=f"test-worker-{i}") for i in range(workers)]
    runs = []
    for wp in worker_platforms:
        await wp.start()
        runs.append(asyncio.create_task(wp.worker().run(stop)))
    issued = await KeyStore(platform.db).create(tenant="acme", role="admin")
    url = f"http://127.0.0.1:{settings.api.port}"
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {issued.secret}"}
    ) as client:
        try:
            yield RunningPlatform(
                settings=settings,
                url=url,
                key=issued.secret,
                tenant="acme",
                client=client,
                platform=platform,
                workers=worker_platforms,
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
            for wp in worker_platforms:
                await wp.close()
            server.should_exit = True
            await serving


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")
