"""``GET /metrics`` for processes with no HTTP server of their own: workers and the learner.

:class:`MetricsServer` listens on the first free port of ``port`` .. ``port + port_span - 1``
(so several workers on one machine never clash, and in a pod the first is always free) and
answers ``GET /metrics`` in this event loop: the probes run before each answer, and nothing
runs between scrapes. It speaks just enough HTTP/1.1 for a scraper (one request per
connection, bounded request size, a deadline for the headers). A process that finds no free
port logs a warning and runs without it: metrics never stop a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder

from spine.platform.telemetry.metrics import REGISTRY
from spine.platform.telemetry.probes import ProbeSet

__all__ = ["MetricsServer", "render"]

logger = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_HEAD_TIMEOUT = 10.0


def render(accept: str | None) -> tuple[bytes, str]:
    """Return the exposition of this process's registry and its content type.

    OpenMetrics when the scraper asks for it (``Accept: application/openmetrics-text``), else
    Prometheus's text format.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


@dataclass(slots=True, kw_only=True)
class MetricsServer:
    """Serves ``/metrics`` on a port of its own until closed."""

    host: str = "127.0.0.1"
    port: int = 9470
    port_span: int = 16
    probes: ProbeSet = field(default_factory=ProbeSet)
    bound: int | None = None
    """The port it listens on, once started (None: off, or no free port)."""
    _server: asyncio.Server | None = None

    async def start(self) -> int | None:
        """Listen on the first free port of the span; return it (None when none was free)."""
        if self.port == 0:
            return None
        for port in range(self.port, min(self.port + self.port_span, 65536)):
            try:
                self._server = await asyncio.start_server(
                    self._answer, self.host, port, limit=_MAX_HEAD
                )
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self.bound = port
            logger.info("metrics at http://%s:%d/metrics", self.host, port)
            return port
        logger.warning(
            "no free port for /metrics in %d..%d on %s; this process runs without it",
            self.port,
            self.port + self.port_span - 1,
            self.host,
        )
        return None

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
            status, body, content_type = await self._respond(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sent no (or too large a) request gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[str, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if path != "/metrics":
            return "404 Not Found", b"not found; try /metrics\n", "text/plain"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        accept = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        await self.probes.refresh()
        body, content_type = render(accept)
        return "200 OK", b"" if method == "HEAD" else body, content_type
