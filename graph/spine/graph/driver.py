"""The graph driver: the official ``neo4j`` async driver, against Neo4j or FalkorDB over Bolt.

FalkorDB 4.16 leaves a stale handler behind when a Bolt client ends a connection with GOODBYE:
the next connection given the same file descriptor, Bolt or Redis, gets no answer (the
driver waits out its 60 s acquisition deadline, then retries). A socket closed *without*
GOODBYE leaves no such handler (measured: the next connection answered in 0.04 s, against a
90 s hang). GOODBYE is only a courtesy in Bolt (the server sees the socket close either way),
so unless the settings say the server is Neo4j, the driver's connections close without it.

Its Bolt server also answers in small writes without ``TCP_NODELAY``; with the client's delayed
ACKs, any answer of more than a few records waited about 40 ms (a depth-2 neighborhood: p50
47 ms over Bolt, 3.3 ms for the same query over its Redis protocol, 0.5 ms inside the server).
Re-arming ``TCP_QUICKACK`` around each read of the driver's sockets (Linux) brings it to 4.9 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from neo4j import AsyncDriver, AsyncGraphDatabase
from neo4j.exceptions import Neo4jError
from neo4j.exceptions import ServiceUnavailable as Neo4jUnavailable

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.settings import Settings

__all__ = ["open_driver", "ping"]

logger = logging.getLogger(__name__)
_quiet_close_installed = False
_quick_ack_installed = False


def open_driver(settings: Settings) -> AsyncDriver:
    """Open a driver for ``GENAI_NEO4J_URI``; FalkorDB's Bolt port takes no credentials."""
    if settings.neo4j_uri is None:
        raise ConfigurationError("GENAI_NEO4J_URI is not set", field="GENAI_NEO4J_URI")
    auth = None
    if settings.neo4j_user and settings.neo4j_password is not None:
        auth = (settings.neo4j_user, settings.neo4j_password.get_secret_value())
    if settings.knowledge.graph_backend != "neo4j":
        _close_without_goodbye()
        _ack_quickly()
    return AsyncGraphDatabase.driver(settings.neo4j_uri, auth=auth, connection_timeout=5.0)


def _ack_quickly() -> None:
    """Re-arm ``TCP_QUICKACK`` on the driver's sockets around every read and write (Linux).

    Like :func:`_close_without_goodbye`, this reaches into the driver's private socket class,
    and does nothing (with a warning) if that class moved.
    """
    global _quick_ack_installed
    if _quick_ack_installed or not hasattr(socket, "TCP_QUICKACK"):
        return
    try:
        from neo4j._async_compat.network._bolt_socket import AsyncBoltSocketBase
    except ImportError:  # pragma: no cover - a driver that moved its internals
        logger.warning("cannot set TCP_QUICKACK with this neo4j driver; FalkorDB answers slowly")
        return
    recv_into: Any = AsyncBoltSocketBase.recv_into
    sendall: Any = AsyncBoltSocketBase.sendall

    def arm(bolt_socket: Any) -> None:
        raw = bolt_socket._writer.get_extra_info("socket")
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    async def quick_recv_into(self: Any, buffer: Any, nbytes: int) -> int:
        arm(self)
        received: int = await recv_into(self, buffer, nbytes)
        arm(self)
        return received

    async def quick_sendall(self: Any, data: bytes) -> Any:
        arm(self)
        return await sendall(self, data)

    AsyncBoltSocketBase.recv_into = quick_recv_into  # type: ignore[method-assign]
    AsyncBoltSocketBase.sendall = quick_sendall  # type: ignore[method-assign]
    _quick_ack_installed = True


def _close_without_goodbye() -> None:
    """Make the driver's Bolt connections close without GOODBYE (see the module docstring).

    This reaches into the driver's private Bolt classes; if a driver version moves them, it
    logs a warning and changes nothing, and FalkorDB's stale handlers cost a retry again.
    """
    global _quiet_close_installed
    if _quiet_close_installed:
        return
    try:
        from neo4j._async.io._bolt._base import AsyncBolt
    except ImportError:  # pragma: no cover - a driver that moved its internals
        logger.warning("cannot skip Bolt GOODBYE with this neo4j driver; FalkorDB may stall")
        return

    def no_goodbye(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    pending: list[type] = [AsyncBolt]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "goodbye" in vars(cls):
            cls.goodbye = no_goodbye  # type: ignore[attr-defined]
    _quiet_close_installed = True


async def ping(driver: AsyncDriver, *, timeout: float = 3.0) -> None:
    """Run ``RETURN 1``; raise :class:`ServiceUnavailable` when the server does not answer.

    FalkorDB 4.16 leaves a stale handler behind when a Bolt connection closes, and the next
    connection given the same socket never gets an answer; a second attempt on a fresh
    connection does. Neo4j answers the first time.
    """
    last: BaseException | None = None
    for _ in range(2):
        try:
            await asyncio.wait_for(_return_one(driver), timeout)
            return
        except (Neo4jUnavailable, Neo4jError, OSError, TimeoutError) as exc:
            last = exc
    raise ServiceUnavailable(f"the graph server does not answer: {last!r}") from last


async def _return_one(driver: AsyncDriver) -> None:
    async with driver.session() as session:
        result = await session.run("RETURN 1 AS one")
        await result.consume()
