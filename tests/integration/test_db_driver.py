"""``Database.driver``: asyncpg connections lent from asyncpg's own pool to the hot paths.

A lent connection must come back usable or not at all (a transaction left open is rolled back;
one whose statement was cancelled answers the next user at once), JSON columns read and write as
through SQLAlchemy, a pool with no free connection answers 503 instead of waiting forever, and
connections the server ended are replaced without a restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spine.platform import db as db_module
from spine.platform.db import Database
from spine.platform.errors import ServiceUnavailable
from support.ports import free_port

pytestmark = pytest.mark.integration

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
).filter(lambda value: "\\u0000" not in json.dumps(value))  # jsonb holds no NUL


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url, pool_size=1)  # at most 2 connections lent at once
    yield database
    await database.dispose()


async def _backend(database: Database) -> int:
    async with database.driver() as raw:
        pid: int = await raw.fetchval("SELECT pg_backend_pid()")
        return pid


async def test_a_transaction_left_open_is_rolled_back_before_the_connection_is_lent_again(
    pg: Database,
) -> None:
    async with pg.driver() as raw:
        await raw.execute("BEGIN")
        await raw.execute("CREATE TABLE left_open (x int)")
    for _ in range(3):  # whichever connection is lent next
        async with pg.driver() as raw:
            assert not raw.is_in_transaction()
            # Nobody committed the open transaction: its table never existed.
            assert await raw.fetchval("SELECT to_regclass('left_open')") is None


async def test_a_statement_cancelled_midway_leaves_a_usable_pool(pg: Database) -> None:
    async def slow() -> None:
        async with pg.driver() as raw:
            await raw.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        for _ in range(3):  # every connection the pool may lend answers at once
            async with pg.driver() as raw:
                assert await raw.fetchval("SELECT 41 + 1") == 42


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_JSON)
async def test_json_columns_take_json_text_and_give_values(pg: Database, value: object) -> None:
    async with pg.driver() as raw:
        text = json.dumps(value)
        assert await raw.fetchval("SELECT $1::jsonb", text) == json.loads(text)
        assert await raw.fetchval("SELECT $1::json", text) == json.loads(text)


async def test_no_free_connection_is_a_503_not_a_hang(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "_ACQUIRE_TIMEOUT", 0.3)
    async with pg.driver(), pg.driver():
        async with asyncio.timeout(5):
            with pytest.raises(ServiceUnavailable, match="no connection within"):
                async with pg.driver():
                    pass
    assert await _backend(pg) > 0  # both came back


async def test_connections_killed_by_the_server_are_replaced(pg: Database) -> None:
    first, second = await asyncio.gather(_backend(pg), _backend(pg))
    async with pg.engine.connect() as admin:  # SQLAlchemy's own pool, apart from the lent ones
        await admin.execute(
            sa.text("SELECT pg_terminate_backend(:a), pg_terminate_backend(:b)"),
            {"a": first, "b": second},
        )
    await asyncio.sleep(0.2)
    answered = 0
    for _ in range(4):
        try:
            async with pg.driver() as raw:
                answered += await raw.fetchval("SELECT 1")
        except ServiceUnavailable:
            pass  # a connection whose end was not seen yet fails once, and is closed
    assert answered >= 2
    assert await _backend(pg) not in (first, second)


async def test_an_unreachable_database_is_a_503() -> None:
    database = Database(f"postgresql://spine:x@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(ServiceUnavailable, match="unreachable"):
            async with database.driver():
                pass
    finally:
        await database.dispose()


async def test_a_disposed_database_lends_again(pg: Database) -> None:
    before = await _backend(pg)
    await pg.dispose()
    assert await _backend(pg) != before
