"""The database: engine, sessions, migrations and error translation.

SQLite (Tier 1) and PostgreSQL are both reached through SQLAlchemy's async engine; the seed's
URLs (``sqlite:///data/genai.db``, ``postgresql://user:pass@host/db``) are mapped to their async
drivers here and nowhere else.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from spine.platform.errors import ConfigurationError, ServiceUnavailable

__all__ = ["Database", "async_url"]

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str) -> URL:
    """Map a plain database URL to the async driver SQLAlchemy should use."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(
            f"not a database URL: {url!r}", field="GENAI_DATABASE_URL"
        ) from exc
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"unsupported database {backend!r}: use sqlite:/// or postgresql://",
            field="GENAI_DATABASE_URL",
        )
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[backend])
    return parsed


class Database:
    """An async engine plus the session factory and migrations that go with it."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # No pre-ping: it costs a round trip per checkout (~2 ms here). A connection that died
        # fails its first use with ServiceUnavailable, and SQLAlchemy then drops the pool.
        options: dict[str, Any] = {"pool_pre_ping": False}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """Open an ORM session; connection failures become :class:`ServiceUnavailable`."""
        with self._translated():
            async with self._sessions() as session:
                yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Run Core statements in one transaction, committed when the block ends.

        Hot paths use this instead of a session: the ORM's unit of work costs about 1 ms of
        CPU per transaction here, Core statements a tenth of that.
        """
        with self._translated():
            async with self.engine.begin() as conn:
                yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            if self.is_sqlite and "locked" in str(exc):
                raise ServiceUnavailable("the SQLite database is busy; try again") from exc
            raise ServiceUnavailable(f"the database is unreachable: {_short(exc)}") from exc
        except (OSError, ConnectionError) as exc:
            raise ServiceUnavailable(f"the database is unreachable: {exc}") from exc

    async def ping(self) -> None:
        """Run a trivial query, raising :class:`ServiceUnavailable` when it fails."""
        async with self.session() as session:
            await session.execute(sa.text("SELECT 1"))

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; safe to call from many processes."""
        if self.is_sqlite:
            await asyncio.to_thread(self._lock_sqlite_file)
        try:
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    # One migrator at a time across API and worker processes.
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                await conn.run_sync(_upgrade_to_head)
        except (OperationalError, InterfaceError, OSError) as exc:
            raise ServiceUnavailable(f"the database is unreachable: {_short(exc)}") from exc
        finally:
            self._unlock_sqlite_file()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    _lock_file: Any = None

    def _lock_sqlite_file(self) -> None:
        path = Path(self.url.database or "memory").with_suffix(".migrate-lock")
        self._lock_file = path.open("w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)

    def _unlock_sqlite_file(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def _upgrade_to_head(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _short(exc: DBAPIError | OSError) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).splitlines()[0][:200]
