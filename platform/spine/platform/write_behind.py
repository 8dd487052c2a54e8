"""Writes behind: items are queued by the caller and written in batches by a background task.

Used by the usage ledger (one multi-row ``INSERT`` per batch) and the budget ledger (one
settlement transaction per batch). The ``write`` function must be idempotent for a batch that
is retried: a commit whose answer was lost is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["WriteBehind"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0


class WriteBehind(Generic[T]):
    """A bounded queue of items and the background task that writes them in batches.

    Args:
        write: Writes one batch (in one transaction); raises when nothing was written.
        what: What the items are, for the log ("usage rows").
        interval: Seconds the writer gathers items before it writes them.
        batch: The most items one ``write`` is given.
        max_queued: Items that may wait; past that, :meth:`submit` writes its item itself.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        what: str,
        interval: float = 0.02,
        batch: int = 200,
        max_queued: int = 10_000,
    ) -> None:
        self._write = write
        self._what = what
        self._interval = interval
        self._batch = batch
        self._queue: asyncio.Queue[T] = asyncio.Queue(max_queued)
        self._held: list[T] = []  # taken from the queue, not written yet
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Items submitted and not written yet."""
        return self._queue.qsize() + len(self._held)

    async def submit(self, item: T) -> None:
        """Queue ``item``; returns at once unless the queue is full, when ``item`` is written
        before this returns (backpressure: nothing is dropped)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Shielded: a cancelled caller does not cancel a write whose outcome it ignores.
            await asyncio.shield(self._write([item]))
            return
        self._start()

    def submit_after(self, item: T) -> None:
        """Queue ``item`` behind everything submitted before it, and never wait, even past the
        queue's bound (for the rare item whose place matters more than backpressure: a budget
        lease given back after its calls' settlements)."""
        if self._queue.full():
            # In order: what waits in the queue goes before it, behind the batch in hand.
            while not self._queue.empty():
                self._held.append(self._queue.get_nowait())
            self._held.append(item)
        else:
            self._queue.put_nowait(item)
        self._start()

    def take(self, match: Callable[[T], bool]) -> list[T]:
        """Take the items ``match`` selects, for the caller to write in a transaction of its
        own; give them back with :meth:`put_back` if that write fails.

        Items waiting (queued, or gathered by the writer for its next batch) are taken out.
        Items a write in progress holds are copied, not taken: the caller writes them too (the
        writes are idempotent), so they are committed once its own commit is, whichever
        commit comes first.
        """
        taken = [item for item in self._held if match(item)]
        if not self._writing.locked():  # only gathered for the next batch: take them out
            self._held[:] = [item for item in self._held if not match(item)]
        queued: list[T] = []
        while not self._queue.empty():
            queued.append(self._queue.get_nowait())
        for item in queued:
            if match(item):
                taken.append(item)
            else:
                self._queue.put_nowait(item)  # back in its place: the queue held them all
        return taken

    def put_back(self, items: list[T]) -> None:
        """Queue again what :meth:`take` gave out and the caller did not write; never waits
        (past the queue's bound they go behind the batch in hand)."""
        held = {id(item) for item in self._held}  # copies: still in hand, written with it
        for item in items:
            if id(item) in held:
                continue
            try:
                self._queue.put_nowait(item)  # wakes the writer if it waits for items
            except asyncio.QueueFull:
                self._held.append(item)  # the queue is not empty: the writer is not waiting
        self._start()

    async def flush(self) -> None:
        """Write what was submitted so far.

        Never raises: what cannot be written stays queued for the background writer, and the
        failure is logged.
        """
        for _ in range(-(-self.pending // self._batch)):  # what is pending now, not what comes
            try:
                await asyncio.shield(self._write_held())
            except Exception as exc:
                logger.warning("%d %s not written yet: %s", self.pending, self._what, exc)
                self._start()
                return

    async def close(self) -> None:
        """Stop the background writer and write what is left."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self.flush()
        if self.pending:
            logger.error("%d %s lost: the database could not be written", self.pending, self._what)

    def _start(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_behind(), name=f"write-behind {self._what}"
            )

    async def _write_behind(self) -> None:
        backoff = 0.0
        while True:
            if not self._held:
                self._held.append(await self._queue.get())
            # Gather for a moment, so one write carries every item of the interval.
            if backoff or self.pending < self._batch:
                await asyncio.sleep(backoff or self._interval)
            try:
                # Shielded: a write cancelled mid-commit would leave its outcome unknown.
                await asyncio.shield(self._write_held())
            except Exception as exc:
                backoff = min(max(2 * backoff, _FIRST_BACKOFF), _MAX_BACKOFF)
                logger.warning(
                    "%d %s not written, retrying in %.1f s: %s",
                    self.pending,
                    self._what,
                    backoff,
                    exc,
                )
            else:
                backoff = 0.0

    async def _write_held(self) -> None:
        # One write at a time (the background task or a flush). Items stay held until their
        # write committed; a failed batch is retried as it was.
        async with self._writing:
            while len(self._held) < self._batch and not self._queue.empty():
                self._held.append(self._queue.get_nowait())
            if not self._held:
                return
            batch = self._held[: self._batch]
            await self._write(batch)
            # Items appended while the write ran are behind the batch: this drops the batch.
            del self._held[: len(batch)]
