"""Chat and embedding calls to OpenAI-protocol upstreams through the official ``openai`` SDK.

The providers that speak OpenAI's protocol (``openai``, ``openai-compatible``, the embedded
``local`` model, and Ollama at ``<GENAI_OLLAMA_URL>/v1``) need no translation, and going
through LiteLLM costs about 5 ms of CPU per call (its dispatch, logging callbacks and response
re-wrapping) above the SDK's own cost. :class:`OpenAIUpstream` calls ``AsyncOpenAI`` directly,
one client per server and key, and gives back the same
:class:`~spine.platform.models.values.Completion` and
:class:`~spine.platform.models.values.CompletionDelta` as
:class:`~spine.platform.models.litellm_upstream.LiteLLMUpstream`.

Ollama: its OpenAI-compatible routes take chat calls with tools, streaming with the usage
chunk, and embeddings; a model named with LiteLLM's prefix (``ollama/x``, ``ollama_chat/x``)
is sent as ``x``, as LiteLLM sends it.

Its errors are translated to the same :class:`~spine.platform.errors.SpineError` classes with
the same ``cause`` names as LiteLLM's (``Timeout``, ``ServiceUnavailableError``,
``ContextWindowExceededError``, ...), so the router's fallbacks and the gateway's status codes
(:meth:`~spine.platform.models.openai_wire.GatewayError.of`) do not depend on the path a call took.
The SDK's own retries are off: the router's fallbacks and breakers decide.

Chat answers are read as JSON, not into the SDK's types: building its pydantic objects for every
streamed chunk cost about 2 ms of CPU per streamed call (4.1 against 1.8-2.4 ms, the SDK's
request either way, ``httpx-sse`` reading the events, so a stream must come as
``text/event-stream``, as OpenAI's protocol says; 0.25 ms for a whole answer).
"""

from __future__ import annotations

import array
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx2
import openai
from httpx_sse import EventSource
from openai import AsyncOpenAI
from openai.types.create_embedding_response import CreateEmbeddingResponse

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    TransientFailure,
)
from spine.platform.models.providers import HOW_TO_CONFIGURE, ProviderTarget, without_secrets
from spine.platform.models.shapes import (
    delta_of,
    field_of,
    params_for,
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

__all__ = ["OpenAIUpstream", "wire_model"]

logger = logging.getLogger(__name__)

# LiteLLM's name for each status it gives a class of its own; the gateway and the router's
# fallback path speak these names.
_STATUS_CAUSES = {408: "Timeout", 502: "BadGatewayError", 503: "ServiceUnavailableError"}
_CHAT_PATH, _EMBEDDINGS_PATH = "/chat/completions", "/embeddings"
# The prefixes LiteLLM routes an Ollama model on, which it strips before the call.
_OLLAMA_PREFIXES = ("ollama_chat/", "ollama/")


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


class OpenAIUpstream:
    """Makes chat and embedding calls to OpenAI-protocol servers with ``AsyncOpenAI``.

    One client per server and key, reused. Bodies are posted as the server takes them
    (``AsyncOpenAI.post``); the SDK still sends them, reads the answers into its types, and
    raises its errors, which :func:`_translate` turns into the platform's.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str | None, str], AsyncOpenAI] = {}

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Make one call to ``target`` without retries; errors come back typed."""
        body = _chat_body(target, request, request.params)
        started = time.perf_counter()
        try:
            response: Any = await self._client(target).post(
                _CHAT_PATH,
                body=body,
                cast_to=dict,
                options={"timeout": self._timeout(request)},
            )
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
            text=field_of(message, "content") or "",
            model=target.model,
            provider=target.provider,
            input_tokens=field_of(usage, "prompt_tokens") or 0,
            output_tokens=field_of(usage, "completion_tokens") or 0,
            latency_ms=latency_ms,
            finish_reason=field_of(choice, "finish_reason"),
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
            # The SDK sends the request and raises its errors; the events are read here.
            response = await self._client(target).post(
                _CHAT_PATH,
                body=body,
                cast_to=httpx2.Response,
                options={"timeout": self._timeout(request)},
                stream=True,
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        try:
            # httpx-sse is typed for httpx; the SDK's httpx2 response has the same reading API.
            async for event in EventSource(cast(Any, response)).aiter_sse():
                if event.data.startswith("[DONE]"):
                    continue  # read on to the end: the connection then goes back to the pool
                yield delta_of(_chunk(event.data, response))
        except Exception as exc:
            raise _translate(_sdk_error(exc, response), target, self._settings) from exc
        finally:
            await response.aclose()
        logger.info(
            "model stream %s/%s ended after %.0f ms",
            target.provider,
            target.model,
            (time.perf_counter() - started) * 1000,
        )

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.texts`` with one call to ``target``; vectors come back in order.

        ``request.params`` go to the model as they are (the router puts ``dimensions`` there
        only for models that take it); the vectors travel as base64 (the SDK's default, which
        it decodes; a server that answers floats is read as well).
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
            response = await self._client(target).post(
                _EMBEDDINGS_PATH,
                body=body,
                cast_to=CreateEmbeddingResponse,
                options={"timeout": self._timeout(request)},
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        rows = sorted(response.data, key=lambda row: row.index)
        vectors = [_floats(row.embedding) for row in rows]
        if len(vectors) != len(texts):
            raise PermanentFailure(
                f"{target.provider} model {target.model} returned {len(vectors)} vectors "
                f"for {len(texts)} texts",
                provider=target.provider,
            )
        logger.info(
            "embedding call %s/%s (%d texts) answered in %.0f ms",
            target.provider,
            target.model,
            len(texts),
            latency_ms,
        )
        usage = response.usage
        return Embedding(
            vectors=vectors,
            model=target.model,
            provider=target.provider,
            input_tokens=(usage.prompt_tokens if usage else 0) or 0,
            latency_ms=latency_ms,
        )

    async def close(self) -> None:
        """Close every client's connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _timeout(self, request: ChatRequest | EmbeddingRequest) -> float:
        return request.timeout or self._settings.models.timeout

    def _client(self, target: ProviderTarget) -> AsyncOpenAI:
        base = base_url(target)
        # The client insists on a key; Ollama takes any (its docs say "ollama").
        default_key = "ollama" if target.provider == "ollama" else "none"
        api_key = str(target.kwargs.get("api_key") or default_key)
        client = self._clients.get((base, api_key))
        if client is None:
            client = AsyncOpenAI(
                api_key=api_key,
                base_url=base,
                max_retries=0,
                timeout=self._settings.models.timeout,
            )
            self._clients[base, api_key] = client
        return client


def _present(params: dict[str, Any]) -> dict[str, Any]:
    # Unset parameters stay unset (a None would go as null); the rest go in the body as they
    # are, those the SDK has no argument for too, as LiteLLM passes them on.
    return {name: value for name, value in params.items() if value is not None}


def _chat_body(
    target: ProviderTarget, request: ChatRequest, params: dict[str, Any]
) -> dict[str, Any]:
    # The body as the server takes it, posted without the SDK's per-argument transform of
    # ``create`` (a walk over the typed parameters that only renames nothing here).
    return {
        **_present(params_for(target, params)),
        "model": wire_model(target),
        "messages": request.messages,
    }


def _floats(embedding: list[float] | str) -> list[float]:
    # Base64 little-endian float32, as asked; a server that ignores the ask sends floats.
    if isinstance(embedding, str):
        return array.array("f", base64.b64decode(embedding)).tolist()
    return [float(x) for x in embedding]


def _chunk(data: str, response: httpx2.Response) -> Any:
    """Decode one streamed event; an ``error`` object in it raises as the SDK raises it."""
    chunk = json.loads(data)
    error = field_of(chunk, "error")
    if error:
        message = field_of(error, "message")
        raise openai.APIError(
            message if isinstance(message, str) and message else "an error during streaming",
            response.request,
            body=error,
        )
    return chunk


def _sdk_error(exc: Exception, response: httpx2.Response) -> Exception:
    """The SDK's error for a transport failure while the events are read (as its streams do)."""
    if isinstance(exc, httpx2.TimeoutException):
        return openai.APITimeoutError(request=response.request)
    if isinstance(exc, httpx2.RequestError):
        return openai.APIConnectionError(request=response.request)
    return exc


def _translate(exc: Exception, target: ProviderTarget, settings: Settings) -> Exception:
    where = target.kwargs.get("api_base") or target.provider
    message = without_secrets(str(exc), settings, target.kwargs.get("api_key"))
    if isinstance(exc, openai.APITimeoutError):
        return _transient(target, where, message, "Timeout")
    if isinstance(exc, openai.APIConnectionError):
        return _transient(target, where, f"{message} ({HOW_TO_CONFIGURE})", "APIConnectionError")
    if isinstance(exc, openai.RateLimitError):
        return _transient(target, where, message, "RateLimitError")
    if isinstance(exc, openai.APIStatusError) and says_too_long(message):
        # LiteLLM names OpenAI's own overflow; Ollama's it leaves a plain 400 (or 500).
        ollama = target.provider == "ollama"
        return ContextWindowExceeded(
            f"{target.provider} model {target.model} cannot take the prompt: {message}",
            provider=target.provider,
            cause=type(exc).__name__ if ollama else "ContextWindowExceededError",
        )
    if isinstance(exc, openai.APIStatusError) and (
        exc.status_code >= 500 or exc.status_code == 408
    ):
        cause = _STATUS_CAUSES.get(exc.status_code, "InternalServerError")
        return _transient(target, where, message, cause)
    if isinstance(exc, openai.AuthenticationError):
        return ProviderNotConfigured(
            f"{target.provider} rejected the credentials: check "
            f"GENAI_{target.provider.upper().replace('-', '_')}_API_KEY",
            provider=target.provider,
        )
    return PermanentFailure(
        f"{target.provider} refused the call: {message}",
        provider=target.provider,
        cause=type(exc).__name__,
    )


def _transient(target: ProviderTarget, where: str, message: str, cause: str) -> Exception:
    return TransientFailure(
        f"{target.provider} at {where} failed: {message}",
        provider=target.provider,
        cause=cause,
    )
