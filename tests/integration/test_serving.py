"""The API's HTTP server closes slow and oversized clients, and caps its connections.

A server built by :func:`spine.platform.app.api.serving.server_config` (what ``spine api`` runs)
around a tiny app, with one-second deadlines, on loopback. Each slow client is bounded: the test
waits at most a few seconds for the server to close it, and fails if it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from spine.platform.app.api.serving import DeadlineHttp, server_config
from spine.platform.settings import ApiSettings
from support.ports import free_port

pytestmark = pytest.mark.integration

BOUND = 10.0  # seconds a test waits for the server to act (its deadlines are 1 s)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer 200 with the size of the body read."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(app: Any = echo, **api: Any) -> AsyncIterator[int]:
    fields = {"header_timeout": 1, "body_timeout": 1, "max_header_bytes": 2048, **api}
    settings = ApiSettings(port=free_port(), **fields)
    server = uvicorn.Server(server_config(app, settings, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield settings.port
    finally:
        server.should_exit = True
        await task


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection (within the bound)."""
    return await asyncio.wait_for(reader.read(-1), BOUND)


async def test_a_client_that_sends_nothing_is_closed_with_408() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"request_timeout"' in answer
        writer.close()


async def test_a_slowloris_client_is_closed_while_still_sending_headers() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def dribble() -> None:
            for _ in range(int(BOUND / 0.2)):  # one header byte every 0.2 s, never the end
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.2)

        dribbling = asyncio.create_task(dribble())
        try:
            answer = await read_until_closed(reader)
        finally:
            dribbling.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await dribbling
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        writer.close()


async def test_a_body_that_dribbles_past_its_deadline_is_cut_off() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")

        async def dribble() -> None:
            for _ in range(int(BOUND / 0.2)):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)

        dribbling = asyncio.create_task(dribble())
        try:
            answer = await read_until_closed(reader)
        finally:
            dribbling.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await dribbling
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"body" in answer
        writer.close()


async def test_headers_over_the_limit_are_a_431() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        writer.close()


async def test_prompt_clients_are_served_on_a_kept_alive_connection() -> None:
    async with serving() as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for size in (0, 10, 5000):
            response = await client.post("/", content=b"y" * size)
            assert response.status_code == 200
            assert response.text == str(size)
        # Idle between requests for less than the keep-alive, longer than the header deadline:
        # the header clock starts with a request, not with the connection's idle time.
        await asyncio.sleep(1.5)
        assert (await client.get("/")).status_code == 200


async def test_past_the_connection_limit_requests_are_503() -> None:
    async with serving(max_connections=2, header_timeout=5) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/")).status_code == 503
        for _, writer in held:
            writer.close()


async def test_pipelined_requests_are_answered_in_turn() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = await read_until_closed(reader)
        assert answer.count(b"HTTP/1.1 200 ") == 2, answer
        writer.close()


class CountedSends:
    """A socket's transport that notes each write it is given (one write is one send)."""

    def __init__(self, transport: asyncio.Transport, sent: list[bytes]) -> None:
        self._transport = transport
        self._sent = sent

    def write(self, data: bytes) -> None:
        self._sent.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the server's connections send, write by write."""
    sent: list[bytes] = []
    made = DeadlineHttp.connection_made

    def counted(self: DeadlineHttp, transport: asyncio.Transport) -> None:
        made(self, CountedSends(transport, sent))  # type: ignore[arg-type]

    monkeypatch.setattr(DeadlineHttp, "connection_made", counted)
    return sent


async def test_an_answers_head_and_body_leave_in_one_send(sends: list[bytes]) -> None:
    async with serving() as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for size in (0, 10, 5000):
            response = await client.post("/", content=b"y" * size)
            assert response.text == str(size)
    assert len(sends) == 3, sends
    for sent, size in zip(sends, (0, 10, 5000), strict=True):
        body = str(size).encode()  # chunked: the echo app gives no length
        assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
        assert sent.endswith(b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


async def test_a_streamed_answer_sends_each_chunk_as_it_is_written(sends: list[bytes]) -> None:
    more = asyncio.Event()

    async def streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await more.wait()  # the first chunk must not wait for the second
        await send({"type": "http.response.body", "body": b"second"})

    async with serving(streamed) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"first\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 200 ")
        more.set()
        rest = await read_until_closed(reader)
        writer.close()
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"
    assert len(sends) == 2  # the head went with the first chunk
