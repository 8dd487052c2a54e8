"""Keep the children of ``spine up`` running: restart what dies, with backoff; stop in order.

One loop on the calling thread (the main thread of ``spine up``: a child's parent-death signal
is tied to the thread that spawned it), every ``interval`` seconds:

1. Each running child is polled. One that exited is logged with the reason (exit code or
   signal, and the end of a server's log) and its restart is due after a backoff that doubles
   with each exit in a row (``backoff_initial`` ... ``backoff_max``); a child that stayed up
   for ``crash_loop_window`` starts again from ``backoff_initial``.
2. A due restart runs: a server starts on the same ports with the same data and is waited for
   (clients reconnect: nats-py and the database pool do); a process is spawned again. A
   restart that fails counts as one more exit.
3. A child that exited ``crash_loop_restarts`` times within ``crash_loop_window`` seconds is
   *crash-looping*: it is still restarted (at the longest backoff), and it is reported as such
   until it has stayed up for a whole window.
4. The view of every child (state, pid, restarts, last exit) is written to
   ``<data>/run/supervisor.json`` when it changes: ``spine status`` shows it, the API's
   ``/readyz`` reports it (:class:`SupervisionReader`), and the next ``spine up`` finds the
   children of one that was killed (:func:`stop_leftover_children`).

:meth:`Supervisor.stop` stops children by their order (workers, then the API, then the servers,
last started first), each with its stop signal and a timeout before SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from spine.platform.embedded.children import ChildKind, Supervised
from spine.platform.embedded.state import (
    find_process,
    now_iso,
    process_create_time,
    signal_named,
    terminate_process,
)
from spine.platform.embedded.watchdog import Watchdog
from spine.platform.errors import ConfigurationError, SpineError

__all__ = [
    "ChildRecord",
    "RestartPolicy",
    "SupervisionReader",
    "Supervisor",
    "SupervisorState",
    "describe_exit",
    "load_supervisor_state",
    "stop_leftover_children",
    "supervisor_state_path",
]

logger = logging.getLogger(__name__)

ChildState = Literal["running", "restarting", "stopped"]
_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """When a child that exited is started again, and when it counts as crash-looping."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    crash_loop_restarts: int = 5
    crash_loop_window: float = 60.0

    def delay(self, exits_in_a_row: int) -> float:
        """Seconds before the restart after the n-th exit in a row (1 is the first)."""
        return float(min(self.backoff_initial * 2 ** max(exits_in_a_row - 1, 0), self.backoff_max))


@dataclass(slots=True, kw_only=True)
class ChildRecord:
    """The supervisor's view of one child, as the state file keeps it."""

    name: str
    kind: ChildKind
    state: ChildState = "running"
    pid: int | None = None
    create_time: float | None = None
    stop_signal: str = "SIGTERM"
    order: int = 0
    restarts: int = 0
    crash_looping: bool = False
    last_exit: str | None = None
    last_exit_at: str | None = None
    since: str | None = None

    @property
    def healthy(self) -> bool:
        """Running, and not crash-looping."""
        return self.state == "running" and not self.crash_looping

    def summary(self) -> str:
        """One line for ``spine status`` and ``/readyz``."""
        text = "crash-looping, " + self.state if self.crash_looping else self.state
        if self.last_exit and not self.healthy:
            text += f" (last exit: {self.last_exit})"
        return text


@dataclass(slots=True, kw_only=True)
class SupervisorState:
    """The content of ``<data>/run/supervisor.json``."""

    owner_pid: int
    owner_create_time: float | None
    started_at: str
    children: dict[str, ChildRecord] = field(default_factory=dict)
    stopping: bool = False

    def owner_alive(self) -> bool:
        """Whether the ``spine up`` that wrote this still runs."""
        return find_process(self.owner_pid, self.owner_create_time) is not None


def supervisor_state_path(data_dir: Path) -> Path:
    """Return where the supervisor of ``data_dir`` keeps its view of its children."""
    return data_dir / "run" / "supervisor.json"


def load_supervisor_state(data_dir: Path) -> SupervisorState | None:
    """Read the supervisor's state file; ``None`` if there is none or it is unreadable."""
    return _read(supervisor_state_path(data_dir))


def describe_exit(code: int) -> str:
    """Say how a process ended from its :mod:`subprocess` return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass(slots=True)
class _Tracked:
    child: Supervised
    record: ChildRecord
    exits: list[float] = field(default_factory=list)
    in_a_row: int = 0
    started: float = 0.0
    due: float = 0.0
    down_since: float = 0.0


class Supervisor:
    """Restart the children that die; write their view; stop them in order."""

    def __init__(
        self,
        data_dir: Path,
        *,
        policy: RestartPolicy | None = None,
        watchdog: Watchdog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Supervise nothing yet; :meth:`add` children.

        Args:
            data_dir: Where the state file goes (``run/supervisor.json``).
            policy: Backoff and crash-loop limits.
            watchdog: Told about every (re)started child, so it dies with us.
            clock: Monotonic seconds (a test may pass its own).
        """
        self.data_dir = data_dir
        self.policy = policy or RestartPolicy()
        self.watchdog = watchdog
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._state = SupervisorState(
            owner_pid=os.getpid(),
            owner_create_time=process_create_time(os.getpid()),
            started_at=now_iso(),
        )
        self.restart_times: list[tuple[str, float]] = []
        """(child, seconds from its exit seen to running again) for each restart."""

    @property
    def state_path(self) -> Path:
        """The state file."""
        return supervisor_state_path(self.data_dir)

    def add(self, child: Supervised, *, order: int, start: bool = False) -> None:
        """Supervise ``child``; with ``start``, start it first (else it already runs).

        Args:
            child: The child.
            order: Its place when stopping: lower stops first (workers 0, API 1, servers 2+).
            start: Start it now.
        """
        if start:
            child.start()
        record = ChildRecord(
            name=child.name,
            kind=child.kind,
            order=order,
            stop_signal=child.stop_signal.name,
            since=now_iso(),
        )
        tracked = _Tracked(child=child, record=record, started=self._clock())
        self._tracked[child.name] = tracked
        self._running(tracked)
        self.save()

    def view(self) -> dict[str, ChildRecord]:
        """Return the current record of every child."""
        return {name: tracked.record for name, tracked in self._tracked.items()}

    def run(self, *, interval: float = 0.2, until: Callable[[], bool] = lambda: False) -> None:
        """Supervise until ``until()`` holds (or KeyboardInterrupt)."""
        while not until():
            self.tick()
            time.sleep(interval)

    def tick(self) -> None:
        """Do one round: note exits, run due restarts, write the state if it changed."""
        changed = False
        if self.watchdog is not None and self.watchdog.ensure_running():
            changed = True
        for tracked in self._tracked.values():
            record = tracked.record
            if record.state == "running":
                code = tracked.child.poll()
                if code is not None:
                    self._exited(tracked, describe_exit(code), tracked.child.exit_detail())
                    changed = True
                elif record.crash_looping and (
                    self._clock() - tracked.started >= self.policy.crash_loop_window
                ):
                    record.crash_looping = False
                    logger.info(
                        "%s has stayed up for %.0fs: no longer crash-looping",
                        record.name, self.policy.crash_loop_window,
                    )  # fmt: skip
                    changed = True
            elif record.state == "restarting" and self._clock() >= tracked.due:
                self._restart(tracked)
                changed = True
        if changed:
            self.save()

    def stop(self, timeout: float) -> None:
        """Stop every child, lower ``order`` first, each group waited for before the next.

        A group's processes are all signalled first and then waited for, so they stop side
        by side (the workers and the learner) rather than one after another.
        """
        self._state.stopping = True
        self.save()
        for order in sorted({t.record.order for t in self._tracked.values()}):
            group = [t for t in self._tracked.values() if t.record.order == order]
            for tracked in group:
                if tracked.record.state == "running":
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        tracked.child.request_stop()
            for tracked in group:
                if tracked.record.state == "running":
                    began = self._clock()
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        tracked.child.stop(timeout)
                    logger.info("%s stopped in %.1fs", tracked.record.name, self._clock() - began)
                tracked.record.state = "stopped"
                if self.watchdog is not None and tracked.record.pid is not None:
                    self.watchdog.forget(tracked.record.pid)
            self.save()

    def save(self) -> None:
        """Write the state file atomically."""
        self._state.children = self.view()
        _write(self.state_path, self._state)

    # -- steps -----------------------------------------------------------------------------------

    def _exited(self, tracked: _Tracked, reason: str, detail: str) -> None:
        record, now = tracked.record, self._clock()
        if self.watchdog is not None and record.pid is not None:
            self.watchdog.forget(record.pid)
        window = self.policy.crash_loop_window
        tracked.exits = [t for t in tracked.exits if now - t < window] + [now]
        tracked.in_a_row = 1 if now - tracked.started >= window else tracked.in_a_row + 1
        was_looping = record.crash_looping
        record.crash_looping = len(tracked.exits) >= self.policy.crash_loop_restarts
        delay = self.policy.delay(tracked.in_a_row)
        record.state = "restarting"
        record.last_exit = reason
        record.last_exit_at = now_iso()
        tracked.due = now + delay
        tracked.down_since = tracked.down_since or now
        tail = f"; end of its log:\n{detail}" if detail else ""
        logger.warning(
            "%s (pid %s) exited: %s; restarting in %.1fs%s",
            record.name, record.pid, reason, delay, tail,
        )  # fmt: skip
        if record.crash_looping and not was_looping:
            logger.error(
                "%s is crash-looping: %d exits within %.0fs; still restarting it every %.0fs",
                record.name, len(tracked.exits), window, self.policy.backoff_max,
            )  # fmt: skip

    def _restart(self, tracked: _Tracked) -> None:
        record = tracked.record
        try:
            tracked.child.start()
        except (SpineError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            self._exited(tracked, f"restart failed: {message.splitlines()[0]}", "")
            return
        took = self._clock() - tracked.down_since
        tracked.down_since = 0.0
        tracked.started = self._clock()
        record.restarts += 1
        record.since = now_iso()
        self.restart_times.append((record.name, took))
        self._running(tracked)
        logger.info(
            "%s restarted (pid %s), %.1fs after it went down", record.name, record.pid, took
        )

    def _running(self, tracked: _Tracked) -> None:
        record, child = tracked.record, tracked.child
        record.state = "running"
        record.pid = child.pid
        record.create_time = process_create_time(child.pid) if child.pid is not None else None
        if self.watchdog is not None and child.pid is not None:
            self.watchdog.watch(child.name, child.pid, child.stop_signal)


class SupervisionReader:
    """Read the supervisor's view cheaply: parsed again only when the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._state: SupervisorState | None = None

    def read(self) -> SupervisorState | None:
        """Return the current view (``None`` when there is no readable file)."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen, self._state = None, None
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._seen:
            self._state = _read(self.path)
            self._seen = key
        return self._state

    def unhealthy(self) -> dict[str, str] | None:
        """Name each child that is not running well; ``None`` without a supervisor's file."""
        state = self.read()
        if state is None:
            return None
        if state.stopping:
            return {"spine up": "stopping"}
        return {n: c.summary() for n, c in state.children.items() if not c.healthy}


def stop_leftover_children(data_dir: Path, *, timeout: float = 20.0) -> list[str]:
    """Stop the children a killed ``spine up`` left running in ``data_dir``; name them.

    Only when the supervisor that wrote the state file is gone (its pid and creation time no
    longer match a live process); each child that is still the same process gets its stop
    signal, then SIGKILL. Servers are left to the stack's own start (which stops them after
    these).

    Raises:
        ConfigurationError: The supervisor that wrote the file still runs (another ``spine up``).
    """
    state = load_supervisor_state(data_dir)
    if state is None:
        return []
    if state.owner_alive() and state.owner_pid != os.getpid():
        raise ConfigurationError(
            f"spine up already runs in {data_dir} (pid {state.owner_pid}); stop it with Ctrl-C "
            "there or `spine down`"
        )
    stopped = []
    for record in sorted(state.children.values(), key=lambda r: r.order):
        if record.kind != "process":
            continue
        proc = find_process(record.pid, record.create_time)
        if proc is None:
            continue
        logger.warning(
            "%s (pid %d) of a spine up that ended uncleanly still runs; stopping it",
            record.name, proc.pid,
        )  # fmt: skip
        terminate_process(proc, signal_named(record.stop_signal), timeout)
        stopped.append(f"{record.name} (pid {proc.pid})")
    return stopped


def _write(path: Path, state: SupervisorState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": _VERSION, **asdict(state)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".supervisor.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2)
        os.chmod(tmp, 0o644)  # the API (maybe another user) reads it; it holds no secret
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(path: Path) -> SupervisorState | None:
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        children = {
            name: ChildRecord(**{k: v for k, v in item.items() if k in _RECORD_FIELDS})
            for name, item in raw.get("children", {}).items()
        }
        return SupervisorState(
            owner_pid=int(raw["owner_pid"]),
            owner_create_time=raw.get("owner_create_time"),
            started_at=str(raw.get("started_at", "")),
            children=children,
            stopping=bool(raw.get("stopping", False)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable supervisor state %s: %s", path, exc)
        return None


_RECORD_FIELDS = frozenset(ChildRecord.__dataclass_fields__)
