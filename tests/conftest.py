"""Shared fixtures: real backing servers, the fake model server, fresh databases.

A running platform is built by ``support.live_platform.running_platform``; helpers live in
``support/`` too, so no test module imports this file.

``--backend=embedded`` (default) starts nats-server, PostgreSQL+pgvector and FalkorDB from their
pip packages; ``--backend=containers`` starts the production images with testcontainers where
Docker works. Model providers are always the fake model server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

# Before anything imports LiteLLM: it would fetch the model cost map from the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from spine.platform.db import Database
from support.databases import create_database
from support.fake_models import FakeModelServer
from support.servers import BackingServices, backing_services


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
) -> Iterator[BackingServices]:
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
def pg_url(services: BackingServices) -> str:
    """A fresh PostgreSQL database, at the newest schema, for one test."""
    return create_database(services.database_url, migrated=True)


@pytest.fixture(scope="module")
def module_pg_url(services: BackingServices) -> str:
    """A fresh PostgreSQL database, at the newest schema, for the tests of one module."""
    return create_database(services.database_url, migrated=True)


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
async def clean_jetstream(services: BackingServices) -> None:
    """Delete the platform's streams so no message of an earlier test is delivered."""
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    for stream in ("TASKS", "TASKS_DLQ", "OUTCOMES"):
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    await nc.close()
