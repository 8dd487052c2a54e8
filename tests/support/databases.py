"""Fresh PostgreSQL databases on the session's test server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from spine.platform.db import Database


def create_database(server_url: str) -> str:
    """Create an empty database on the test server and return its URL.

    Args:
        server_url: SQLAlchemy URL of any database on the server (``postgresql+asyncpg://``).

    Returns:
        The URL of the new database, on the same server with the same credentials.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    # A fresh loop in a thread: fixtures may be set up while the test loop is running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def asyncpg_dsn(url: str) -> str:
    """Turn a SQLAlchemy asyncpg URL into the DSN that asyncpg itself accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.asynccontextmanager
async def migrated_database(backend: str, folder: Path, pg_url: str) -> AsyncIterator[Database]:
    """A fresh database at the newest schema: a SQLite file in ``folder``, or a new PostgreSQL
    database on the test server (``backend`` ``sqlite`` or ``postgresql``)."""
    url = f"sqlite:///{folder}/genai.db" if backend == "sqlite" else create_database(pg_url)
    db = Database(url)
    try:
        await db.migrate()
        yield db
    finally:
        await db.dispose()
