"""``Database.exclusive``: one holder of a named lock across processes, the others told at once.

PostgreSQL holds it as a session advisory lock on a connection of its own; SQLite as a file
lock. A holder whose connection the server ended is told it lost the lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spine.platform.db import Database
from support.databases import migrated_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def two(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str
) -> AsyncIterator[tuple[Database, Database]]:
    # Two Database objects on one database: two processes as far as the lock can tell.
    async with migrated_database(request.param, tmp_path, pg_url) as first:
        second = Database(first.url.render_as_string(hide_password=False))
        try:
            yield first, second
        finally:
            await second.dispose()


async def test_one_holder_at_a_time_and_the_next_takes_it_when_it_is_released(
    two: tuple[Database, Database],
) -> None:
    first, second = two
    async with first.exclusive("learner") as held:
        assert held is not None and not held.is_set()
        async with second.exclusive("learner") as refused:
            assert refused is None
        async with second.exclusive("another lock") as other:  # names are apart
            assert other is not None
    async with second.exclusive("learner") as taken:
        assert taken is not None


async def test_a_holder_whose_connection_the_server_ended_is_told(pg_url: str) -> None:
    db, admin = Database(pg_url), Database(pg_url)
    try:
        async with db.exclusive("learner") as held:
            assert held is not None
            async with admin.driver() as conn:
                ended = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND classid = 4242002 AND objsubid = 2"
                )
            assert ended >= 1
            await asyncio.wait_for(held.wait(), 10)
        async with admin.exclusive("learner") as taken:  # the server released it
            assert taken is not None
    finally:
        await db.dispose()
        await admin.dispose()
