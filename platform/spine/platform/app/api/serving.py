"""The HTTP server: uvicorn configured from :class:`ApiSettings`, with deadlines for slow clients.

uvicorn closes idle keep-alive connections (``keep_alive_timeout``) and answers 503 past a
number of open connections and requests (``max_connections``), but it waits forever for a
request's headers and body: a client that sends one byte every few seconds (slowloris) holds a
connection, a descriptor and a slot of that limit for as long as it likes. :class:`DeadlineHttp`
is uvicorn's httptools protocol with three bounds added:

1. the request line and headers must arrive within ``header_timeout`` seconds of the
   connection opening, or of the request's first byte (408, then the connection is closed);
2. they must fit ``max_header_bytes`` (431, closed);
3. a body must arrive whole within ``body_timeout`` seconds of its headers (408 if the answer
   has not begun, then closed).

It also writes a response's head and body in one send (:class:`CoalescedWrites`): uvicorn
writes them one after the other, two sends on a socket with Nagle off, so two packets and two
wake-ups of the client for every answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from spine.platform.settings import ApiSettings

__all__ = ["CoalescedWrites", "DeadlineHttp", "server_config"]

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def server_config(app: Any, api: ApiSettings, **options: Any) -> uvicorn.Config:
    """Return uvicorn's configuration for ``app`` from the API settings (``options`` added)."""
    protocol = type(
        "DeadlineHttp",
        (DeadlineHttp,),
        {
            "header_timeout": api.header_timeout,
            "body_timeout": api.body_timeout,
            "max_header_bytes": api.max_header_bytes,
        },
    )
    settings: dict[str, Any] = {
        "host": api.host,
        "port": api.port,
        "http": protocol,
        "timeout_keep_alive": api.keep_alive_timeout,
        "limit_concurrency": api.max_connections,
        # The same header bound, should uvicorn's h11 protocol be chosen instead.
        "h11_max_incomplete_event_size": api.max_header_bytes,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        # The client is the peer unless a trusted proxy forwards for it (the audit log records
        # it); uvicorn on its own would believe any loopback peer's X-Forwarded-For.
        "proxy_headers": bool(api.trusted_proxies),
        "forwarded_allow_ips": list(api.trusted_proxies),
    }
    return uvicorn.Config(app, **{**settings, **options})


class DeadlineHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with deadlines for a request's headers and its body."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = False
        self._refused = False

    # -- the connection and the parser's callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers; coalesce what is written."""
        super().connection_made(transport)
        # Flow control stays on the socket's own transport (uvicorn made it from that one).
        self.transport = cast("asyncio.Transport", CoalescedWrites(transport, self.loop))
        self._arm(self.header_timeout, "the request headers did not arrive")

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop any clock."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, unless this connection was already refused."""
        if not self._refused:
            super().data_received(data)

    def on_message_begin(self) -> None:
        """Start the clock for this request's headers (the first one's started on connect).

        A request pipelined behind one still being answered waits for that answer first (its
        clock starts then): reading is paused meanwhile, so its headers could not arrive.
        """
        super().on_message_begin()
        self._header_bytes = 0
        self._in_headers = True
        if self._deadline is None and self._idle():
            self._arm(self.header_timeout, "the request headers did not arrive")

    def on_response_complete(self) -> None:
        """Start the clock of a pipelined request: of its headers or its body, still coming."""
        super().on_response_complete()
        if self._refused or self._deadline is not None:
            return
        if self._in_headers:
            self._arm(self.header_timeout, "the request headers did not arrive")
        elif self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
            self._arm(self.body_timeout, "the request body did not arrive")

    def on_url(self, url: bytes) -> None:
        """Count the request line against the header limit."""
        self._count(len(url))
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header against the header limit."""
        self._count(len(name) + len(value) + 4)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Stop the headers' clock; start the body's."""
        if self._refused:
            return
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        if not self.pipeline:  # answered now; a pipelined request's clock starts with it
            self._arm(self.body_timeout, "the request body did not arrive")

    def on_body(self, body: bytes) -> None:
        """Hand on the body, unless the connection was refused."""
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """Stop the body's clock."""
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    # -- deadlines -----------------------------------------------------------------------------

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str, seconds: float) -> None:
        self._deadline = None
        self._refuse(408, "request_timeout", f"{what} within {seconds:g} s")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self._refuse(
                431,
                "headers_too_large",
                f"the request headers are over {self.max_header_bytes} bytes",
            )

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        """Answer in the one error shape if no answer has begun, then close the connection."""
        self._refused = True
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            # The app may still be running: it reads a disconnect, and what it sends goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


class CoalescedWrites:
    """A connection's transport whose writes made in one turn of the event loop go out as one.

    A write is held until the end of the loop's current turn, and sent then, or at once with
    the next write if one comes first. A response's head and body, written back to back by
    uvicorn, so leave in one send: one packet and one wake-up of the client, not two. A streamed
    answer's chunk waits at most for the end of the turn it was written in. Writes keep their
    order: every write on the connection (the protocol's own refusals too) goes through here.
    Anything else is the transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flushing: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold ``data`` till the end of this turn, or send it with what is held already."""
        if self._held is None:
            self._held = bytes(data)
            self._flushing = self._loop.call_soon(self.flush)
            return
        self._transport.write(self._held + data)
        self._forget()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write ``chunks`` as one write (in turn with the others)."""
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Send what is held now."""
        held = self._held
        self._forget()
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close the connection."""
        self.flush()
        self._transport.close()

    def _forget(self) -> None:
        self._held = None
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
