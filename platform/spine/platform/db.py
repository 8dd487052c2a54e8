"""The database: engine, sessions, migrations and error translation.

SQLite (Tier 1) and PostgreSQL are both reached through SQLAlchemy's async engine; the seed's
URLs (``sqlite:///data/genai.db``, ``postgresql://user:pass@host/db``) are mapped to their async
drivers here and nowhere else.

Errors are translated where sessions and transactions open (:meth:`Database.session`,
:meth:`Database.transaction`): a database that cannot answer now — unreachable, refusing
connections while it starts or shuts down (SQLSTATE classes 08, 53, 57P, 58), out of pooled
connections, read-only (25006, a standby), or asking to retry (40001, 40P01, 55P03, 57014) — is
:class:`ServiceUnavailable`; a value it refuses (class 22, or a parameter the driver cannot
encode) is :class:`BadRequest`, a last line behind :mod:`spine.platform.inputs`. Neither
message quotes a value, and the engine hides SQL parameters from its own errors: they may hold
a user's prompt, and these messages reach the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from spine.platform.db_locks import HeldLock, take_lock, try_file_lock
from spine.platform.errors import BadRequest, ConfigurationError, ServiceUnavailable, SpineError

__all__ = ["Database", "HeldLock", "async_url", "newest_migration"]

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# SQLSTATE classes and codes of a server that cannot answer now, though it may soon (25006:
# a read-only transaction, as on a standby the platform was failed over to).
_UNAVAILABLE_CLASSES = ("08", "53", "57P", "58")
_RETRY_CODES = frozenset({"25006", "40001", "40P01", "55P03", "57014"})
_DATA_CLASS = "22"
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

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 30.0) -> None:
        self.url = async_url(url)
        # Each PostgreSQL statement may take ``timeout`` seconds (asyncpg's command_timeout, on
        # the client: a frozen server enforces nothing), then fails as ServiceUnavailable.
        self._timeout = timeout
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # No pre-ping: it costs a round trip per checkout (~2 ms here). A connection that died
        # fails its first use with ServiceUnavailable, and SQLAlchemy then drops the pool.
        # Parameters stay out of error messages: they may be prompts, and errors are logged.
        options: dict[str, Any] = {"pool_pre_ping": False, "hide_parameters": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        else:
            options["connect_args"] = {"command_timeout": timeout, "timeout": min(timeout, 10)}
            # Up to twice pool_size connections, as before, but every one kept once opened: an
            # overflow connection was closed at its return and opened again at the next burst
            # (an asyncpg connect, its type introspection and re-prepared statements, and a new
            # PostgreSQL backend: about a third of the API's database CPU in a burst of tasks).
            options.update(pool_size=2 * pool_size, max_overflow=0)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._pool_size = 2 * pool_size
        self._driver_pool: Any = None  # asyncpg's pool for driver(), opened at its first use
        self._driver_pool_lock = asyncio.Lock()

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

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """Lend a pooled asyncpg connection (its prepared statements) for a hot path.

        The hot paths of tasks, metering and search run their few fixed statements through it:
        SQLAlchemy's statement building and execution cost ~1 ms of CPU per transaction here,
        asyncpg a fifth of that. The connections come from asyncpg's own pool, not SQLAlchemy's:
        lending one of SQLAlchemy's (a checkout through its greenlets) cost ~0.1 ms of CPU more
        per use, two or three uses per task. A single statement commits on its own (no
        BEGIN/COMMIT round trips); ``async with conn.transaction()`` groups several. JSON columns
        take JSON text and give decoded values, as through SQLAlchemy. Errors are translated as
        :meth:`transaction` translates them. A connection comes back rolled back if a
        transaction was left open (its user cancelled mid-statement), or is dropped if closed.

        Raises:
            ConfigurationError: The database is SQLite.
            ServiceUnavailable: No connection was free within ``_ACQUIRE_TIMEOUT`` seconds, or
                the database cannot answer.
        """
        if self.is_sqlite:
            raise ConfigurationError("asyncpg connections exist on PostgreSQL only")
        pool = self._driver_pool or await self._open_driver_pool()
        with _driver_translated():
            try:
                raw = await pool.acquire(timeout=_ACQUIRE_TIMEOUT)
            except TimeoutError as exc:
                raise ServiceUnavailable(
                    f"the database is busy: no connection within {_ACQUIRE_TIMEOUT:g} s"
                ) from exc
            try:
                yield raw
            finally:
                await pool.release(raw)

    async def _open_driver_pool(self) -> Any:
        async with self._driver_pool_lock:
            if self._driver_pool is None:
                import asyncpg

                options = self._asyncpg_options()
                # No connection is opened here (min_size 0): each is opened at first need,
                # kept while used, and closed after 5 idle minutes (asyncpg's default).
                self._driver_pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self._pool_size,
                    command_timeout=self._timeout,
                    timeout=min(self._timeout, 10),
                    init=_json_codecs,
                    reset=_keep_session,
                    **options,
                )
        return self._driver_pool

    def _asyncpg_options(self) -> dict[str, Any]:
        """What ``asyncpg.connect`` takes to reach this database (host, user, password, ...)."""
        _, options = self.engine.dialect.create_connect_args(self.url)
        for only_sqlalchemy in _SQLALCHEMY_CONNECT_OPTIONS:
            options.pop(only_sqlalchemy, None)
        return dict(options)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            translated = self._translation(exc)
            if translated is None:
                raise
            raise translated from exc
        except PoolTimeout as exc:
            raise ServiceUnavailable("the database is busy: no connection is free") from exc
        except (OSError, ConnectionError) as exc:
            raise ServiceUnavailable(f"the database is unreachable: {_short(exc)}") from exc

    def _translation(self, exc: DBAPIError) -> SpineError | None:
        """Return what a database error means to the caller; None: let it be (a constraint)."""
        code = _sqlstate(exc)
        if self.is_sqlite and isinstance(exc, OperationalError) and "locked" in str(exc.orig):
            return ServiceUnavailable("the SQLite database is busy; try again")
        if (code is not None and code.startswith(_DATA_CLASS)) or _refused_parameter(exc):
            return BadRequest(f"a value cannot be stored in the database ({_short(exc)})")
        if code is not None and (code.startswith(_UNAVAILABLE_CLASSES) or code in _RETRY_CODES):
            state = "unreachable" if code.startswith("08") else "unavailable"
            return ServiceUnavailable(f"the database is {state}: {_short(exc)}")
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            return ServiceUnavailable(f"the database is unreachable: {_short(exc)}")
        return None

    async def ping(self, timeout: float | None = None) -> None:
        """Run a trivial query, raising :class:`ServiceUnavailable` when it fails or takes over
        ``timeout`` seconds (default: the statement timeout)."""
        try:
            async with asyncio.timeout(timeout):
                async with self.session() as session:
                    await session.execute(sa.text("SELECT 1"))
        except TimeoutError as exc:
            waited = timeout if timeout is not None else self._timeout
            raise ServiceUnavailable(f"the database did not answer within {waited:g} s") from exc

    @asynccontextmanager
    async def exclusive(
        self, name: str, *, take_over_after: float | None = None
    ) -> AsyncIterator[HeldLock | None]:
        """Hold the lock ``name`` for every process on this database while the block runs, or
        yield ``None`` at once when another process holds it.

        The :class:`HeldLock` yielded is set when the lock is lost while held (its connection
        died or stopped answering): the block should then stop what the lock guards, and its
        writes can be fenced with :meth:`HeldLock.confirm`. PostgreSQL: a
        session advisory lock on a connection of its own, which the server releases when the
        holder ends, SIGKILL included; SQLite: a file lock beside the database (the kernel's).

        A holder asks its connection whether it answers every 2 s. With ``take_over_after``, a
        holder whose connection has been silent that many seconds (a frozen process: SIGSTOP,
        a hung event loop; its socket stays open, so the server keeps its lock) has its session
        ended by the server, and the lock is taken (PostgreSQL only). When it wakes, its
        connection is gone and it is told it lost the lock.

        Raises:
            ServiceUnavailable: The database cannot answer.
        """
        if self.is_sqlite:
            path = Path(self.url.database or "memory").with_suffix(f".{name}-lock")
            handle = await asyncio.to_thread(try_file_lock, path)
            if handle is None:
                yield None
                return
            try:
                yield HeldLock(name, holder=None)
            finally:
                handle.close()
            return
        import asyncpg

        options = self._asyncpg_options()
        with _driver_translated():
            conn = await asyncpg.connect(
                timeout=min(self._timeout, 10), command_timeout=self._timeout, **options
            )
        try:
            with _driver_translated():
                held = await take_lock(conn, name, take_over_after=take_over_after)
            if not held:
                yield None
                return
            lost = HeldLock(name, holder=conn.get_server_pid())
            conn.add_termination_listener(lambda _conn: lost.set())
            watching = asyncio.create_task(_watch_lock(conn, lost), name=f"lock-{name}")
            try:
                yield lost
            finally:
                watching.cancel()
        finally:
            with contextlib.suppress(Exception):  # closing the session releases the lock
                await conn.close(timeout=5)
            if not conn.is_closed():
                conn.terminate()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; safe to call from many processes."""
        if self.is_sqlite:
            await asyncio.to_thread(self._lock_sqlite_file)
        # Its own engine, without the statement timeout: building an index may take minutes.
        engine = (
            self.engine if self.is_sqlite else create_async_engine(self.url, poolclass=NullPool)
        )
        try:
            async with engine.begin() as conn:
                if await conn.run_sync(_at_newest):
                    return  # the usual start: nothing to do, and Alembic is never imported
                if not self.is_sqlite:
                    # One migrator at a time across API and worker processes.
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                await conn.run_sync(_upgrade_to_head)
        except DBAPIError as exc:
            translated = self._translation(exc)
            if isinstance(translated, ServiceUnavailable):
                raise translated from exc
            raise
        except OSError as exc:
            raise ServiceUnavailable(f"the database is unreachable: {_short(exc)}") from exc
        finally:
            if engine is not self.engine:
                await engine.dispose()
            self._unlock_sqlite_file()

    async def dispose(self) -> None:
        """Close every pooled connection (the database may be used again: pools reopen)."""
        pool, self._driver_pool = self._driver_pool, None
        try:
            if pool is not None:
                await pool.close()
        finally:
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


def _asyncpg_errors() -> tuple[type[BaseException], ...]:
    try:
        import asyncpg
    except ImportError:  # a SQLite-only install
        return (OSError,)
    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


_ASYNCPG_ERRORS = _asyncpg_errors()
# How long a hot path waits for a free connection, as SQLAlchemy's pool waits (pool_timeout).
_ACQUIRE_TIMEOUT = 30.0
# Options of SQLAlchemy's URL that its asyncpg adapter takes and asyncpg.connect does not.
_SQLALCHEMY_CONNECT_OPTIONS = (
    "async_creator_fn",
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
)


# How often a held lock's connection is asked whether it still answers, and for how long.
_LOCK_CHECK_SECONDS = 2.0
_LOCK_CHECK_TIMEOUT = 5.0


async def _watch_lock(conn: Any, lost: asyncio.Event) -> None:
    """Set ``lost`` when the lock's connection stops answering (a dead peer may go unnoticed
    by the socket for minutes; the server may meanwhile have given the lock to another)."""
    while not lost.is_set():
        await asyncio.sleep(_LOCK_CHECK_SECONDS)
        try:
            await conn.fetchval("SELECT 1", timeout=_LOCK_CHECK_TIMEOUT)
        except Exception as exc:  # any failure: the lock can no longer be counted on
            logger.warning("the database lock's connection failed: %s", _short(exc))
            lost.set()


async def _json_codecs(conn: Any) -> None:
    """Give JSON columns of lent connections the codecs SQLAlchemy gives its own: JSON text
    in, decoded values out."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_same_text, decoder=json.loads, schema="pg_catalog", format="text"
        )


def _same_text(text: str) -> str:
    return text


async def _keep_session(conn: Any) -> None:
    """Stand in for asyncpg's reset of a returned connection (``RESET ALL``, ``UNLISTEN *``,
    ``CLOSE ALL``, advisory unlocks: a round trip per use, which doubled a lend's time). No
    hot path changes its session; asyncpg rolls back a transaction left open before this."""


@contextmanager
def _driver_translated() -> Iterator[None]:
    try:
        yield
    except _ASYNCPG_ERRORS as exc:
        translated = _driver_translation(exc)
        if translated is None:
            raise
        raise translated from exc


def _driver_translation(exc: BaseException) -> SpineError | None:
    """Say what an error of a lent asyncpg connection means (see :meth:`Database._translation`).

    None: let it be (a constraint, which the statement's caller decides on).
    """
    code = getattr(exc, "sqlstate", None)
    if isinstance(exc, ValueError | UnicodeError) or (code or "").startswith(_DATA_CLASS):
        return BadRequest(f"a value cannot be stored in the database ({_short(exc)})")
    if isinstance(code, str) and (code.startswith(_UNAVAILABLE_CLASSES) or code in _RETRY_CODES):
        state = "unreachable" if code.startswith("08") else "unavailable"
        return ServiceUnavailable(f"the database is {state}: {_short(exc)}")
    if code is None:  # the connection failed, not a statement
        return ServiceUnavailable(f"the database is unreachable: {_short(exc)}")
    return None


def newest_migration() -> str:
    """The revision of the newest migration, read from the file names alone.

    The history is linear and each file's name begins with its revision, numbered in order
    (``0013_budget_holds.py`` is revision ``0013``); a test holds this to Alembic's own head.
    """
    return max(
        path.name.partition("_")[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py")
    )


def _at_newest(connection: sa.Connection) -> bool:
    """Whether the schema is at the newest migration: read without Alembic, which with Mako
    and Pygments under it is ~11 MiB that each API, worker and learner process kept for good."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return False
    found = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
    return list(found) == [newest_migration()]


def _upgrade_to_head(connection: sa.Connection) -> None:
    # Alembic (and Mako under it) is imported here: only a process that migrates needs it.
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(config, "head")
    after = MigrationContext.configure(connection).get_current_revision()
    # Alembic's own INFO lines are silenced by the entry points (spine.platform.logs): this is
    # the one line a schema change gets.
    if after != before:
        logger.info("migrated the database schema from %s to %s", before or "empty", after)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """Yield the error, the driver's error it wraps, and what that was raised from."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__


def _sqlstate(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None


def _refused_parameter(exc: DBAPIError) -> bool:
    # asyncpg refuses a parameter it cannot encode (an int over its column's width, a string
    # UTF-8 cannot hold) with a ValueError of its own, which SQLAlchemy wraps as an
    # InterfaceError; it is the value that is wrong, not the connection.
    return any(
        isinstance(cause, ValueError | UnicodeError) and not isinstance(cause, ConnectionError)
        for cause in list(_causes(exc))[1:]
    )


def _short(exc: BaseException) -> str:
    """Name an error in a few words that quote no value: its kind, SQLSTATE, or errno text.

    A driver's message may quote the parameter it refused (``invalid input for query argument
    $1: '<the prompt>'``), so only the messages of connection failures are kept.
    """
    causes = list(_causes(exc))
    original = causes[-1] if len(causes) > 1 else exc
    code = _sqlstate(exc)
    kind = type(original).__name__
    sqlite = type(original).__module__ == "sqlite3"  # its messages name no value
    if sqlite or isinstance(original, OSError) or (code or "").startswith(("08", "57P")):
        text = str(original).splitlines()[0][:200] if str(original) else kind
        return f"{text} [{code}]" if code else text
    return f"{kind} [{code}]" if code else kind
