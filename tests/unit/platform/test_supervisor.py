"""The supervisor of ``spine up``: restarts with backoff, crash loops, stop order, its state file,
and the watchdog that stops children when ``spine up`` is killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from spine.platform.embedded.children import ChildKind, ProcessChild
from spine.platform.embedded.supervisor import (
    RestartPolicy,
    SupervisionReader,
    Supervisor,
    describe_exit,
    load_supervisor_state,
    stop_leftover_children,
    supervisor_state_path,
)
from spine.platform.errors import ConfigurationError, ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChild:
    """A child whose process the test makes exit (``die``) and whose starts can fail."""

    def __init__(self, name: str, kind: ChildKind = "process") -> None:
        self.name = name
        self.kind: ChildKind = kind
        self.stop_signal = signal.SIGTERM
        self.code: int | None = None
        self.starts = 0
        self.fail_starts = 0
        self.stopped_at: list[str] = []
        self.log: list[str] | None = None
        self.requested = False

    @property
    def pid(self) -> int | None:
        return None  # never a real process: the watchdog and psutil are not involved

    def poll(self) -> int | None:
        return self.code

    def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise ServiceUnavailable("did not answer", service=self.name)
        self.code = None

    def exit_detail(self) -> str:
        return "last words" if self.kind == "server" else ""

    def request_stop(self) -> None:
        if self.log is not None:
            self.log.append(f"signal {self.name}")
        self.requested = True

    def stop(self, timeout: float) -> None:
        if self.log is not None:
            self.log.append(self.name)
        self.code = -signal.SIGTERM

    def die(self, code: int = -signal.SIGKILL) -> None:
        self.code = code


def supervisor(tmp_path: Path, clock: Clock, **policy: float) -> Supervisor:
    return Supervisor(
        tmp_path,
        policy=RestartPolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
    )


def test_a_child_that_dies_is_restarted_after_a_backoff_that_doubles(tmp_path: Path) -> None:
    clock = Clock()
    sup = supervisor(tmp_path, clock, backoff_initial=1, backoff_max=4, crash_loop_restarts=9)
    child = FakeChild("worker-1")
    sup.add(child, order=0, start=True)
    assert child.starts == 1

    waits = []
    for _ in range(4):
        child.die()
        sup.tick()
        assert sup.view()["worker-1"].state == "restarting"
        began = clock.now
        while sup.view()["worker-1"].state != "running":
            clock.now += 0.25
            sup.tick()
        waits.append(clock.now - began)
    assert waits == [1.0, 2.0, 4.0, 4.0]  # doubling, capped at backoff_max
    record = sup.view()["worker-1"]
    assert (record.restarts, record.last_exit) == (4, "killed by SIGKILL")
    assert [name for name, _ in sup.restart_times] == ["worker-1"] * 4

    # A child that stayed up for a whole window starts again from the first backoff.
    clock.now += 60
    sup.tick()
    child.die(1)
    sup.tick()
    clock.now += 1
    sup.tick()
    assert sup.view()["worker-1"].state == "running"
    assert sup.view()["worker-1"].last_exit == "exit code 1"


def test_a_child_that_keeps_dying_is_crash_looping_until_it_stays_up(tmp_path: Path) -> None:
    clock = Clock()
    sup = supervisor(tmp_path, clock, backoff_initial=0.5, crash_loop_restarts=3)
    child = FakeChild("nats", kind="server")
    sup.add(child, order=2)
    reader = SupervisionReader(supervisor_state_path(tmp_path))
    assert reader.unhealthy() == {}

    for _ in range(3):
        child.die()
        sup.tick()
        clock.now += 10
        sup.tick()
    record = sup.view()["nats"]
    assert record.crash_looping
    assert record.state == "running"  # still restarted
    shown = reader.unhealthy()
    assert shown == {"nats": "crash-looping, running (last exit: killed by SIGKILL)"}
    state = load_supervisor_state(tmp_path)
    assert state is not None
    assert state.children["nats"].crash_looping

    clock.now += 61  # stayed up for a whole window
    sup.tick()
    assert not sup.view()["nats"].crash_looping
    assert reader.unhealthy() == {}


def test_a_restart_that_fails_counts_as_one_more_exit(tmp_path: Path) -> None:
    clock = Clock()
    sup = supervisor(tmp_path, clock, backoff_initial=1, crash_loop_restarts=3)
    child = FakeChild("postgres", kind="server")
    sup.add(child, order=3)
    child.die()
    child.fail_starts = 2
    sup.tick()
    for _ in range(8):
        clock.now += 1
        sup.tick()
    record = sup.view()["postgres"]
    assert child.starts == 3
    assert record.state == "running"
    assert record.crash_looping  # three exits within the window, two of them failed starts
    assert record.restarts == 1


def test_stop_goes_by_order_and_the_state_file_says_so(tmp_path: Path) -> None:
    clock = Clock()
    sup = supervisor(tmp_path, clock)
    stopped: list[str] = []
    for name, order in (
        ("nats", 4),
        ("api", 1),
        ("worker-1", 0),
        ("learner", 0),
        ("postgres", 3),
    ):
        child = FakeChild(name, kind="process" if order < 2 else "server")
        child.log = stopped
        sup.add(child, order=order)
    sup.stop(timeout=1)
    # A group is signalled whole before it is waited for: the workers stop side by side.
    assert stopped == [
        "signal worker-1",
        "signal learner",
        "worker-1",
        "learner",
        "signal api",
        "api",
        "signal postgres",
        "postgres",
        "signal nats",
        "nats",
    ]
    raw = json.loads(supervisor_state_path(tmp_path).read_text())
    assert raw["stopping"] is True
    assert {c["state"] for c in raw["children"].values()} == {"stopped"}
    assert SupervisionReader(supervisor_state_path(tmp_path)).unhealthy() == {
        "spine up": "stopping"
    }


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_the_reader_has_no_view_without_a_file(tmp_path: Path) -> None:
    reader = SupervisionReader(tmp_path / "missing.json")
    assert reader.read() is None
    assert reader.unhealthy() is None


def test_a_real_process_child_is_restarted_and_stopped(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path, policy=RestartPolicy(backoff_initial=0.05))
    child = ProcessChild("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env={})
    sup.add(child, order=0, start=True)
    first = child.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while child.pid == first and time.monotonic() < deadline:
        sup.tick()
        time.sleep(0.02)
    assert child.pid is not None
    assert child.pid != first
    assert child.poll() is None
    assert os.getpgid(child.pid) == child.pid  # its own group: a Ctrl-C does not reach it
    second = child.pid
    sup.stop(timeout=5)
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"


_SPINE_UP_STANDIN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from pathlib import Path
    from spine.platform.embedded.supervisor import Supervisor
    from spine.platform.embedded.watchdog import Watchdog
    from spine.platform.embedded.children import ProcessChild

    # A child that ignores its stop signal and gets no parent-death signal: only the
    # watchdog's SIGKILL after the grace period ends it. Its pid is told once it ignores the
    # signal (a loaded machine may be slow to start the shell that sets the trap).
    ready = Path(sys.argv[1]) / "trap-set"
    stubborn = ProcessChild(
        "stubborn",
        ["sh", "-c", 'trap "" TERM; touch "$0"; while :; do sleep 0.1; done', str(ready)],
        env={"PATH": "/usr/bin:/bin"},
    )
    stubborn.start = lambda: setattr(  # type: ignore[method-assign]
        stubborn, "proc", subprocess.Popen(stubborn.argv, env=stubborn.env, process_group=0)
    )
    sup = Supervisor(Path(sys.argv[1]), watchdog=Watchdog(grace=1.0).start())
    sup.add(stubborn, order=0, start=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(stubborn.pid, sup.watchdog.pid, flush=True)
    time.sleep(60)
    """
)


def test_the_watchdog_kills_what_outlives_a_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPINE_UP_STANDIN, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid, watchdog_pid = (int(x) for x in parent.stdout.readline().split())
    child = psutil.Process(child_pid)
    parent.kill()
    parent.wait()
    time.sleep(0.3)
    assert child.is_running()  # the stop signal is ignored ...
    child.wait(10)  # ... and SIGKILL comes after the grace period
    # Then the watchdog leaves. It is not this process's child: its exit status is not ours to
    # read (None), but a watchdog still there after 5 s fails the wait.
    with contextlib.suppress(psutil.NoSuchProcess):
        assert psutil.Process(watchdog_pid).wait(5) in (0, None)


def test_leftover_children_of_a_killed_spine_up_are_stopped(tmp_path: Path) -> None:
    leftover = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        created = psutil.Process(leftover.pid).create_time()
        path = supervisor_state_path(tmp_path)
        path.parent.mkdir(parents=True)
        state = {
            "owner_pid": 2**22 - 1,  # no such process: its owner is gone
            "owner_create_time": 1.0,
            "started_at": "",
            "children": {
                "api": {
                    "name": "api",
                    "kind": "process",
                    "pid": leftover.pid,
                    "create_time": created,
                    "stop_signal": "SIGTERM",
                },
                "nats": {"name": "nats", "kind": "server", "pid": leftover.pid},
            },
        }
        path.write_text(json.dumps(state))
        assert stop_leftover_children(tmp_path, timeout=5) == [f"api (pid {leftover.pid})"]
        assert not psutil.pid_exists(leftover.pid)  # stopped (and reaped by psutil)
        # A live owner is another spine up: refused.
        state["owner_pid"], state["owner_create_time"] = os.getppid(), None
        path.write_text(json.dumps(state))
        with pytest.raises(ConfigurationError, match="already runs"):
            stop_leftover_children(tmp_path)
    finally:
        leftover.kill()
        leftover.wait()
