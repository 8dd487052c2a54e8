"""``http_fetch`` against real local HTTP servers: what the guard lets through and what it stops.

Stub servers listen on 127.0.0.1 and ::1. A refused fetch must not reach them (each counts its
requests); an allowed one proves the stub was reachable, so a refusal is the guard's doing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from spine.tools import EgressPolicy, ToolContext, ToolRegistry
from spine.tools.builtin import FetchLimits, HttpFetcher
from spine.tools.egress import IPAddress

pytestmark = pytest.mark.integration

CTX = ToolContext(tenant="acme", agent="researcher")


class StubServer:
    """A small HTTP server in a thread that records the requests it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.requests.append({"path": self.path, "host": self.headers.get("Host")})
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/redirect":
                    self.send_response(int(query.get("status", "302")))
                    self.send_header("Location", query["to"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/slow":
                    time.sleep(float(query.get("seconds", "2")))
                    self._send(b"late", "text/plain")
                elif url.path == "/big":
                    self._send(b"x" * int(query["n"]), "text/plain")
                elif url.path == "/host":
                    self._send(
                        json.dumps({"host": self.headers.get("Host")}).encode(), "application/json"
                    )
                else:
                    self._send(f"hello from {url.path}".encode(), "text/plain; charset=utf-8")

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            request_queue_size = 64  # the default 5 drops concurrent connects for a second
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # The tool hangs up on what it must not read (too big, too slow): expected.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        server_class: type[HTTPServer] = Server
        self.server = server_class((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.host = host
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url.removeprefix("http://")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allowed() -> Iterator[StubServer]:
    """The one server the fetch policy allows."""
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def victim() -> Iterator[StubServer]:
    """An internal service on loopback that nothing may reach."""
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def victim6() -> Iterator[StubServer]:
    """An internal service on IPv6 loopback."""
    server = StubServer("::1")
    yield server
    server.close()


def fetch_registry(allowed: StubServer | None = None, **kwargs: Any) -> ToolRegistry:
    policy = EgressPolicy.allowing(allowed.endpoint) if allowed else EgressPolicy()
    return ToolRegistry([HttpFetcher(policy=policy, **kwargs).tool()])


async def fetch(registry: ToolRegistry, url: str) -> Any:
    return await registry.call("http_fetch", {"url": url}, CTX)


async def test_an_allowed_server_is_fetched_with_status_and_content_type(
    allowed: StubServer,
) -> None:
    result = await fetch(fetch_registry(allowed), f"{allowed.url}/page")
    assert result.ok, result.content
    body = json.loads(result.content)
    assert body["status"] == 200
    assert body["content_type"] == "text/plain; charset=utf-8"
    assert body["text"] == "hello from /page"
    assert body["truncated"] is False
    assert allowed.requests == [{"path": "/page", "host": allowed.endpoint}]


async def test_loopback_servers_are_refused_in_every_spelling(
    victim: StubServer, victim6: StubServer
) -> None:
    registry = fetch_registry()
    port = victim.port
    urls = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",  # a name that resolves to loopback
        f"http://2130706433:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://127.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://[::1]:{victim6.port}/",
    ]
    for url in urls:
        result = await fetch(registry, url)
        assert result.error is not None, url
        assert "loopback" in result.error.message, result.error.message
    assert victim.requests == []
    assert victim6.requests == []


async def test_private_metadata_and_cgnat_addresses_are_refused() -> None:
    registry = fetch_registry()
    for url, reason in [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://100.64.0.1/", "shared (CGNAT)"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
    ]:
        result = await fetch(registry, url)
        assert result.error is not None
        assert reason in result.error.message


async def test_the_allowlist_names_an_endpoint_not_a_whole_host(
    allowed: StubServer, victim: StubServer
) -> None:
    result = await fetch(fetch_registry(allowed), f"{victim.url}/")
    assert result.error is not None
    assert "loopback" in result.error.message
    assert victim.requests == []


async def test_a_redirect_from_an_allowed_server_to_loopback_is_refused(
    allowed: StubServer, victim: StubServer, victim6: StubServer
) -> None:
    registry = fetch_registry(allowed)
    for status in (301, 302, 303, 307, 308):
        for target in (
            f"{victim.url}/secret",
            f"http://localhost:{victim.port}/secret",
            f"http://2130706433:{victim.port}/secret",
            f"{victim6.url}/secret",
        ):
            result = await fetch(registry, f"{allowed.url}/redirect?status={status}&to={target}")
            assert result.error is not None, (status, target)
            assert "loopback" in result.error.message
    assert victim.requests == []
    assert victim6.requests == []
    assert len(allowed.requests) == 20


async def test_redirects_within_the_allowed_server_are_followed_and_bounded(
    allowed: StubServer,
) -> None:
    registry = fetch_registry(allowed)
    result = await fetch(registry, f"{allowed.url}/redirect?to=/landing")
    body = json.loads(result.content)
    assert body["text"] == "hello from /landing"
    assert body["final_url"] == f"{allowed.url}/landing"
    assert body["redirects"] == [f"{allowed.url}/landing"]

    loop = await fetch(registry, f"{allowed.url}/loop")
    assert loop.error is not None
    assert "more than 5 redirects" in loop.error.message
    assert [r["path"] for r in allowed.requests].count("/loop") == 6


async def test_the_time_cap_stops_a_slow_server(allowed: StubServer) -> None:
    registry = fetch_registry(allowed, limits=FetchLimits(timeout=0.3))
    started = time.perf_counter()
    result = await fetch(registry, f"{allowed.url}/slow?seconds=3")
    assert time.perf_counter() - started < 2.5
    assert result.error is not None
    assert result.error.retryable
    assert "took more than" in result.error.message or "timed out" in result.error.message


async def test_the_size_cap_truncates_a_large_body(allowed: StubServer) -> None:
    registry = fetch_registry(allowed, limits=FetchLimits(max_bytes=10_000))
    body = json.loads((await fetch(registry, f"{allowed.url}/big?n=5000000")).content)
    assert body["truncated"] is True
    assert body["bytes"] == 10_000
    assert body["text"] == "x" * 10_000


class OneAnswerThenRebind:
    """Answers loopback (allowed in the test) first, an internal address after: DNS rebinding."""

    def __init__(self) -> None:
        self.asked = 0

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked += 1
        import ipaddress

        return [ipaddress.ip_address("127.0.0.1" if self.asked == 1 else "10.0.0.1")]


async def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    allowed: StubServer,
) -> None:
    resolver = OneAnswerThenRebind()
    registry = fetch_registry(allowed, resolver=resolver)
    result = await fetch(registry, f"http://app.example.test:{allowed.port}/host")
    body = json.loads(result.content)
    assert json.loads(body["text"]) == {"host": f"app.example.test:{allowed.port}"}
    assert resolver.asked == 1  # resolved once, connected to what was checked


async def test_concurrent_fetches_share_nothing(allowed: StubServer) -> None:
    registry = fetch_registry(allowed)
    results = await asyncio.gather(*(fetch(registry, f"{allowed.url}/n{i}") for i in range(10)))
    assert [json.loads(r.content)["text"] for r in results] == [
        f"hello from /n{i}" for i in range(10)
    ]
