"""Phase 4, call costs: worker database calls as shipped (SQLAlchemy ORM) and through asyncpg."""

from __future__ import annotations

from typing import Any

from _harness import pg_dsn
from _meter import timed_calls


async def db_call_costs(database_url: str, task_id: str, calls: int = 300) -> dict[str, Any]:
    """One worker-side database call, as shipped and leaner, run from the bench process.

    ``append_event`` is a whole transaction (lock the task row, bump its event counter, insert
    the event); ``cancel_requested`` is the one-column read before each agent step. They are
    repeated on an ended task of the latency phase, which nobody follows any more.
    """
    import asyncpg
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from spine.platform.db import Database
    from spine.platform.tasks import TaskStore

    out: dict[str, Any] = {}
    shipped = Database(database_url)
    # The same engine without pool_pre_ping (which costs one extra round trip per session).
    no_ping = Database(database_url)
    no_ping.engine = create_async_engine(no_ping.url, pool_size=10, max_overflow=10)
    no_ping._sessions = async_sessionmaker(no_ping.engine, expire_on_commit=False)
    out["pool_pre_ping_as_shipped"] = bool(getattr(shipped.engine.pool, "_pre_ping", None))
    conn = await asyncpg.connect(pg_dsn(database_url))
    try:
        for name, db in (("orm_as_shipped", shipped), ("orm_without_pool_pre_ping", no_ping)):
            store = TaskStore(db)

            async def append(store: TaskStore = store) -> None:
                await store.append_event(task_id, "bench", {"n": 1})

            async def read(store: TaskStore = store) -> None:
                await store.cancel_requested(task_id)

            out[f"append_event_{name}"] = await timed_calls(append, calls)
            out[f"cancel_requested_{name}"] = await timed_calls(read, calls)

        async def append_raw() -> None:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT tenant, event_seq FROM tasks WHERE id = $1 FOR UPDATE", task_id
                )
                await conn.execute(
                    "UPDATE tasks SET event_seq = $2, updated_at = now() WHERE id = $1",
                    task_id,
                    row["event_seq"] + 1,
                )
                await conn.execute(
                    "INSERT INTO task_events (task_id, tenant, seq, type, data, created_at) "
                    "VALUES ($1, $2, $3, 'bench', $4::jsonb, now())",
                    task_id,
                    row["tenant"],
                    row["event_seq"] + 1,
                    '{"n": 1}',
                )

        async def append_one_statement() -> None:
            await conn.execute(
                "WITH t AS (UPDATE tasks SET event_seq = event_seq + 1, updated_at = now() "
                "WHERE id = $1 RETURNING id, tenant, event_seq) "
                "INSERT INTO task_events (task_id, tenant, seq, type, data, created_at) "
                "SELECT id, tenant, event_seq, 'bench', $2::jsonb, now() FROM t",
                task_id,
                '{"n": 1}',
            )

        async def read_raw() -> None:
            await conn.fetchval("SELECT cancel_requested FROM tasks WHERE id = $1", task_id)

        out["append_event_asyncpg_same_3_statements"] = await timed_calls(append_raw, calls)
        out["append_event_asyncpg_one_statement"] = await timed_calls(append_one_statement, calls)
        out["cancel_requested_asyncpg"] = await timed_calls(read_raw, calls)
    finally:
        await conn.close()
        await shipped.dispose()
        await no_ping.dispose()
    return out
