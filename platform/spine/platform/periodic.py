"""Background jobs that run until told to stop: the sweepers, and waits a stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from spine.platform.errors import ServiceUnavailable

__all__ = ["run_every", "unless_stopped"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def run_every(
    job: Callable[[], Awaitable[object]],
    *,
    interval: float,
    stop: asyncio.Event,
    name: str,
    first_after: float = 0.0,
) -> None:
    """Run ``job`` every ``interval`` seconds until ``stop`` is set, the first time after
    ``first_after`` seconds (a rare job kept out of the start-up's burst of work).

    A backing service that is down skips a round with a warning; any other failure is logged
    with its traceback and the job runs again next round: a sweeper never dies of an error.
    """
    if first_after > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), first_after)
    while not stop.is_set():
        try:
            await job()
        except ServiceUnavailable as exc:
            logger.warning("%s skipped: %s", name, exc.message)
        except Exception:
            logger.exception("%s failed; trying again", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def unless_stopped(step: Awaitable[T], stop: asyncio.Event) -> asyncio.Future[T] | None:
    """Await ``step`` unless ``stop`` is set first, then cancel it: a long wait (a JetStream
    pull, a warm-up) does not hold a shutdown.

    Returns:
        ``step``'s finished future (its result, or the exception it raised), or None when
        ``stop`` came first.
    """
    running = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        running.cancel()
        raise
    finally:
        stopped.cancel()
    if running.done():
        return running
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await running
    return None
