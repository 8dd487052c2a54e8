"""The NATS connection every process shares: JetStream publishing and core signals.

nats-py and JetStream errors are translated here into :class:`ServiceUnavailable`, so callers
decide with one ``except`` whether to answer 503, leave a task to the outbox sweeper, or nak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError
from nats.js.errors import ServiceUnavailableError as JetStreamUnavailable

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.periodic import unless_stopped

__all__ = ["NatsBus", "server_list"]

logger = logging.getLogger(__name__)

_PUBLISH_ERRORS = (
    NatsTimeout,
    asyncio.TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ConnectionClosedError,
    OutboundBufferLimitError,
    APIError,
    OSError,
)


class NatsBus:
    """One NATS connection that reconnects forever and reports its state."""

    def __init__(self, url: str, *, name: str, publish_timeout: float = 2.0) -> None:
        self._servers = server_list(url)
        self.url = ",".join(_without_password(server) for server in self._servers)
        """The servers' URLs as logs and errors show them: never with a password."""
        self._name = name
        self._publish_timeout = publish_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False
        # Pings in flight, told when the connection drops: nats-py leaves their requests to
        # time out, and readiness should not take that long to say "lost".
        self._pings: set[asyncio.Future[None]] = set()

    @property
    def connected(self) -> bool:
        """Tell whether the connection is up right now."""
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        """Return the JetStream context; only valid after :meth:`wait_connected`."""
        if self._js is None:
            raise ServiceUnavailable(f"not connected to NATS at {self.url}")
        return self._js

    @property
    def client(self) -> Client:
        """Return the raw nats-py client; only valid after :meth:`wait_connected`."""
        if self._nc is None:
            raise ServiceUnavailable(f"not connected to NATS at {self.url}")
        return self._nc

    def start(self) -> None:
        """Begin connecting in the background; a server that is down is retried forever."""
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), name="nats-connect")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Start connecting if needed and wait until the first connection is made."""
        self.start()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"NATS at {self.url} does not answer; start it or set GENAI_NATS_URL"
            ) from exc

    async def _connect(self) -> None:
        self._nc = await nats.connect(
            servers=self._servers,
            name=self._name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream(timeout=self._publish_timeout)
        self._ready.set()
        logger.info("connected to NATS at %s", self.url)

    async def publish_durable(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish to JetStream and wait for its acknowledgement; deduplicated by ``msg_id``."""
        if not self.connected:
            raise ServiceUnavailable(f"NATS at {self.url} is not connected")
        all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
        try:
            return await self.js.publish(subject, payload, headers=all_headers)
        except _PUBLISH_ERRORS as exc:
            raise ServiceUnavailable(f"JetStream did not acknowledge {subject}: {exc!r}") from exc

    async def ping(self, timeout: float) -> None:
        """Make a round trip to JetStream, raising :class:`ServiceUnavailable` when it is not
        connected or does not answer within ``timeout`` seconds (a frozen server keeps its
        connections open, so ``connected`` alone does not tell).

        A request, not ``flush()``: nats-py fails a PONG that comes after its flush gave up
        (InvalidStateError in its read loop), and the connection with it.
        """
        if not self.connected:
            raise ServiceUnavailable("disconnected")
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = asyncio.ensure_future(
            self.client.request("$JS.API.INFO", b"", timeout=timeout + 1)
        )
        self._pings.add(lost)
        either: set[asyncio.Future[Any]] = {request, lost}
        try:
            done, _ = await asyncio.wait(either, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            self._pings.discard(lost)
            lost.cancel()
            if not request.done():
                request.cancel()
        if lost in done:
            raise ServiceUnavailable("NATS connection lost while it was asked")
        if not done:
            raise ServiceUnavailable(f"NATS did not answer within {timeout:g} s")
        try:
            request.result()
        except (NatsTimeout, NoRespondersError) as exc:
            raise ServiceUnavailable(f"NATS did not answer within {timeout:g} s") from exc
        except (nats.errors.Error, OSError) as exc:  # the connection went while it waited
            raise ServiceUnavailable(f"NATS connection lost: {exc!r}") from exc

    async def signal(self, subject: str, payload: bytes) -> None:
        """Publish a core NATS message; best effort, since its durable copy is elsewhere."""
        if not self.connected:
            return
        try:
            await self.client.publish(subject, payload)
        except _PUBLISH_ERRORS as exc:
            logger.debug("dropped live signal on %s: %r", subject, exc)

    async def subscribe(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        """Subscribe to a core subject; raises :class:`ServiceUnavailable` when disconnected."""
        if not self.connected:
            raise ServiceUnavailable(f"NATS at {self.url} is not connected")
        try:
            return await self.client.subscribe(subject, cb=handler)
        except _PUBLISH_ERRORS as exc:
            raise ServiceUnavailable(f"cannot subscribe to {subject}: {exc!r}") from exc

    async def close(self) -> None:
        """Flush what was published and close the connection, or stop trying to make one.

        Not a drain: a pull subscription whose fetched messages nobody takes any more would
        hold a drain until its timeout. Messages fetched and not acknowledged are redelivered
        (JetStream delivery is at least once); core signals are best effort by design.
        """
        self._closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsTimeout, TimeoutError, ConnectionClosedError, OSError):
                if self._nc.is_connected:
                    await self._nc.flush(timeout=2)
            await self._nc.close()

    async def _on_error(self, exc: Exception) -> None:
        logger.warning("NATS error: %r", exc)

    async def _on_disconnected(self) -> None:
        for waiter in self._pings:
            if not waiter.done():
                waiter.set_result(None)
        if self._closing:
            return
        logger.warning("disconnected from NATS at %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        logger.info("reconnected to NATS at %s", self.url)


# JetStream answers 503 while a clustered stream or consumer elects a new leader (its node
# died): as transient as a lost connection.
_LOST_LINK = (ConnectionClosedError, ServiceUnavailable, JetStreamUnavailable, OSError)


def server_list(url: str) -> list[str]:
    """Split ``GENAI_NATS_URL`` into its servers: one URL, or a cluster's URLs joined by commas.

    The client connects to any of them and fails over to the others (and to the cluster's
    other nodes, which every server announces) when its server goes away.
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ConfigurationError(f"no NATS server in {url!r}", field="GENAI_NATS_URL")
    return servers


def _without_password(url: str) -> str:
    """Mask the password (or the token: userinfo without a colon) of a NATS URL."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if colon else f"***@{host}"))


async def bind_durable(
    bus: NatsBus, durable: str, stream: str, stop: asyncio.Event
) -> JetStreamContext.PullSubscription:
    """Bind to a durable pull consumer, retrying while NATS is away (raises once ``stop``)."""
    while True:
        try:
            return await bus.js.pull_subscribe_bind(durable=durable, stream=stream)
        except (*_LOST_LINK, NatsTimeout) as exc:
            if stop.is_set():
                raise
            logger.warning("cannot bind %s yet (%r); retrying", durable, exc)
            await asyncio.sleep(0.5)


async def fetched(
    subscription: JetStreamContext.PullSubscription, size: int, stop: asyncio.Event
) -> AsyncIterator[list[Msg]]:
    """Yield batches of up to ``size`` messages until ``stop``; waits out a lost connection.

    A pull still waiting when ``stop`` is set is given up at once, not waited out: a message
    on its way to it is not acked, so JetStream delivers it again after ``ack_wait``.
    """
    while not stop.is_set():
        pulled = await unless_stopped(subscription.fetch(size, timeout=1.0), stop)
        if pulled is None:
            return
        try:
            messages = pulled.result()
        except NatsTimeout:
            continue
        except _LOST_LINK as exc:
            logger.debug("fetch failed: %r", exc)
            await asyncio.sleep(0.5)
            continue
        yield messages
