"""``Database.exclusive``: one holder of a named lock across processes, the others told at once.

PostgreSQL holds it as a session advisory lock on a connection of its own; SQLite as a file
lock. A holder whose connection the server ended is told it lost the lock; one that stopped
pinging (frozen) may have its session ended by the next one; its writes fenced by the lock are
refused from then on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from spine.platform import db as db_module
from spine.platform.db import Database
from spine.platform.errors import ServiceUnavailable
from spine.platform.learning.snapshots import Snapshot, SnapshotStore
from spine.platform.learning.weights import RoutingWeights
from spine.platform.schema import RoutingWeightsRow, utcnow
from support.databases import asyncpg_dsn, migrated_database

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


@pytest.fixture
async def on_postgres(pg_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two processes on one PostgreSQL database, as far as the lock can tell."""
    first, second = Database(pg_url), Database(pg_url)
    try:
        yield first, second
    finally:
        await first.dispose()
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


async def test_a_holder_whose_connection_the_server_ended_is_told(
    on_postgres: tuple[Database, Database],
) -> None:
    db, admin = on_postgres
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


async def test_a_holder_silent_past_the_limit_loses_the_lock_to_the_next_and_a_live_one_keeps_it(
    pg_url: str, on_postgres: tuple[Database, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen holder (SIGSTOP) keeps its socket, so the server keeps its lock: here a session
    # that took the lock and then never spoke again.
    monkeypatch.setattr(db_module, "_LOCK_CHECK_SECONDS", 0.1)
    frozen = await asyncpg.connect(asyncpg_dsn(pg_url))
    db, live = on_postgres
    try:
        assert await frozen.fetchval("SELECT pg_try_advisory_lock(4242002, hashtext('learner'))")
        async with db.exclusive("learner", take_over_after=30) as refused:
            assert refused is None  # silent, but not for long enough
        await asyncio.sleep(1.2)
        async with db.exclusive("learner", take_over_after=1.0) as taken:
            assert taken is not None
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await frozen.fetchval("SELECT 1")  # its session was ended
            # The new holder pings (every 0.1 s here): it stays the holder past the limit.
            await asyncio.sleep(1.5)
            async with live.exclusive("learner", take_over_after=1.0) as refused:
                assert refused is None
            assert not taken.is_set()
    finally:
        frozen.terminate()


async def test_a_write_fenced_by_a_lock_is_refused_once_the_lock_passed_on(
    on_postgres: tuple[Database, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen leader (here: one whose lock is never pinged) loses its lock to the next while
    # it cannot know. A write it began before is done before the next one leads; one it makes
    # after, when it wakes, is refused rather than stored beside its successor's.
    monkeypatch.setattr(db_module, "_LOCK_CHECK_SECONDS", 1000.0)
    frozen, successor = on_postgres
    state = RoutingWeights().to_dict()

    async def take_over() -> Snapshot | None:
        async with successor.exclusive("learner", take_over_after=0.5) as held:
            assert held is not None
            return await SnapshotStore(successor, fence=held).latest()

    async with frozen.exclusive("learner") as held:
        assert held is not None
        store = SnapshotStore(frozen, fence=held)
        await asyncio.sleep(0.7)  # silent past the successor's limit
        async with frozen.transaction() as conn:  # a fenced write under way
            await held.confirm(conn)
            taking = asyncio.create_task(take_over())
            await asyncio.sleep(1.0)
            assert not taking.done()  # the successor waits for it
            await conn.execute(
                sa.insert(RoutingWeightsRow).values(
                    version=1, state=state, events=1, created_at=utcnow()
                )
            )
        seen = await asyncio.wait_for(taking, 10)
        assert seen is not None and seen.version == 1  # it leads from that write on

        with pytest.raises(ServiceUnavailable, match="passed to another process"):
            await store.save(version=2, state=state, events=2, applied=["late"])
        assert held.is_set()
    latest = await SnapshotStore(successor).latest()
    assert latest is not None and latest.version == 1
    assert await SnapshotStore(successor).applied(["late"]) == set()
