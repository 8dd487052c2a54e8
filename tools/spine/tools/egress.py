"""Outbound HTTP that cannot reach the platform's own network (an SSRF guard).

The check lives where the connection is made. :class:`GuardedTransport` is an httpx transport
over an httpcore connection pool whose network backend is :class:`GuardedNetworkBackend`: for
every new connection it resolves the host once (through an injectable :class:`Resolver`), checks
every address against the :class:`EgressPolicy`, and connects to an address it checked — never
to the name, so a second DNS answer (rebinding) has nowhere to go. The URL, and so the ``Host``
header and the TLS server name (SNI and certificate check), stay the original host's. Each
redirect is a new request through the same pool, so every hop is checked the same way.

Blocked: loopback, private, link-local, shared (CGNAT), multicast, reserved, documentation and
other special-purpose ranges, cloud metadata addresses and names, IPv4 written as one number
(``2130706433``, ``0x7f000001``, octal), IPv4-mapped and NAT64/6to4/Teredo IPv6. An explicit
allowlist of ``address:port`` endpoints lets tests and trusted internal services through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, cast

import httpcore
import httpx

from spine.platform.errors import PermanentFailure

__all__ = [
    "EgressDenied",
    "EgressGuard",
    "EgressPolicy",
    "GuardedNetworkBackend",
    "GuardedTransport",
    "IPAddress",
    "Resolver",
    "SystemResolver",
    "blocked_reason",
    "literal_address",
]

logger = logging.getLogger(__name__)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Cloud metadata services first, so a refusal names them.
_METADATA: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata"),
    (_V4("169.254.170.2/32"), "cloud metadata (ECS)"),
    (_V4("100.100.100.200/32"), "cloud metadata (Alibaba)"),
    (_V4("168.63.129.16/32"), "cloud platform (Azure)"),
    (_V6("fd00:ec2::254/128"), "cloud metadata (AWS IPv6)"),
)

_BLOCKED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared (CGNAT)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "6to4 relay"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
)

_BLOCKED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "IPv4-compatible"),
    (_V6("64:ff9b::/96"), "NAT64"),
    (_V6("64:ff9b:1::/48"), "NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/23"), "IETF protocol assignment (Teredo, ...)"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2002::/16"), "6to4"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("5f00::/16"), "segment routing"),
    (_V6("fc00::/7"), "unique local (private)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
)

METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

_NUMERIC_HOST = re.compile(r"^[0-9A-Fa-fXx.]+$")


class EgressDenied(PermanentFailure):
    """The destination is not one the platform may connect to."""

    error_type = "egress_denied"


def literal_address(host: str) -> IPAddress | None:
    """Return the address a host names literally, in any form a resolver would accept.

    Beyond dotted quads and IPv6 (with or without brackets), this reads the legacy IPv4 forms
    that ``inet_aton`` takes: one number (``2130706433``), hex (``0x7f000001``), octal
    (``0177.0.0.1``) and short forms (``127.1``).
    """
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Return why an address is off limits, or ``None`` for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = blocked_reason(address.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        address = ipaddress.IPv6Address(address.packed)  # drop any %scope
    for network, label in _METADATA:
        if address in network:
            return label
    table: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = (
        _BLOCKED_V4 if isinstance(address, ipaddress.IPv4Address) else _BLOCKED_V6
    )
    for network, label in table:
        if address in network:
            return label
    if not address.is_global:
        return "non-public"
    return None


def _endpoint(text: str) -> tuple[IPAddress, int]:
    host, sep, port = text.strip().rpartition(":")
    address = literal_address(host) if sep else None
    if address is None or not port.isdigit():
        raise ValueError(f"allowed endpoint {text!r} must be 'address:port', e.g. '[::1]:8080'")
    return address, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicy:
    """Where outbound requests may go: anywhere public, plus the endpoints in ``allow``."""

    allow: frozenset[tuple[IPAddress, int]] = frozenset()
    blocked_hosts: frozenset[str] = field(default=METADATA_HOSTS)

    @classmethod
    def allowing(cls, *endpoints: str) -> EgressPolicy:
        """Build a policy that also lets the given ``address:port`` endpoints through."""
        return cls(allow=frozenset(_endpoint(e) for e in endpoints))

    def check_host(self, host: str) -> None:
        """Refuse host names that are blocked whatever they resolve to."""
        if host.lower().rstrip(".") in self.blocked_hosts:
            raise EgressDenied(f"{host} is a cloud metadata host")

    def check(self, address: IPAddress, port: int, *, host: str) -> None:
        """Refuse an address the policy does not allow."""
        if (address, port) in self.allow:
            return
        reason = blocked_reason(address)
        if reason is not None:
            shown = host if host == str(address) else f"{host} ({address})"
            raise EgressDenied(f"{shown} is a {reason} address")


class Resolver(Protocol):
    """Turns a host name into addresses (the seam tests use to stay off the network)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return every address of the host; raise :class:`OSError` when it has none."""
        ...


class SystemResolver:
    """Resolve through the operating system (``getaddrinfo``)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Return the unique addresses ``getaddrinfo`` gives for a TCP connection."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        seen: dict[IPAddress, None] = {}
        for info in infos:
            seen[ipaddress.ip_address(str(info[4][0]).partition("%")[0])] = None
        return list(seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressGuard:
    """Resolve a host once and check every address it has."""

    policy: EgressPolicy = field(default_factory=EgressPolicy)
    resolver: Resolver = field(default_factory=SystemResolver)

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Return the checked addresses of ``host``; refuse if any of them is blocked.

        A name with one blocked address among public ones is refused as a whole: it is either
        misconfigured or an attempt to get lucky with the order of answers.
        """
        self.policy.check_host(host)
        literal = literal_address(host)
        if literal is not None:
            found = [literal]
        else:
            found = await self.resolver.resolve(host, port)
            if not found:
                raise OSError(f"{host} has no address")
        for address in found:
            self.policy.check(address, port, host=host)
        return found


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the guard checked."""

    def __init__(self, guard: EgressGuard, inner: httpcore.AsyncNetworkBackend | None = None):
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check, then connect to the first checked address that answers."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._guard.addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: outbound requests go over TCP only."""
        raise EgressDenied("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the inner backend does."""
        await self._inner.sleep(seconds)


# httpcore's errors and the httpx ones callers catch, most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterator[bytes] | object) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated():
            async for chunk in cast(AsyncIterator[bytes], self._stream):
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _translated():
                await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every connection goes through :class:`GuardedNetworkBackend`.

    No proxy is ever used (one would connect on our behalf, unchecked), and only HTTP/1.1.
    """

    def __init__(
        self,
        guard: EgressGuard,
        *,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 10,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            network_backend=GuardedNetworkBackend(guard, network_backend),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request over a checked connection."""
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=cast(AsyncIterator[bytes], request.stream),
            extensions=request.extensions,
        )
        with _translated():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()
