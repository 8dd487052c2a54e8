"""Fresh PostgreSQL databases on the session's test server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from spine.platform.db import Database


def create_database(server_url: str, *, migrated: bool = False) -> str:
    """Create a database on the test server and return its URL.

    Args:
        server_url: SQLAlchemy URL of any database on the server (``postgresql+asyncpg://``).
        migrated: Copy a database already at the newest schema instead of an empty one (made
            once per server and session; the copy takes ~0.05 s where migrating takes ~0.17 s).

    Returns:
        The URL of the new database, on the same server with the same credentials.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    template = _migrated_template(server_url) if migrated else None

    async def create() -> None:
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            copy = f' TEMPLATE "{template}"' if template else ""
            await admin.execute(f'CREATE DATABASE "{name}"{copy}')
        finally:
            await admin.close()

    _in_own_loop(create)
    return _url_of(server_url, name)


_templates: dict[str, str] = {}
_templates_lock = threading.Lock()


def _migrated_template(server_url: str) -> str:
    """The name of the server's database at the newest schema, which copies start from."""
    with _templates_lock:
        if server_url not in _templates:
            url = create_database(server_url)

            async def migrate() -> None:
                db = Database(url)
                try:
                    await db.migrate()
                finally:
                    await db.dispose()  # a template with a connection open cannot be copied

            _in_own_loop(migrate)
            _templates[server_url] = url.rpartition("/")[2]
        return _templates[server_url]


def _in_own_loop(job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # A fresh loop in a thread: fixtures may be set up while the test loop is running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, job()).result()


def _url_of(server_url: str, name: str) -> str:
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
