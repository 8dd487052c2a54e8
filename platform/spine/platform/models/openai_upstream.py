"""Chat and embedding calls to OpenAI-protocol upstreams, posted with ``aiohttp``.

The providers that speak OpenAI's protocol (``openai``, ``openai-compatible``, the embedded
``local`` model, and Ollama at ``<GENAI_OLLAMA_URL>/v1``) need no translation: the request
is the body the server takes and the answer is read as JSON into the same
:class:`~spine.platform.models.values.Completion` and
:class:`~spine.platform.models.values.CompletionDelta` as
:class:`~spine.platform.models.litellm_upstream.LiteLLMUpstream` gives. LiteLLM costs about
5 ms of CPU a call above a plain HTTP call; the ``openai`` SDK, which this module used before,
1.3 ms against aiohttp's 0.3 (300 sequential calls to the fake model server, same process:
its request building, httpx and its types), and every model call of the gateway and the
agent loop pays it.

Ollama: its OpenAI-compatible routes take chat calls with tools, streaming with the usage
chunk, and embeddings; a model named with LiteLLM's prefix (``ollama/x``, ``ollama_chat/x``)
is sent as ``x``, as LiteLLM sends it.

The embedded ``local`` model (llama-cpp-python's server) takes a message's content as a string
only: arrays of text parts are joined into one before it is called (:func:`string_contents`).

Errors are translated to the same :class:`~spine.platform.errors.SpineError` classes with
the same ``cause`` names as LiteLLM's and the SDK's (``Timeout``, ``APIConnectionError``,
``ServiceUnavailableError``, ``ContextWindowExceededError``, ``BadRequestError``, ...), so the
router's fallbacks and the gateway's status codes
(:meth:`~spine.platform.models.openai_wire.GatewayError.of`) do not depend on the path a call
took; a 500 that is FastAPI's refusal of the body (llama-cpp-python's server answers its
validation errors so) is a refusal too, not an outage. Nothing is retried here: the router's
fallbacks and breakers decide. The timeout is the SDK's kind: for connecting and for each
read, not for the whole answer (a long stream that keeps sending is not cut).
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp

from spine.platform.errors import (
    BadRequest,
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    TransientFailure,
)
from spine.platform.inputs import storable_text
from spine.platform.models.providers import (
    HOW_TO_CONFIGURE,
    LOCAL_SERVER_HINT,
    ProviderTarget,
    without_secrets,
)
from spine.platform.models.shapes import (
    checked_vectors,
    delta_of,
    field_of,
    model_text,
    params_for,
    retry_after_of,
    says_too_long,
    tool_calls_of,
)
from spine.platform.models.values import (
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
)
from spine.platform.settings import Settings

__all__ = ["OpenAIUpstream", "UpstreamStatusError", "string_contents", "wire_model"]

logger = logging.getLogger(__name__)

# The cause each status is named by: LiteLLM's name where it gives a status a class of its own
# (the gateway and the router's fallback path speak these), else the openai SDK's class name.
_STATUS_CAUSES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "Timeout",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
}
_CHAT_PATH, _EMBEDDINGS_PATH = "/chat/completions", "/embeddings"
# The prefixes LiteLLM routes an Ollama model on, which it strips before the call.
_OLLAMA_PREFIXES = ("ollama_chat/", "ollama/")
_OPENAI_BASE = "https://api.openai.com/v1"
# As many connections as the SDK's client allowed (httpx limits of the openai SDK: 1,000).
_CONNECTIONS = 1000
_ERROR_TEXT = 2000  # characters of an error answer kept in the message
# Servers that take a message's content as a string only: llama-cpp-python's (the embedded
# model), whose chat templates concatenate it.
_STRING_CONTENT_ONLY = frozenset({"local"})
# The parts such a server is sent as text: an assistant's refusal is its text.
_TEXT_PARTS = frozenset({"text", "refusal"})
# How FastAPI words a request body it refused ("3 validation errors:"): llama-cpp-python's
# server answers it with a 500, yet it is the request at fault, not the server.
_REQUEST_REFUSED = re.compile(r"\b\d+ validation errors?:")


class UpstreamStatusError(Exception):
    """An upstream answered with an error: a status that is not 2xx, or an error event."""

    def __init__(
        self, status: int | None, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds the upstream asked to wait (its ``Retry-After``), when it said."""

    @property
    def cause(self) -> str:
        """The name the router and the gateway know this failure by."""
        if self.status is None:
            return "APIError"  # an error event in the middle of a stream
        if self.status >= 500:
            return _STATUS_CAUSES.get(self.status, "InternalServerError")
        return _STATUS_CAUSES.get(self.status, "APIStatusError")


def wire_model(target: ProviderTarget) -> str:
    """Return the model name the provider's server knows ``target.model`` by."""
    if target.provider == "ollama":
        for prefix in _OLLAMA_PREFIXES:
            if target.model.startswith(prefix):
                return target.model[len(prefix) :]
    return target.model


def base_url(target: ProviderTarget) -> str | None:
    """Return the OpenAI-protocol base URL of ``target`` (Ollama serves it under ``/v1``)."""
    base: str | None = target.kwargs.get("api_base")
    if target.provider != "ollama" or base is None:
        return base
    base = base.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


class _Route(NamedTuple):
    """Where one kind of call to one server goes: its URL, headers and proxy (if any)."""

    url: str
    headers: dict[str, str]
    proxy: str | None


class OpenAIUpstream:
    """Makes chat and embedding calls to OpenAI-protocol servers.

    One ``aiohttp`` session per event loop (its connections belong to the loop), kept
    alive and reused across servers; the key goes in each request's header.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._routes: dict[tuple[str | None, str, str], _Route] = {}

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Make one call to ``target`` without retries; errors come back typed."""
        body = _chat_body(target, request, request.params)
        started = time.perf_counter()
        try:
            response = await self._post(target, _CHAT_PATH, body, request)
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        choices = field_of(response, "choices")
        if not choices or not isinstance(choices, list):
            raise PermanentFailure(
                f"{target.provider} model {target.model} answered without a choice",
                provider=target.provider,
            )
        usage = field_of(response, "usage")
        choice = choices[0]
        message = field_of(choice, "message")
        logger.info(
            "model call %s/%s answered in %.0f ms", target.provider, target.model, latency_ms
        )
        return Completion(
            text=model_text(field_of(message, "content")) or "",
            model=target.model,
            provider=target.provider,
            input_tokens=field_of(usage, "prompt_tokens") or 0,
            output_tokens=field_of(usage, "completion_tokens") or 0,
            latency_ms=latency_ms,
            finish_reason=model_text(field_of(choice, "finish_reason")),
            tool_calls=tool_calls_of(field_of(message, "tool_calls")),
        )

    async def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one call to ``target`` without retries; errors come back typed.

        A failure before the first delta and one in the middle of the stream both raise the
        translated error from the iteration; usage comes on a delta near the end.
        """
        params = {k: v for k, v in request.params.items() if k != "stream_options"}
        body = _chat_body(target, request, params)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        try:
            async with self._answer(target, _CHAT_PATH, body, request) as response:
                kind = response.headers.get("Content-Type", "")
                if not kind.startswith("text/event-stream"):
                    raise PermanentFailure(
                        f"{target.provider} model {target.model} answered a stream as "
                        f"{kind or 'no content type'}, not text/event-stream",
                        provider=target.provider,
                        cause="NotAStream",
                    )
                async for data in _event_data(response.content):
                    if data.startswith("[DONE]"):
                        continue  # read on to the end: the connection then goes back to the pool
                    yield delta_of(_chunk(data))
        except PermanentFailure:
            raise
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        logger.info(
            "model stream %s/%s ended after %.0f ms",
            target.provider,
            target.model,
            (time.perf_counter() - started) * 1000,
        )

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.texts`` with one call to ``target``; vectors come back in order.

        ``request.params`` go to the model as they are (the router puts ``dimensions`` there
        only for models that take it); the vectors are asked for as base64 (a quarter of the
        bytes to read; a server that answers floats is read as well).
        """
        texts = request.texts
        body = {
            **_present(request.params),
            "model": wire_model(target),
            "input": texts,
            "encoding_format": "base64",
        }
        started = time.perf_counter()
        try:
            response = await self._post(target, _EMBEDDINGS_PATH, body, request)
            rows = sorted(field_of(response, "data") or [], key=lambda row: row["index"])
            vectors = [_floats(row["embedding"]) for row in rows]
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        checked_vectors(vectors, texts, target)
        logger.info(
            "embedding call %s/%s (%d texts) answered in %.0f ms",
            target.provider,
            target.model,
            len(texts),
            latency_ms,
        )
        return Embedding(
            vectors=vectors,
            model=target.model,
            provider=target.provider,
            input_tokens=field_of(field_of(response, "usage"), "prompt_tokens") or 0,
            latency_ms=latency_ms,
        )

    async def close(self) -> None:
        """Close the connections (those of sessions on other, finished loops are dropped)."""
        sessions, self._sessions = self._sessions, {}
        session = sessions.get(asyncio.get_running_loop())
        if session is not None:
            await session.close()

    async def _post(
        self,
        target: ProviderTarget,
        path: str,
        body: dict[str, Any],
        request: ChatRequest | EmbeddingRequest,
    ) -> Any:
        async with self._answer(target, path, body, request) as response:
            return json.loads(await response.read())

    @contextlib.asynccontextmanager
    async def _answer(
        self,
        target: ProviderTarget,
        path: str,
        body: dict[str, Any],
        request: ChatRequest | EmbeddingRequest,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Post ``body`` at ``path`` of ``target``; yield the answer, an error status raised."""
        route = self._route(target, path)
        async with self._session().post(
            route.url,
            data=json.dumps(body),
            headers=route.headers,
            proxy=route.proxy,
            timeout=self._timeout(request),
        ) as response:
            await _raise_for_status(response)
            yield response

    def _route(self, target: ProviderTarget, path: str) -> _Route:
        # A key is always sent, as OpenAI's clients send one; Ollama takes any (its docs say
        # "ollama").
        default_key = "ollama" if target.provider == "ollama" else "none"
        api_key = str(target.kwargs.get("api_key") or default_key)
        base = base_url(target)
        route = self._routes.get((base, api_key, path))
        if route is None:
            url = f"{(base or os.environ.get('OPENAI_BASE_URL') or _OPENAI_BASE).rstrip('/')}{path}"
            headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
            route = _Route(url, headers, _proxy_for(url))
            self._routes[base, api_key, path] = route
        return route

    def _timeout(self, request: ChatRequest | EmbeddingRequest) -> aiohttp.ClientTimeout:
        seconds = request.timeout or self._settings.models.timeout
        return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_CONNECTIONS),
                # Proxies are looked up once per server (_proxy_for): aiohttp's trust_env
                # looks them up in a thread on every request (two thread hops, ~0.4 ms CPU).
                trust_env=False,
                headers={"User-Agent": "genai-spine", "Accept": "application/json"},
            )
            self._sessions[loop] = session
        return session


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``, ...)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    # The body is the server's to choose (an HTML page, binary): kept readable and storable.
    text = storable_text((await response.read()).decode("utf-8", "replace").strip())
    raise UpstreamStatusError(
        response.status,
        f"Error code: {response.status} - {text[:_ERROR_TEXT]}",
        retry_after=retry_after_of(response.headers),
    )


async def _event_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Yield the data of each server-sent event (its ``data:`` lines, joined).

    Read in whatever pieces arrive and split here: aiohttp's own line reader refuses lines
    over 128 KiB, and one chunk (a whole tool call's arguments) can be longer. Other fields
    (``event:``, ``id:``) and comments carry nothing an OpenAI-protocol stream needs.
    """
    pending = bytearray()
    data: list[str] = []
    async for piece in content.iter_any():
        pending += piece
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:  # an answer cut off before its last blank line still had its say
        yield "\n".join(data)


def _present(params: dict[str, Any]) -> dict[str, Any]:
    # Unset parameters stay unset (a None would go as null); the rest go in the body as they
    # are, those OpenAI's API does not name too, as LiteLLM passes them on.
    return {name: value for name, value in params.items() if value is not None}


def _chat_body(
    target: ProviderTarget, request: ChatRequest, params: dict[str, Any]
) -> dict[str, Any]:
    messages = request.messages
    if target.provider in _STRING_CONTENT_ONLY:
        messages = string_contents(messages, model=target.model)
    return {
        **_present(params_for(target, params)),
        "model": wire_model(target),
        "messages": messages,
    }


def string_contents(messages: list[dict[str, Any]], *, model: str) -> list[dict[str, Any]]:
    """Return ``messages`` with each array of text parts joined into one string.

    For servers that take only string content (llama-cpp-python's fails on an array with a
    500). The parts are joined by newlines; other messages are passed as they are.

    Raises:
        BadRequest: A message holds a part that is not text (an image, audio, a file): the
            model cannot read it.
    """
    if not any(isinstance(m.get("content"), list) for m in messages):
        return messages
    flat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            flat.append(message)
            continue
        texts: list[str] = []
        for position, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _TEXT_PARTS:
                raise BadRequest(
                    f"model {model!r} reads text only; 'messages.{index}.content.{position}' "
                    f"is a {kind!r} part",
                    field="messages",
                )
            texts.append(str(part.get(kind) or ""))
        flat.append({**message, "content": "\n".join(texts)})
    return flat


def _floats(embedding: list[float] | str) -> list[float]:
    # Base64 little-endian float32, as asked; a server that ignores the ask sends floats.
    if isinstance(embedding, str):
        return array.array("f", base64.b64decode(embedding)).tolist()
    return [float(x) for x in embedding]


def _chunk(data: str) -> Any:
    """Decode one streamed event; an ``error`` object in it fails the call."""
    chunk = json.loads(data)
    error = field_of(chunk, "error")
    if error:
        message = field_of(error, "message")
        raise UpstreamStatusError(
            None, message if isinstance(message, str) and message else "an error during streaming"
        )
    return chunk


def _translate(exc: Exception, target: ProviderTarget, settings: Settings) -> Exception:
    where = target.kwargs.get("api_base") or target.provider
    message = without_secrets(str(exc), settings, target.kwargs.get("api_key"))
    if isinstance(exc, TimeoutError):  # asyncio's and aiohttp's timeouts alike
        return _transient(target, where, message or "timed out", "Timeout")
    if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, _REACHED):
        # Not reached (refused, no such host): configuring a model is the advice, or for the
        # embedded one, starting it.
        hint = LOCAL_SERVER_HINT if target.provider == "local" else HOW_TO_CONFIGURE
        return _transient(target, where, f"{message} ({hint})", "APIConnectionError")
    if isinstance(exc, aiohttp.ClientError):  # reset or cut off mid-answer: it was reached
        return _transient(target, where, message, "APIConnectionError")
    if not isinstance(exc, UpstreamStatusError):
        return PermanentFailure(
            f"{target.provider} answered what cannot be read: {message}",
            provider=target.provider,
            cause=type(exc).__name__,
        )
    status, cause = exc.status, exc.cause
    if status == 500 and _REQUEST_REFUSED.search(exc.message):
        # A refusal, not an outage: no breaker counts it and no other model is tried.
        return PermanentFailure(
            f"{target.provider} refused the call: {message}",
            provider=target.provider,
            cause="UnprocessableEntityError",
        )
    if status == 429:
        failure = _transient(target, where, message, cause)
        if exc.retry_after is not None:  # the gateway passes the provider's wait on
            failure.details["retry_after"] = exc.retry_after
        return failure
    if status is not None and says_too_long(message):
        # LiteLLM names OpenAI's own overflow; Ollama's it leaves a plain 400 (or 500).
        ollama = target.provider == "ollama"
        return ContextWindowExceeded(
            f"{target.provider} model {target.model} cannot take the prompt: {message}",
            provider=target.provider,
            cause=cause if ollama else "ContextWindowExceededError",
        )
    if status is not None and (status >= 500 or status == 408):
        return _transient(target, where, message, cause)
    if status == 401:
        return ProviderNotConfigured(
            f"{target.provider} rejected the credentials: check "
            f"GENAI_{target.provider.upper().replace('-', '_')}_API_KEY",
            provider=target.provider,
        )
    return PermanentFailure(
        f"{target.provider} refused the call: {message}",
        provider=target.provider,
        cause=cause,
    )


# Connection errors of a server that was reached: it went away mid-call (an answer cut off
# is a payload error, not a connection error).
_REACHED = (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError)


def _transient(target: ProviderTarget, where: str, message: str, cause: str) -> TransientFailure:
    return TransientFailure(
        f"{target.provider} at {where} failed: {message}",
        provider=target.provider,
        cause=cause,
    )
