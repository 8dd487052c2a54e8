"""``http_fetch``: GET a public web page as text, within size and time caps.

Every connection, the first and each redirect's, goes through
:class:`~spine.tools.egress.GuardedTransport`, which refuses the platform's own network (see
:mod:`spine.tools.egress`). Redirects are followed here, one checked hop at a time.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field

from spine.tools.egress import (
    EgressDenied,
    EgressGuard,
    EgressPolicy,
    GuardedTransport,
    Resolver,
    SystemResolver,
)
from spine.tools.tool import ModelArguments, Tool, ToolContext, ToolFailure

__all__ = ["FetchArguments", "FetchLimits", "FetchResult", "HttpFetcher"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
_TEXT_SUFFIXES = ("+json", "+xml")


class FetchArguments(BaseModel):
    """What the model passes to ``http_fetch``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=2048, description="The http:// or https:// URL to fetch."
    )


class FetchResult(BaseModel):
    """What ``http_fetch`` returns: the page as text, with where it came from."""

    url: str
    final_url: str
    status: int
    content_type: str | None
    text: str
    bytes: int
    truncated: bool
    redirects: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    """How much one fetch may take: bytes of body, seconds in all, redirects followed."""

    max_bytes: int = 1_000_000
    timeout: float = 15.0
    max_redirects: int = 5
    user_agent: str = "GenAI-Spine/0.1 (+http_fetch)"


class HttpFetcher:
    """Fetches URLs for agents; the egress policy and resolver are injectable for tests."""

    def __init__(
        self,
        *,
        policy: EgressPolicy | None = None,
        resolver: Resolver | None = None,
        limits: FetchLimits | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._guard = EgressGuard(
            policy=policy or EgressPolicy(), resolver=resolver or SystemResolver()
        )
        self._limits = limits or FetchLimits()
        self._network_backend = network_backend
        self._ssl_context: ssl.SSLContext | None = None

    def tool(self, *, name: str = "http_fetch") -> Tool[FetchArguments]:
        """Return the tool that runs :meth:`fetch`."""

        async def run(args: FetchArguments, ctx: ToolContext) -> FetchResult:
            return await self.fetch(args.url)

        return Tool(
            name=name,
            description=(
                "Fetch a public web page or document with HTTP GET and return its text, "
                "status and content type. Private and internal addresses are refused; "
                f"at most {self._limits.max_bytes} bytes are read."
            ),
            arguments=ModelArguments(FetchArguments),
            handler=run,
            timeout=self._limits.timeout + 5.0,
            effect="read",
        )

    async def fetch(self, url: str) -> FetchResult:
        """GET ``url``, following redirects; raise :class:`ToolFailure` when it cannot."""
        limits = self._limits
        current = _checked_url(url)
        redirects: list[str] = []
        if self._ssl_context is None:
            # Loading the CA bundle takes tens of milliseconds: once per fetcher, not per fetch.
            self._ssl_context = httpx.create_ssl_context()
        transport = GuardedTransport(
            self._guard, network_backend=self._network_backend, ssl_context=self._ssl_context
        )
        try:
            async with (
                asyncio.timeout(limits.timeout),
                httpx.AsyncClient(
                    transport=transport,
                    follow_redirects=False,
                    trust_env=False,
                    timeout=httpx.Timeout(limits.timeout),
                    headers={"User-Agent": limits.user_agent, "Accept-Encoding": "identity"},
                ) as client,
            ):
                while True:
                    response = await client.send(client.build_request("GET", current), stream=True)
                    try:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECTS and location:
                            if len(redirects) >= limits.max_redirects:
                                raise ToolFailure(f"more than {limits.max_redirects} redirects")
                            current = _checked_url(str(response.url.join(location)))
                            redirects.append(str(current))
                            continue
                        body, truncated = await _read(response, limits.max_bytes)
                    finally:
                        await response.aclose()
                    return FetchResult(
                        url=url,
                        final_url=str(response.url),
                        status=response.status_code,
                        content_type=response.headers.get("content-type"),
                        text=_text(response, body),
                        bytes=len(body),
                        truncated=truncated,
                        redirects=redirects,
                    )
        except EgressDenied as exc:
            raise ToolFailure(f"refused to fetch {current}: {exc}") from exc
        except TimeoutError as exc:
            raise ToolFailure(
                f"fetching {url} took more than {limits.timeout:g} s", retryable=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise ToolFailure(f"fetching {current} timed out: {exc}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ToolFailure(f"fetching {current} failed: {exc}", retryable=True) from exc


def _checked_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text.strip())
    except httpx.InvalidURL as exc:
        raise ToolFailure(f"not a valid URL: {exc}") from exc
    if url.scheme not in {"http", "https"}:
        raise ToolFailure(f"only http and https URLs can be fetched, not {url.scheme or text!r}")
    if not url.host:
        raise ToolFailure(f"the URL {text!r} has no host")
    if url.userinfo:
        raise ToolFailure("URLs with credentials are not fetched")
    if "%" in url.host:
        raise ToolFailure(f"the host {url.host!r} is not a valid host name")
    if url.port is not None and not 0 < url.port < 65536:
        raise ToolFailure(f"the port {url.port} is not valid")
    return url


async def _read(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    inflate = None
    if encoding in {"gzip", "x-gzip", "deflate"}:
        inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
    elif encoding not in {"", "identity"}:
        raise ToolFailure(f"the server sent content encoded as {encoding!r}, which is not read")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if inflate is not None:
            # Bounded: a small compressed chunk cannot expand past the cap (no zip bombs).
            chunk = inflate.decompress(chunk, limit + 1 - len(body))
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def _text(response: httpx.Response, body: bytes) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not (
        content_type.startswith(_TEXT_TYPES) or content_type.endswith(_TEXT_SUFFIXES)
    ):
        return f"[{len(body)} bytes of {content_type}, not shown]"
    try:
        return body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
