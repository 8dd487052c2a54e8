"""The SSRF guard without a network: address forms, blocked ranges, resolution and connecting.

A recording httpcore backend stands in for sockets, so these tests see where a connection
would go (and with which Host header and TLS server name) and never open one.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import ssl
from typing import Any

import httpcore
import pytest

from spine.tools import EgressPolicy, ToolContext, ToolRegistry
from spine.tools.builtin import FetchLimits, HttpFetcher
from spine.tools.egress import (
    EgressDenied,
    EgressGuard,
    IPAddress,
    blocked_reason,
    literal_address,
)

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
    ],
)
def test_every_literal_form_of_an_address_is_read(host: str, address: str) -> None:
    assert literal_address(host) == ip(address)


@pytest.mark.parametrize("host", ["example.com", "deadbeef", "1e100", "localhost", "a.b.c.d"])
def test_names_are_not_mistaken_for_addresses(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.100.100.200", "cloud metadata (Alibaba)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("2002:7f00:1::", "6to4"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "IETF protocol assignment (Teredo, ...)"),
        ("fc00::1", "unique local (private)"),
        ("fd00:ec2::254", "cloud metadata (AWS IPv6)"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
    ],
)
def test_internal_addresses_are_blocked(address: str, reason: str) -> None:
    assert blocked_reason(ip(address)) == reason


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ip(address)) is None


def test_an_allowlist_lets_exactly_its_endpoints_through() -> None:
    policy = EgressPolicy.allowing("127.0.0.1:8080", "[::1]:9000")
    policy.check(ip("127.0.0.1"), 8080, host="127.0.0.1")
    policy.check(ip("::1"), 9000, host="::1")
    for address, port in [("127.0.0.1", 8081), ("127.0.0.2", 8080), ("::1", 8080)]:
        with pytest.raises(EgressDenied, match="loopback"):
            policy.check(ip(address), port, host=address)
    with pytest.raises(ValueError, match="address:port"):
        EgressPolicy.allowing("localhost:8080")


class MapResolver:
    """Answers from a table, counting questions; a name not in it does not resolve."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host}: name not known")
        return [ip(a) for a in self.table[host]]


async def test_the_guard_checks_every_resolved_address() -> None:
    resolver = MapResolver(
        {
            "public.example": ["93.184.216.34"],
            "sneaky.example": ["93.184.216.34", "10.0.0.1"],
            "metadata.example": ["169.254.169.254"],
        }
    )
    guard = EgressGuard(policy=EgressPolicy(), resolver=resolver)
    assert await guard.addresses("public.example", 80) == [ip("93.184.216.34")]
    with pytest.raises(EgressDenied, match=r"sneaky.example \(10.0.0.1\) is a private address"):
        await guard.addresses("sneaky.example", 80)
    with pytest.raises(EgressDenied, match="cloud metadata"):
        await guard.addresses("metadata.example", 80)
    with pytest.raises(EgressDenied, match="metadata host"):
        await guard.addresses("metadata.google.internal.", 80)
    with pytest.raises(EgressDenied, match="loopback"):
        await guard.addresses("0x7f000001", 80)
    assert "0x7f000001" not in resolver.asked  # a literal is never sent to DNS


class RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], log: dict[str, Any]) -> None:
        super().__init__(buffer)
        self._log = log

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._log.setdefault("sent", b"")
        self._log["sent"] += buffer

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._log["server_hostname"] = server_hostname
        return self


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Plays canned HTTP responses, one connection each, and records where it connected."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.connections: list[dict[str, Any]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        log: dict[str, Any] = {"host": host, "port": port}
        self.connections.append(log)
        return RecordingStream([self.responses.pop(0)], log)


def http_response(status: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_public_name_is_resolved_by_the_injected_resolver_and_its_address_dialled() -> None:
    resolver = MapResolver({"www.example.com": ["93.184.216.34"]})
    backend = RecordingBackend(
        http_response("200 OK", b"<h1>hi</h1>", Content_Type="text/html; charset=utf-8")
    )
    fetcher = HttpFetcher(resolver=resolver, network_backend=backend)
    result = await fetcher.fetch("https://www.example.com/page?q=1")

    assert resolver.asked == ["www.example.com"]
    [connection] = backend.connections
    assert (connection["host"], connection["port"]) == ("93.184.216.34", 443)
    assert connection["server_hostname"] == "www.example.com"  # SNI and the certificate's name
    sent = connection["sent"].decode()
    assert sent.startswith("GET /page?q=1 HTTP/1.1\r\n")
    assert "Host: www.example.com\r\n" in sent
    assert result.status == 200
    assert result.text == "<h1>hi</h1>"
    assert result.content_type == "text/html; charset=utf-8"


async def test_a_redirect_to_an_internal_name_is_refused_before_connecting() -> None:
    resolver = MapResolver(
        {"www.example.com": ["93.184.216.34"], "internal.example.com": ["10.1.2.3"]}
    )
    backend = RecordingBackend(
        http_response("302 Found", Location="http://internal.example.com/admin")
    )
    fetcher = HttpFetcher(resolver=resolver, network_backend=backend)
    registry = ToolRegistry([fetcher.tool()])
    result = await registry.call(
        "http_fetch", {"url": "http://www.example.com/"}, ToolContext(tenant="acme")
    )
    assert result.error is not None
    assert result.error.type == "tool_error"
    assert "internal.example.com (10.1.2.3) is a private address" in result.error.message
    assert [c["host"] for c in backend.connections] == ["93.184.216.34"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://127.1:8080/", "loopback"),
        ("http://0/", "unspecified"),
        ("http://[fe80::1%25eth0]/", "valid host"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata host"),
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
        ("http://user:secret@example.com/", "credentials"),
        ("not a url", "only http and https"),
    ],
)
async def test_internal_and_odd_urls_are_refused_without_connecting(url: str, reason: str) -> None:
    backend = RecordingBackend()
    resolver = MapResolver({})
    registry = ToolRegistry([HttpFetcher(resolver=resolver, network_backend=backend).tool()])
    result = await registry.call("http_fetch", {"url": url}, ToolContext(tenant="acme"))
    assert result.error is not None, url
    assert reason in result.error.message
    assert not result.error.retryable
    assert backend.connections == []
    assert resolver.asked == []


async def test_a_name_that_does_not_resolve_is_a_clear_error() -> None:
    fetcher = HttpFetcher(resolver=MapResolver({}), network_backend=RecordingBackend())
    registry = ToolRegistry([fetcher.tool()])
    result = await registry.call(
        "http_fetch", {"url": "http://nowhere.example/"}, ToolContext(tenant="acme")
    )
    assert result.error is not None
    assert "cannot resolve nowhere.example" in result.error.message


async def test_binary_bodies_are_described_not_dumped_and_sizes_are_capped() -> None:
    resolver = MapResolver({"cdn.example": ["93.184.216.34"]})
    backend = RecordingBackend(
        http_response("200 OK", b"\x89PNG" + b"\0" * 100, Content_Type="image/png"),
        http_response("200 OK", b"a" * 5000, Content_Type="text/plain"),
    )
    fetcher = HttpFetcher(
        resolver=resolver, network_backend=backend, limits=FetchLimits(max_bytes=1000)
    )
    image = await fetcher.fetch("http://cdn.example/logo.png")
    assert image.text == "[104 bytes of image/png, not shown]"
    text = await fetcher.fetch("http://cdn.example/big.txt")
    assert text.truncated
    assert text.bytes == 1000
    assert text.text == "a" * 1000
    assert json.loads(text.model_dump_json())["truncated"] is True


async def test_a_compressed_body_is_inflated_only_up_to_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB of zeros in about 50 KB
    resolver = MapResolver({"bomb.example": ["93.184.216.34"]})
    backend = RecordingBackend(
        http_response("200 OK", bomb, Content_Type="text/plain", Content_Encoding="gzip")
    )
    fetcher = HttpFetcher(
        resolver=resolver, network_backend=backend, limits=FetchLimits(max_bytes=10_000)
    )
    result = await fetcher.fetch("http://bomb.example/")
    assert result.truncated
    assert result.bytes == 10_000
    assert "Accept-Encoding: identity" in backend.connections[0]["sent"].decode()
