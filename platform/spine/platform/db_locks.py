"""The named locks of :meth:`Database.exclusive <spine.platform.db.Database.exclusive>`: one
holder across processes, taken from a frozen holder, and the fence that keeps a holder that lost
its lock from writing.

PostgreSQL: a two-key session advisory lock on a connection of its own; SQLite: a file lock
beside the database. The caller translates driver errors.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spine.platform.errors import ServiceUnavailable

__all__ = ["HeldLock", "take_lock", "try_file_lock"]

logger = logging.getLogger(__name__)

# The first key of the two-key advisory locks :meth:`Database.exclusive` takes: apart from the
# one-key locks of migrations and per-tenant claims.
_LOCK_SPACE = 4242002
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, hashtext($2))"
# Writes fenced by :meth:`HeldLock.confirm` share a lock of this space in their transaction;
# a new holder takes it alone for a moment, so such a write is either done before it leads or
# sees that the lock has passed on. A fenced transaction left idle (a frozen writer) is ended
# by the server after 10 s.
_FENCE_SPACE = 4242004
_FENCE = "SELECT pg_advisory_lock($1, hashtext($2))"
_UNFENCE = "SELECT pg_advisory_unlock($1, hashtext($2))"
_FENCED_TIMEOUT = sa.text("SET LOCAL idle_in_transaction_session_timeout = '10s'")
_STILL_HELD = sa.text(
    "SELECT pg_advisory_xact_lock_shared(:fence, hashtext(:name)) AS fenced, EXISTS ("
    " SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
    " AND classid = CAST(:space AS oid) AND objid = CAST(hashtext(:name) AS oid)"
    " AND pid = :pid"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS held"
)


class HeldLock(asyncio.Event):
    """A lock :meth:`Database.exclusive` holds; set when it is lost.

    A holder frozen past ``take_over_after`` loses the lock while it cannot know; when it
    wakes, a write it makes in the moment before it notices would land beside the new
    holder's. :meth:`confirm` in that write's transaction refuses it instead.
    """

    def __init__(self, name: str, *, holder: int | None) -> None:
        super().__init__()
        self.name = name
        self._holder = holder  # the server process of the lock's session (None: SQLite)

    async def confirm(self, conn: AsyncConnection) -> None:
        """Make sure, inside ``conn``'s transaction, that the lock is still held here.

        Raises:
            ServiceUnavailable: The lock has passed on (this object is set too): the write
                must not be made.
        """
        if self._holder is None:  # a file lock: it cannot be taken from a live process
            return
        await conn.execute(_FENCED_TIMEOUT)
        row = (
            await conn.execute(
                _STILL_HELD,
                {
                    "fence": _FENCE_SPACE,
                    "space": _LOCK_SPACE,
                    "name": self.name,
                    "pid": self._holder,
                },
            )
        ).one()
        if not row.held:
            self.set()
            raise ServiceUnavailable(
                f"the lock {self.name!r} has passed to another process; this one stops writing"
            )


async def take_lock(conn: Any, name: str, *, take_over_after: float | None) -> bool:
    """Take the lock ``name`` on ``conn`` (asyncpg) if it is free, or from a holder silent for
    ``take_over_after`` seconds; once taken, wait for the fenced writes of the last holder."""
    held = bool(await conn.fetchval(_TRY_LOCK, _LOCK_SPACE, name))
    if not held and take_over_after is not None:
        held = await _take_from_a_silent_holder(conn, name, take_over_after)
    if held:
        await conn.execute(_FENCE, _FENCE_SPACE, name)
        await conn.execute(_UNFENCE, _FENCE_SPACE, name)
    return held


# The session holding one of :meth:`Database.exclusive`'s locks, when its connection has been
# idle (no ping) for longer than $3 seconds. pg_locks shows a two-key advisory lock's keys as
# classid and objid (objsubid 2); a session of the same role is visible with its state.
_SILENT_HOLDER = """
SELECT a.pid, extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS silent
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = $1::oid AND l.objid = hashtext($2)::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.state = 'idle' AND a.state_change < clock_timestamp() - make_interval(secs => $3)
"""


async def _take_from_a_silent_holder(conn: Any, name: str, silent_for: float) -> bool:
    """End the session of a holder of ``name`` that stopped pinging, then take the lock."""
    holder = await conn.fetchrow(_SILENT_HOLDER, _LOCK_SPACE, name, silent_for)
    if holder is None:
        return False
    import asyncpg

    try:
        ended = await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", holder["pid"])
    except asyncpg.InsufficientPrivilegeError:  # another role's session: it stays
        ended = False
    logger.warning(
        "the holder of the lock %r has not answered for %.0f s (a frozen process?): %s its "
        "database session",
        name,
        holder["silent"],
        "ended" if ended else "could not end",
    )
    return bool(ended) and bool(await conn.fetchval(_TRY_LOCK, _LOCK_SPACE, name))


def try_file_lock(path: Path) -> Any:
    """Open and lock ``path`` without waiting; None when another process holds it."""
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
