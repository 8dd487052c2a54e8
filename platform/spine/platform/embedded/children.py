"""The two kinds of child ``spine up`` supervises: a server of the embedded stack, a process.

Both answer the same few questions for :class:`~spine.platform.embedded.supervisor.Supervisor`
(is it running, how did it exit, start it, stop it); a server is restarted by its stack on the
same ports with the same data, a process is spawned again with the same command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

from spine.platform.embedded.stack import EmbeddedStack
from spine.platform.embedded.state import die_with_parent
from spine.platform.errors import ServiceUnavailable

__all__ = ["ChildKind", "ProcessChild", "ServerChild", "Supervised"]

ChildKind = Literal["server", "process"]


class Supervised(Protocol):
    """A child the supervisor keeps running."""

    @property
    def name(self) -> str:
        """Its name in logs and in the state file (``nats``, ``api``, ``worker-1``)."""

    @property
    def kind(self) -> ChildKind:
        """``server`` (a backing server) or ``process`` (the API, a worker)."""

    @property
    def pid(self) -> int | None:
        """The pid of its current process, ``None`` before the first start."""

    @property
    def stop_signal(self) -> signal.Signals:
        """The signal that stops it cleanly."""

    def poll(self) -> int | None:
        """Return its exit code (negative: killed by that signal), ``None`` while it runs."""

    def start(self) -> None:
        """Start it (a server: on its ports, until it answers); raise if it cannot."""

    def exit_detail(self) -> str:
        """Return what tells why it exited (the end of a server's log), or ``""``."""

    def request_stop(self) -> None:
        """Send its stop signal without waiting (``stop`` then waits for it)."""

    def stop(self, timeout: float) -> None:
        """Stop it with its stop signal; SIGKILL after ``timeout`` seconds."""


class ServerChild:
    """A server of an :class:`EmbeddedStack`, restarted by the stack on the same ports."""

    kind: ChildKind = "server"

    def __init__(self, stack: EmbeddedStack, server: str) -> None:
        self.stack = stack
        self.name = server

    @property
    def pid(self) -> int | None:
        """The server's current pid."""
        return self.stack.pid(self.name)

    @property
    def stop_signal(self) -> signal.Signals:
        """The server's clean stop signal (SIGINT for PostgreSQL's fast shutdown)."""
        return self.stack.stop_signal(self.name)

    def poll(self) -> int | None:
        """The exit code of the server's current process."""
        return self.stack.exit_code(self.name)

    def start(self) -> None:
        """Start the server again on its ports and wait until it answers.

        Raises:
            ServiceUnavailable: It exited or did not answer in time (then it is killed).
        """
        try:
            self.stack.restart(self.name)
        except ServiceUnavailable:
            with contextlib.suppress(ValueError):
                self.stack.kill(self.name)
            raise

    def exit_detail(self) -> str:
        """The end of the server's log since it last started."""
        return self.stack.log_tail(self.name)

    def request_stop(self) -> None:
        """Nothing: servers stop one by one, in the order the stack needs."""

    def stop(self, timeout: float) -> None:
        """Stop the server cleanly."""
        self.stack.stop_server(self.name, timeout)


class ProcessChild:
    """A command (the API, a worker) run in a process group of its own.

    Its own group: a Ctrl-C in the terminal reaches only ``spine up``, which stops children in
    order. It gets ``stop_signal`` when ``spine up`` dies (Linux), and the watchdog makes sure.
    """

    kind: ChildKind = "process"

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None
        self._signalled: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the current process."""
        return self.proc.pid if self.proc is not None else None

    def poll(self) -> int | None:
        """The exit code of the current process."""
        return self.proc.poll() if self.proc is not None else None

    def start(self) -> None:
        """Spawn the command."""
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            process_group=0,
            preexec_fn=partial(die_with_parent, self.stop_signal, os.getpid()),
        )

    def exit_detail(self) -> str:
        """Nothing: a process logs to ``spine up``'s own output."""
        return ""

    def request_stop(self) -> None:
        """Send the stop signal once to the current process; do not wait."""
        proc = self.proc
        if proc is None or proc.poll() is not None or self._signalled is proc:
            return
        # Once: a second SIGTERM or SIGINT may cut a process's own clean stop short.
        self._signalled = proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)

    def stop(self, timeout: float) -> None:
        """Send the stop signal (unless sent already), wait, SIGKILL the group if too long."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.request_stop()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
