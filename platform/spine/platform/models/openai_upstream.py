"""Chat calls to OpenAI-compatible upstreams through the official ``openai`` SDK.

The providers that speak OpenAI's protocol (``openai``, ``openai-compatible`` and the embedded
``local`` model) need no translation, and going through LiteLLM costs about 4 ms of CPU per
call (its dispatch, logging callbacks and response re-wrapping) above the SDK's own cost.
:class:`OpenAIUpstream` calls ``AsyncOpenAI`` directly, one client per server and key, and
gives back the same :class:`~spine.platform.models.values.Completion` and
:class:`~spine.platform.models.values.CompletionDelta` as
:class:`~spine.platform.models.litellm_upstream.LiteLLMUpstream`.

Its errors are translated to the same :class:`~spine.platform.errors.SpineError` classes with
the same ``cause`` names as LiteLLM's (``Timeout``, ``ServiceUnavailableError``,
``ContextWindowExceededError``, ...), so the router's fallbacks and the gateway's status codes
(:meth:`~spine.platform.models.openai_wire.GatewayError.of`) do not depend on the path a call took.
The SDK's own retries are off: the router's fallbacks and breakers decide.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

import openai
from openai import AsyncOpenAI
from openai.resources.chat.completions import AsyncCompletions

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    TransientFailure,
)
from spine.platform.models.providers import HOW_TO_CONFIGURE, ProviderTarget, without_secrets
from spine.platform.models.shapes import delta_of, params_for, says_too_long, tool_calls_of
from spine.platform.models.values import ChatRequest, Completion, CompletionDelta
from spine.platform.settings import Settings

if TYPE_CHECKING:
    from openai import AsyncStream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["OpenAIUpstream"]

logger = logging.getLogger(__name__)

# What ``chat.completions.create`` takes as arguments; anything else goes in the body as is.
_ARGUMENTS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    "messages",
    "model",
    "stream",
    "stream_options",
    "timeout",
    "extra_headers",
    "extra_query",
    "extra_body",
}
# LiteLLM's name for each status it gives a class of its own; the gateway and the router's
# fallback path speak these names.
_STATUS_CAUSES = {408: "Timeout", 502: "BadGatewayError", 503: "ServiceUnavailableError"}


class OpenAIUpstream:
    """Makes chat calls to OpenAI-compatible servers with ``AsyncOpenAI``, reusing clients."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str | None, str], AsyncOpenAI] = {}

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Make one call to ``target`` without retries; errors come back typed."""
        arguments = self._arguments(target, request, request.params)
        started = time.perf_counter()
        try:
            response = cast(
                "ChatCompletion", await self._client(target).chat.completions.create(**arguments)
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        if not response.choices:
            raise PermanentFailure(
                f"{target.provider} model {target.model} answered without a choice",
                provider=target.provider,
            )
        usage = response.usage
        choice = response.choices[0]
        logger.info(
            "model call %s/%s answered in %.0f ms", target.provider, target.model, latency_ms
        )
        return Completion(
            text=choice.message.content or "",
            model=target.model,
            provider=target.provider,
            input_tokens=(usage.prompt_tokens if usage else 0) or 0,
            output_tokens=(usage.completion_tokens if usage else 0) or 0,
            latency_ms=latency_ms,
            finish_reason=choice.finish_reason,
            tool_calls=tool_calls_of(choice.message.tool_calls),
        )

    async def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one call to ``target`` without retries; errors come back typed.

        A failure before the first delta and one in the middle of the stream both raise the
        translated error from the iteration; usage comes on a delta near the end.
        """
        params = {k: v for k, v in request.params.items() if k != "stream_options"}
        arguments = self._arguments(target, request, params)
        started = time.perf_counter()
        try:
            response = cast(
                "AsyncStream[ChatCompletionChunk]",
                await self._client(target).chat.completions.create(
                    **arguments, stream=True, stream_options={"include_usage": True}
                ),
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        try:
            async for chunk in response:
                yield delta_of(chunk)
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        finally:
            await response.close()
        logger.info(
            "model stream %s/%s ended after %.0f ms",
            target.provider,
            target.model,
            (time.perf_counter() - started) * 1000,
        )

    async def close(self) -> None:
        """Close every client's connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _arguments(
        self, target: ProviderTarget, request: ChatRequest, params: dict[str, Any]
    ) -> dict[str, Any]:
        named, extra = _split(params_for(target, params))
        arguments = {
            "model": target.model,
            "messages": request.messages,
            "timeout": request.timeout or self._settings.models.timeout,
            **named,
        }
        if extra:
            arguments["extra_body"] = extra
        return arguments

    def _client(self, target: ProviderTarget) -> AsyncOpenAI:
        base_url: str | None = target.kwargs.get("api_base")
        api_key = str(target.kwargs.get("api_key") or "none")
        client = self._clients.get((base_url, api_key))
        if client is None:
            client = AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                timeout=self._settings.models.timeout,
            )
            self._clients[base_url, api_key] = client
        return client


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    # Unset parameters stay unset (the SDK would send a None as null), and those the SDK has
    # no argument for travel in the body, as LiteLLM passes them on.
    arguments: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        (arguments if name in _ARGUMENTS else extra)[name] = value
    return arguments, extra


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
        return ContextWindowExceeded(
            f"{target.provider} model {target.model} cannot take the prompt: {message}",
            provider=target.provider,
            cause="ContextWindowExceededError",
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
