"""A TCP forwarder a test can shut (refusing and dropping connections) and reopen, or freeze.

Put between the API and PostgreSQL or NATS, it makes the API's connections fail the way they do
when the server goes away, and come back on the same port; frozen, it holds every byte with the
connections open, as a server stopped with SIGSTOP does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TcpProxy", "proxy_to"]


class TcpProxy:
    """A TCP forwarder the test can shut (refusing and dropping connections) and reopen."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def is_open(self) -> bool:
        """Tell whether the proxy listens."""
        return self._server is not None

    async def open(self) -> None:
        """Listen, on the same port as before if it was open once."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        """Stop listening and drop every forwarded connection."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    def freeze(self) -> None:
        """Hold every byte from now on, keeping the connections open (a server that hangs)."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again what was held and whatever comes next."""
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            _pipe(reader, up_writer, self._flowing), _pipe(up_reader, writer, self._flowing)
        )
        self._writers -= {writer, up_writer}


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    try:
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    except (OSError, RuntimeError):
        pass
    finally:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def proxy_to(host: str, port: int) -> AsyncIterator[TcpProxy]:
    """Forward a fresh local port to ``host:port`` until the block ends."""
    proxy = TcpProxy(host, port)
    await proxy.open()
    try:
        yield proxy
    finally:
        if proxy.is_open:
            await proxy.shut()
