"""What an earlier stack of the same data directory left running, and what to do with it.

A start reads the previous state file (:mod:`spine.platform.embedded.state`) and, for the
servers it records that still run (same pid, same creation time):

- an attached stack whose owner still runs is another ``spine up``: refuse;
- an attached stack whose owner is gone ended uncleanly (``spine up`` killed and its children
  not stopped): stop its servers, each with its own stop signal (PostgreSQL: fast shutdown);
- a detached stack is kept: a detached start adds only the servers that do not run (and says
  it restarted them), an attached start refuses to run one of them a second time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from spine.platform.embedded.state import (
    ServerRecord,
    StackState,
    find_process,
    signal_named,
    terminate_process,
)
from spine.platform.errors import ConfigurationError

__all__ = ["LEFTOVER_STOP_SECONDS", "settle_previous"]

logger = logging.getLogger(__name__)

LEFTOVER_STOP_SECONDS = 30.0


def settle_previous(
    data_dir: Path,
    previous: StackState | None,
    *,
    starting: Iterable[str],
    detach: bool,
    progress: Callable[[str, str], None],
) -> dict[str, ServerRecord]:
    """Deal with the servers an earlier start left running; return the ones to keep.

    Args:
        data_dir: The data directory.
        previous: Its state file as it was before this start.
        starting: The servers this start runs.
        detach: Whether this start is detached.
        progress: Told ``(server, message)`` for each server stopped.

    Raises:
        ConfigurationError: Another stack runs here (see the module docstring).
    """
    if previous is None:
        return {}
    live = {
        name: rec
        for name, rec in previous.servers.items()
        if find_process(rec.pid, rec.create_time) is not None
    }
    if not live:
        return {}
    listed = ", ".join(f"{name} pid {rec.pid}" for name, rec in live.items())
    if previous.detached:
        twice = [name for name in live if name in set(starting)]
        if twice and not detach:
            raise ConfigurationError(
                f"an embedded stack already runs in {data_dir} ({listed}); "
                "stop it with `spine down` or use its URLs"
            )
        return live
    owner = find_process(previous.owner_pid, previous.owner_create_time)
    if owner is not None and owner.pid != os.getpid():
        raise ConfigurationError(
            f"an embedded stack already runs in {data_dir} (owner pid {owner.pid}: {listed}); "
            "stop it (Ctrl-C there, or `spine down`) or use its URLs"
        )
    logger.warning(
        "servers of a stack that ended uncleanly still run in %s (%s); stopping them",
        data_dir,
        listed,
    )
    for name in reversed(list(live)):
        rec = live[name]
        proc = find_process(rec.pid, rec.create_time)
        if proc is not None:
            progress(name, f"stopping the {name} left running (pid {rec.pid})")
            terminate_process(proc, signal_named(rec.stop_signal), LEFTOVER_STOP_SECONDS)
    return {}
