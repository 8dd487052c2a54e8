"""What ``spine up`` gives its children: the database prepared by a one-shot child, lean malloc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from spine.platform.app import launcher
from spine.platform.embedded.stack import Endpoints
from spine.platform.errors import ServiceUnavailable
from spine.platform.settings import Settings, load_settings
from support.imports import loaded_by


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(_env_file=None, data_dir=tmp_path / "data", **overrides)


def test_a_database_that_cannot_be_prepared_is_reported_without_its_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/spine"
    with pytest.raises(ServiceUnavailable) as caught:
        launcher._prepare_database_in_child(_settings(tmp_path, database_url=url))
    assert caught.value.message.startswith("preparing the database failed: ")
    assert "s3cret-pw" not in caught.value.message
    assert caught.value.details["service"] == "postgres"


def test_every_python_child_gets_two_malloc_arenas_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    for role in ("api", "worker", "learner"):
        env = launcher._child_env(_settings(tmp_path), Endpoints(), role=role)
        assert env["MALLOC_ARENA_MAX"] == "2", role
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert (
        launcher._child_env(_settings(tmp_path), Endpoints(), role="api")["MALLOC_ARENA_MAX"] == "4"
    )


def test_the_spine_command_loads_no_database_layer() -> None:
    # `spine up` stays resident beside the stack it supervises: SQLAlchemy and pgvector, which
    # the processes it starts need, cost it ~20 MiB of its own.
    cli = ["spine.platform.app.cli", "spine.platform.app.launcher"]
    assert loaded_by(cli, {"sqlalchemy", "pgvector", "asyncpg"}) == []
