"""Background jobs that run every few seconds until told to stop (the sweepers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from spine.platform.errors import ServiceUnavailable

__all__ = ["run_every"]

logger = logging.getLogger(__name__)


async def run_every(
    job: Callable[[], Awaitable[object]], *, interval: float, stop: asyncio.Event, name: str
) -> None:
    """Run ``job`` every ``interval`` seconds until ``stop`` is set.

    A backing service that is down skips a round with a warning; any other failure is logged
    with its traceback and the job runs again next round: a sweeper never dies of an error.
    """
    while not stop.is_set():
        try:
            await job()
        except ServiceUnavailable as exc:
            logger.warning("%s skipped: %s", name, exc.message)
        except Exception:
            logger.exception("%s failed; trying again", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
