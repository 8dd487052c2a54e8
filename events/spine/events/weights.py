"""Telling every router that new routing weights exist: a NATS KV bucket, watched.

The learner stores each version of the weights in PostgreSQL (they are large) and then puts the
version number under one key of the ``spine_routing`` bucket. Every API and worker process
watches that key: an update wakes it at once, and it loads that version from the database in a
thread — one read per new version per process, never a poll. When NATS is away the process
keeps the weights it has, and reloads the newest when the watch comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from spine.events.bus import NatsBus
from spine.events.subjects import WEIGHTS_BUCKET

__all__ = ["BUCKET", "KEY", "WeightsChannel"]

logger = logging.getLogger(__name__)

BUCKET = WEIGHTS_BUCKET
KEY = "weights"


class WeightsChannel:
    """Announces weight versions, and follows the announcements."""

    def __init__(self, bus: NatsBus, *, replicas: int = 1) -> None:
        self._bus = bus
        self._replicas = replicas

    async def announce(self, version: int) -> None:
        """Put ``version`` under the weights key (creating the bucket the first time)."""
        await self._bus.wait_connected()
        kv = await self._bucket(create=True)
        await kv.put(KEY, str(version).encode())

    async def follow(
        self,
        load: Callable[[int], Awaitable[int | None]],
        stop: asyncio.Event,
        *,
        retry: float = 1.0,
    ) -> None:
        """Call ``load(version)`` for the current version and every later one until ``stop``.

        ``load`` returns the version it holds after (None: nothing stored yet). A version
        announced again is loaded again unless it is the one held: an announcement read before
        its snapshot could be (a database restored, or one started afresh beside an old NATS)
        must not hide that version when it is stored and announced.
        """
        held: int | None = None
        while not stop.is_set():
            try:
                await self._bus.wait_connected()
                kv = await self._bucket(create=True)
                watcher = await kv.watch(KEY)
                try:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                            if entry is None or entry.value is None:
                                continue
                            version = int(entry.value.decode())
                            if version != held:
                                started = time.monotonic()
                                held = await load(version)
                                logger.info(
                                    "routing weights version %s loaded in %.0f ms (announced %d)",
                                    held,
                                    (time.monotonic() - started) * 1000,
                                    version,
                                )
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, or a bad version: keep the weights we have
                logger.debug("weights watch interrupted: %r", exc)
                await asyncio.sleep(retry)

    async def _bucket(self, *, create: bool) -> KeyValue:
        js = self._bus.js
        try:
            return await js.key_value(BUCKET)
        except (BucketNotFoundError, NotFoundError):
            if not create:
                raise
            return await js.create_key_value(bucket=BUCKET, history=1, replicas=self._replicas)
