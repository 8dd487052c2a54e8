"""A recorded server is found again by pid and start time even after the clock is stepped.

psutil's epoch creation time is the kernel's boot time plus the start in clock ticks, and the
boot time moves when the clock is stepped (NTP, a resumed VM): a full run once saw a live graph
server reported dead. Records count seconds after boot instead."""

from __future__ import annotations

import os
import subprocess

import psutil
import psutil._pslinux
import pytest

from spine.platform.embedded.state import find_process, process_create_time


@pytest.mark.skipif(not psutil.LINUX, reason="simulates Linux's /proc/stat boot time")
def test_a_process_is_found_after_the_boot_time_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = process_create_time(os.getpid())
    assert recorded is not None and recorded < 1e9  # seconds after boot, not an epoch time
    legacy = psutil.Process(os.getpid()).create_time()  # what older state files hold
    assert find_process(os.getpid(), legacy) is not None  # an old record, read the old way
    booted = psutil.boot_time()
    # The clock stepped 7 s: the kernel reports another boot time, psutil follows it.
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: booted + 7.0)
    assert psutil.Process(os.getpid()).create_time() == pytest.approx(legacy + 7.0)
    found = find_process(os.getpid(), recorded)
    assert found is not None and found.pid == os.getpid()


def test_another_process_with_the_same_pid_is_not_taken_for_the_recorded_one() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        recorded = process_create_time(child.pid)
        assert recorded is not None
        assert find_process(child.pid, recorded) is not None
        assert find_process(child.pid, recorded - 60) is None  # started at another time
    finally:
        child.kill()
        child.wait()
    assert find_process(child.pid, recorded) is None  # gone
