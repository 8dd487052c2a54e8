"""The watchdog of ``spine up``: stops every child when ``spine up`` ends, however it ends.

Linux's parent-death signal (:func:`~spine.platform.embedded.state.die_with_parent`) already
sends each child its stop signal when ``spine up`` dies, SIGKILL included; but a signal is one
request, not a guarantee: a worker finishing its tasks, or an API whose shutdown hangs, could
outlive it for long, and macOS has no such signal at all. So ``spine up`` also runs this small
process (started with ``python -I``; only the standard library while it waits, psutil once it
acts) in a session of its own, where a Ctrl-C or a signal to ``spine up``'s process group does
not reach it:

1. ``spine up`` holds the only write end of a pipe that is the watchdog's stdin, and writes one
   line per child it starts: ``watch <pid> <creation time> <stop signal> <name>``, and
   ``forget <pid>`` when a child is gone.
2. When the pipe closes (``spine up`` exited, cleanly or killed), the watchdog sends each
   watched process that is still the same process (pid and creation time) its stop signal,
   waits up to the grace period, then SIGKILLs the process group of each one left (a child
   runs in a group of its own: PostgreSQL's helpers go with it), and exits.

After a clean stop nothing is left to signal, and it exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

__all__ = ["Watchdog"]

logger = logging.getLogger(__name__)

_TOLERANCE = 1.0  # seconds: psutil's creation times are rounded


class Watchdog:
    """The parent's handle on the watchdog process: tell it what to watch, then close it."""

    def __init__(self, *, grace: float) -> None:
        """Describe a watchdog; it starts with :meth:`start`.

        Args:
            grace: Seconds the children get to stop after ``spine up`` is gone, before SIGKILL.
        """
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._watched: dict[int, str] = {}

    @property
    def pid(self) -> int | None:
        """The watchdog's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Watchdog:
        """Start the watchdog process (in a session of its own) and return ``self``."""
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__)), "--grace", str(self.grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        for line in self._watched.values():
            self._send(line)
        return self

    def watch(self, name: str, pid: int, stop_signal: signal.Signals) -> None:
        """Have the watchdog stop ``pid`` (with ``stop_signal``, then SIGKILL) if we die."""
        import psutil

        try:
            # Seconds after boot: an epoch time moves when the clock is stepped.
            created = psutil.Process(pid).create_time() - psutil.boot_time()
        except psutil.Error:
            return
        line = f"watch {pid} {created!r} {int(stop_signal)} {name}"
        self._watched[pid] = line
        self._send(line)

    def forget(self, pid: int) -> None:
        """Stop watching ``pid`` (it exited)."""
        if self._watched.pop(pid, None) is not None:
            self._send(f"forget {pid}")

    def ensure_running(self) -> bool:
        """Start the watchdog again if it died (telling it everything again); say if it had."""
        if self._proc is None or self._proc.poll() is None:
            return False
        logger.warning(
            "the watchdog of spine up exited (code %s); starting it again", self._proc.returncode
        )
        self.start()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe (the watchdog stops what is left, normally nothing) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("the watchdog is still stopping children; leaving it to finish")

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None:
            return
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except OSError:
            # It died: ensure_running (called by the supervisor's loop) restarts it.
            pass


# -- the watchdog process ------------------------------------------------------------------------


def _same(pid: int, created: float) -> psutil.Process | None:
    # Imported when needed: the watchdog waits on its pipe for as long as the platform runs,
    # holding only the standard library.
    import psutil

    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - psutil.boot_time() - created) > _TOLERANCE:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _read_until_closed(stream: IO[bytes]) -> dict[int, tuple[float, int, str]]:
    watched: dict[int, tuple[float, int, str]] = {}
    for raw in stream:
        parts = raw.decode(errors="replace").split(maxsplit=4)
        try:
            if parts[0] == "watch" and len(parts) == 5:
                watched[int(parts[1])] = (float(parts[2]), int(parts[3]), parts[4].strip())
            elif parts[0] == "forget" and len(parts) == 2:
                watched.pop(int(parts[1]), None)
        except (ValueError, IndexError):
            continue  # a line cut short by a dying writer
    return watched


def _stop_all(watched: dict[int, tuple[float, int, str]], grace: float) -> list[str]:
    live = {pid: item for pid, item in watched.items() if _same(pid, item[0]) is not None}
    for pid, (_, sig, _) in live.items():
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = {pid: item for pid, item in live.items() if _same(pid, item[0]) is not None}
        time.sleep(0.1)
    for pid in live:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return [f"{name} (pid {pid})" for pid, (_, _, name) in live.items()]


def _main(argv: list[str]) -> int:
    grace = float(argv[argv.index("--grace") + 1]) if "--grace" in argv else 15.0
    # Only the pipe ends the watchdog; a terminal's signals are not for it.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    watched = _read_until_closed(sys.stdin.buffer)
    killed = _stop_all(watched, grace)
    if killed:
        print(f"spine up watchdog: killed {', '.join(killed)} after {grace:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
