"""uvicorn plumbing shared by the in-thread server and its own process."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from starlette.applications import Starlette

if TYPE_CHECKING:
    from .server import FakeModelServer

POLL_S = 0.02


class Disconnect(Exception):
    """Raised inside a stream to drop the connection without finishing the body."""


class _QuietDisconnects(logging.Filter):
    """Keep scripted disconnects out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return not all(isinstance(e, Disconnect) for e in exc.exceptions)
        return not isinstance(exc, Disconnect)


class Uvicorn(uvicorn.Server):
    """uvicorn server that ends hangs and streams as soon as a shutdown is asked for."""

    def __init__(self, fake: FakeModelServer, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._fake = fake

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._fake._stopping = True
        super().handle_exit(sig, frame)


def uvicorn_config(app: Starlette, *, loop: Literal["asyncio", "auto"]) -> uvicorn.Config:
    """Configure uvicorn quietly (warnings only, no access log) for ``app``."""
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDisconnects) for f in error_log.filters):
        error_log.addFilter(_QuietDisconnects())
    return uvicorn.Config(
        app,
        loop=loop,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def wait_until_up(url: str, timeout: float, *, alive: Callable[[], bool]) -> None:
    """Poll ``<url>/api/version`` until it answers 200.

    Raises:
        RuntimeError: ``alive()`` turned false first.
        TimeoutError: No answer within ``timeout`` seconds.
    """
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"fake model server at {url} exited during startup")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/version", timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(POLL_S)
    raise TimeoutError(f"fake model server at {url} did not answer within {timeout} s")
