"""State file, ports, logs and process identity for :mod:`spine.platform.embedded.stack`.

The state file (``<data>/run/stack.json``) outlives the process that wrote it: it lets a later
start reuse the same ports (so URLs stay stable) and lets ``spine status`` / ``spine down`` find
a detached stack. A pid alone is not an identity (pids are reused), so every record carries the
process's creation time as well. The URLs it keeps carry no credentials (they are in
``<data>/credentials.json``, see :mod:`spine.platform.embedded.credentials`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from spine.platform.embedded.credentials import without_userinfo
from spine.platform.settings import Settings

logger = logging.getLogger(__name__)

STATE_VERSION = 1
LOG_TAIL_LINES = 20
# psutil derives creation times from boot time and clock ticks; allow for rounding.
_CREATE_TIME_TOLERANCE = 1.0
# A recorded creation time above this is an epoch time (a state file of an older version);
# current records count seconds after boot, which no uptime reaches.
_EPOCH_RECORD = 1e9
# Lowest port probed when a port must stay below the kernel's ephemeral range.
_LOW_PORT = 20000


@dataclass(frozen=True)
class Endpoints:
    """Where the embedded servers answer; ``None`` for a service that was not started."""

    nats_url: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    neo4j_uri: str | None = None
    nats_monitor_url: str | None = None
    falkordb_url: str | None = None
    """FalkorDB's Redis-protocol URL, for ``GRAPH.RO_QUERY`` and other ``GRAPH.*`` commands."""
    local_model_url: str | None = None
    """The local model's OpenAI-compatible base URL (``.../v1``)."""


@dataclass
class ServerRecord:
    """One server process as recorded in the state file."""

    name: str
    ports: dict[str, int]
    log: Path
    pid: int | None = None
    create_time: float | None = None
    """When ``pid`` started, seconds after boot (see :func:`process_create_time`)."""
    started_at: str | None = None
    stop_signal: str = "SIGTERM"


@dataclass(frozen=True)
class ServerStatus:
    """Whether a server recorded in the state file is alive."""

    name: str
    pid: int | None
    alive: bool
    ports: dict[str, int]
    log_path: Path


@dataclass
class StackState:
    """The content of ``<data>/run/stack.json``."""

    data_dir: Path
    servers: dict[str, ServerRecord] = field(default_factory=dict)
    endpoints: Endpoints = field(default_factory=Endpoints)
    detached: bool = False
    owner_pid: int | None = None
    owner_create_time: float | None = None
    started_at: str | None = None


def now_iso() -> str:
    """Return the current UTC time as ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def state_path(data_dir: Path) -> Path:
    """Return the path of the state file for a data directory."""
    return data_dir / "run" / "stack.json"


def load_state(data_dir: Path) -> StackState | None:
    """Read the state file; ``None`` when there is none or it cannot be understood."""
    path = state_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable embedded stack state %s: %s", path, exc)
        return None
    try:
        return _state_from_json(raw, data_dir)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("ignoring malformed embedded stack state %s: %s", path, exc)
        return None


def save_state(state: StackState) -> None:
    """Write the state file atomically, so a reader never sees half of it."""
    path = state_path(state.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "version": STATE_VERSION,
        "data_dir": str(state.data_dir),
        "started_at": state.started_at,
        "detached": state.detached,
        "owner_pid": state.owner_pid,
        "owner_create_time": state.owner_create_time,
        "endpoints": {
            name: without_userinfo(url) if url and name in _CREDENTIAL_URLS else url
            for name, url in asdict(state.endpoints).items()
        },
        "servers": {
            name: {**asdict(record), "log": str(record.log)}
            for name, record in state.servers.items()
        },
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stack.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _state_from_json(raw: dict[str, Any], data_dir: Path) -> StackState:
    known = {f.name for f in fields(Endpoints)}
    endpoints = Endpoints(**{k: v for k, v in raw.get("endpoints", {}).items() if k in known})
    servers = {
        name: ServerRecord(
            name=name,
            ports={str(k): int(v) for k, v in item.get("ports", {}).items()},
            log=Path(item["log"]),
            pid=item.get("pid"),
            create_time=item.get("create_time"),
            started_at=item.get("started_at"),
            stop_signal=str(item.get("stop_signal", "SIGTERM")),
        )
        for name, item in raw.get("servers", {}).items()
    }
    return StackState(
        data_dir=data_dir,
        servers=servers,
        endpoints=endpoints,
        detached=bool(raw.get("detached", False)),
        owner_pid=raw.get("owner_pid"),
        owner_create_time=raw.get("owner_create_time"),
        started_at=raw.get("started_at"),
    )


def process_create_time(pid: int) -> float | None:
    """Return when a process started, in seconds after boot (``None``: no such process).

    Not an epoch time: psutil's is the boot time plus the start in clock ticks, and the boot
    time the kernel reports moves whenever the clock is stepped (NTP, a resumed VM), which once
    made a live server look gone to ``spine status`` and ``spine down``.
    """
    try:
        return _since_boot(psutil.Process(pid))
    except psutil.Error:
        return None


def _since_boot(proc: psutil.Process) -> float:
    return proc.create_time() - psutil.boot_time()


def find_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """Return the live process recorded as (pid, creation time), or ``None``.

    A zombie counts as gone; a process with the same pid but another creation time is a
    different process that reused the pid, and is never touched.
    """
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None:
            legacy = create_time > _EPOCH_RECORD
            started = proc.create_time() if legacy else _since_boot(proc)
            if abs(started - create_time) > _CREATE_TIME_TOLERANCE:
                return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def terminate_process(
    proc: psutil.Process, stop_signal: signal.Signals, timeout: float
) -> int | None:
    """Stop a process: ``stop_signal``, wait up to ``timeout``, then SIGKILL.

    Returns:
        The exit code when the process is our child (psutil reaps it), else ``None``.
    """
    try:
        proc.send_signal(stop_signal)
        return proc.wait(timeout)
    except psutil.TimeoutExpired:
        logger.warning(
            "pid %d ignored %s for %.0fs; killing it", proc.pid, stop_signal.name, timeout
        )
    except psutil.NoSuchProcess:
        return None
    try:
        proc.kill()
        return proc.wait(timeout)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        return None


def port_is_free(port: int) -> bool:
    """Tell whether a TCP port on 127.0.0.1 can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a port in TIME_WAIT is free for them too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int], *, highest: int | None = None) -> int:
    """Find a free TCP port on 127.0.0.1 that is not in ``taken``.

    Args:
        taken: Ports already handed out for this start.
        highest: The largest acceptable port. The kernel hands out ports from its ephemeral
            range (32768 and up on Linux), so with a lower limit we probe ports ourselves.
    """
    for _ in range(200):
        if highest is None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
        else:
            low = min(_LOW_PORT, highest)
            port = low + secrets.randbelow(highest - low + 1)
        if port not in taken and port_is_free(port):
            return port
    raise OSError("no free TCP port found on 127.0.0.1")


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log written after ``offset``."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            data = log.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_port_closed(port: int, timeout: float) -> None:
    """Wait until nothing listens on 127.0.0.1:``port`` (best effort)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not port_is_free(port):
        time.sleep(0.05)


def read_state(data_dir: Path) -> StackState | None:
    """Return what the state file of ``data_dir`` records, or ``None`` if there is none."""
    return load_state(Path(data_dir).resolve())


def stack_status(data_dir: Path) -> list[ServerStatus]:
    """Tell, per recorded server, whether it is alive (for ``spine status``)."""
    state = read_state(data_dir)
    if state is None:
        return []
    report = []
    for name, rec in state.servers.items():
        alive = find_process(rec.pid, rec.create_time) is not None
        report.append(ServerStatus(name, rec.pid if alive else None, alive, rec.ports, rec.log))
    return report


def stop_stack(data_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the servers recorded in the state file, e.g. a detached stack (``spine down``).

    Only processes whose pid and creation time both match the record are signalled, each
    with the signal its record names (SIGINT, PostgreSQL's fast shutdown, for postgres).

    Returns:
        The names of the servers that were running and are now stopped.
    """
    state = read_state(data_dir)
    if state is None:
        return []
    stopped = []
    for name in reversed(list(state.servers)):
        rec = state.servers[name]
        proc = find_process(rec.pid, rec.create_time)
        if proc is not None:
            terminate_process(proc, signal_named(rec.stop_signal), timeout)
            logger.info("embedded %s stopped (pid %d)", name, proc.pid)
            stopped.append(name)
        rec.pid = rec.create_time = None
    save_state(state)
    return stopped


def signal_named(name: str) -> signal.Signals:
    """Return the signal a record names (SIGTERM for a name it does not know)."""
    try:
        return signal.Signals[name]
    except KeyError:
        return signal.SIGTERM


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this (child) process when its parent dies.

    Run in ``preexec_fn`` (bind the arguments with :func:`functools.partial`), which CPython
    calls after switching to the ``user``/``group`` it was given: the kernel clears the
    setting on a change of credentials, so set later it holds for a server run as another user
    (PostgreSQL as root). The signal comes when the *thread* that spawned the child ends, so
    spawn from a thread that lives as long as the child should.

    Args:
        sig: The signal to receive (a server's clean stop signal).
        parent: The parent's pid: if it already died before this call, ``sig`` comes at once.
    """
    if _LIBC is None:
        return
    _LIBC.prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


# Loaded in the parent: a forked child should do as little as possible before exec.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform == "linux" else None


_URL_FIELDS = ("database_url", "nats_url", "redis_url", "neo4j_uri", "falkordb_url")
# The URLs whose credentials stay out of the state file (they are in credentials.json).
_CREDENTIAL_URLS = frozenset({"database_url", "nats_url"})


def apply_endpoints(settings: Settings, endpoints: Endpoints) -> Settings:
    """Return ``settings`` with each unset service URL filled from ``endpoints``."""
    update: dict[str, Any] = {
        name: getattr(endpoints, name)
        for name in _URL_FIELDS
        if getattr(settings, name) is None and getattr(endpoints, name) is not None
    }
    if settings.local_model.url is None and endpoints.local_model_url is not None:
        update["local_model"] = settings.local_model.model_copy(
            update={"url": endpoints.local_model_url}
        )
    return settings.model_copy(update=update) if update else settings
