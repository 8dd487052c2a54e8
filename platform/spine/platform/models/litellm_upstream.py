"""Calls to the providers that need LiteLLM (Anthropic, Bedrock, Groq), chat and embeddings.

The providers that speak OpenAI's protocol, Ollama among them, are called through the ``openai``
SDK instead (:mod:`spine.platform.models.openai_upstream`); this adapter can still call them
(its routes for them stay: the price and parameter facts are asked by the same routes).

LiteLLM's errors are translated here: transient ones (connection, timeout, 429, 5xx) are
retryable, a prompt too long for the model is
:class:`~spine.platform.errors.ContextWindowExceeded`, a rejected key says which setting to
check, everything else is permanent. ``import litellm`` takes seconds and some 135 MiB: only
this module imports it, on the first call that needs it, in a thread. The router asks
:func:`known_model_facts` and :func:`supported_params` through
:mod:`spine.platform.models.litellm_facts`, which runs them in a child process unless LiteLLM
is loaded already.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    TransientFailure,
)
from spine.platform.models.providers import HOW_TO_CONFIGURE, ProviderTarget, without_secrets
from spine.platform.models.shapes import (
    checked_vectors,
    delta_of,
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

__all__ = [
    "LiteLLMUpstream",
    "chat_route",
    "embedding_route",
    "known_model_facts",
    "supported_params",
]

logger = logging.getLogger(__name__)

# LiteLLM's route for each provider that is not its own: the embedded local model is a
# llama-cpp-python server speaking OpenAI's protocol, like any OpenAI-compatible server.
_CHAT_ROUTE = {"ollama": "ollama_chat", "openai-compatible": "openai", "local": "openai"}
# Embeddings take LiteLLM's plain Ollama route (``ollama_chat`` has none). Its Ollama embedding
# path works in LiteLLM 1.110.2 (answers, 429/503/4xx, refused connections and timeouts were
# checked against the fake server); an older release raised "'Logging' object has no
# attribute 'debug'" there.
_EMBEDDING_ROUTE = {"ollama": "ollama", "openai-compatible": "openai", "local": "openai"}


def chat_route(target: ProviderTarget) -> str:
    """Return the ``provider/model`` string LiteLLM routes a chat call on."""
    return f"{_CHAT_ROUTE.get(target.provider, target.provider)}/{target.model}"


def embedding_route(target: ProviderTarget) -> str:
    """Return the ``provider/model`` string LiteLLM routes an embedding call on."""
    return f"{_EMBEDDING_ROUTE.get(target.provider, target.provider)}/{target.model}"


def supported_params(provider: str, model: str) -> frozenset[str] | None:
    """Return the OpenAI parameters LiteLLM passes to ``provider`` for ``model``; None if unknown.

    Imports LiteLLM (seconds): :func:`~spine.platform.models.litellm_facts.ask_litellm` runs
    it in a child process unless LiteLLM is loaded already. ``user`` is always taken: LiteLLM
    drops it where a provider has no such field.
    """
    import litellm

    route = _CHAT_ROUTE.get(provider, provider)
    try:
        found = litellm.get_supported_openai_params(model=model, custom_llm_provider=route)
    except Exception:  # an unknown provider or model: leave the check to the provider
        return None
    return frozenset(found) | {"user"} if found else None


def known_model_facts(provider: str, model: str) -> dict[str, Any] | None:
    """Return LiteLLM's bundled facts on a model (prices, context window), None if unknown.

    Imports LiteLLM (seconds): :func:`~spine.platform.models.litellm_facts.ask_litellm` runs
    it in a child process unless LiteLLM is loaded already.
    """
    import litellm

    prefix = _CHAT_ROUTE.get(provider, provider)
    for key in (f"{prefix}/{model}", f"{provider}/{model}", model):
        facts = litellm.model_cost.get(key)
        if isinstance(facts, dict) and facts.get("litellm_provider", prefix) in {prefix, provider}:
            return facts
    return None


class LiteLLMUpstream:
    """Makes one call to one target through LiteLLM, without retries; errors come back typed."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._described: set[str] = set()
        self._litellm: Any = None
        # LiteLLM otherwise downloads a price list on import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    async def _module(self) -> Any:
        # In a thread: on the event loop the import would block it, and every heartbeat,
        # past a short ack_wait, and JetStream would redeliver tasks that are still running.
        # Not from sys.modules: it holds LiteLLM half-imported while another thread imports
        # it; import_module waits for that import to finish.
        if self._litellm is None:
            self._litellm = await asyncio.to_thread(importlib.import_module, "litellm")
        return self._litellm

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Answer one chat call."""
        litellm = await self._module()
        self._describe(litellm, target)
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(
                model=chat_route(target),
                messages=request.messages,
                timeout=request.timeout or self._settings.models.timeout,
                num_retries=0,
                **target.kwargs,
                **params_for(target, request.params),
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = getattr(response, "usage", None)
        choice = response.choices[0]
        logger.info("model call %s answered in %.0f ms", chat_route(target), latency_ms)
        return Completion(
            text=model_text(choice.message.content) or "",
            model=target.model,
            provider=target.provider,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_ms=latency_ms,
            finish_reason=model_text(getattr(choice, "finish_reason", None)),
            tool_calls=tool_calls_of(getattr(choice.message, "tool_calls", None)),
        )

    async def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one chat call; a failure before or during the stream raises from the iteration.

        Usage comes on a delta near the end.
        """
        litellm = await self._module()
        self._describe(litellm, target)
        params = {k: v for k, v in request.params.items() if k != "stream_options"}
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(
                model=chat_route(target),
                messages=request.messages,
                timeout=request.timeout or self._settings.models.timeout,
                num_retries=0,
                stream=True,
                stream_options={"include_usage": True},
                **target.kwargs,
                **params_for(target, params),
            )
            async for chunk in response:
                yield delta_of(chunk)
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        logger.info(
            "model stream %s ended after %.0f ms",
            chat_route(target),
            (time.perf_counter() - started) * 1000,
        )

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.texts`` with one call; vectors come back as floats, in order.

        ``request.params`` go to the model as they are (the router puts ``dimensions`` there
        only for models that take it).
        """
        litellm = await self._module()
        self._describe(litellm, target, embedding=True)
        params = {k: v for k, v in request.params.items() if k != "encoding_format"}
        route = embedding_route(target)
        if route.startswith("openai/"):
            # The OpenAI SDK would retry a refused connection twice more on its own; the
            # router's fallback and breakers decide instead.
            params["max_retries"] = 0
        texts = request.texts
        started = time.perf_counter()
        try:
            response = await litellm.aembedding(
                model=route,
                input=texts,
                timeout=request.timeout or self._settings.models.timeout,
                num_retries=0,
                **target.kwargs,
                **params,
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        rows = sorted(response.data, key=lambda row: int(_get(row, "index") or 0))
        vectors = [[float(x) for x in _get(row, "embedding")] for row in rows]
        checked_vectors(vectors, texts, target)
        usage = getattr(response, "usage", None)
        logger.info(
            "embedding call %s (%d texts) answered in %.0f ms", route, len(texts), latency_ms
        )
        return Embedding(
            vectors=vectors,
            model=target.model,
            provider=target.provider,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            latency_ms=latency_ms,
        )

    def _describe(self, litellm: Any, target: ProviderTarget, *, embedding: bool = False) -> None:
        # LiteLLM asks Ollama about a model it has no price entry for on every call, and asks
        # localhost:11434 whatever api_base says (embeddings: with a blocking request, on the
        # event loop). A local model costs nothing: say so once.
        local = target.provider in ("ollama", "local")
        key = embedding_route(target) if embedding else chat_route(target)
        if not local or key in self._described:
            return
        routes = _EMBEDDING_ROUTE if embedding else _CHAT_ROUTE
        litellm.register_model(
            {
                key: {
                    "litellm_provider": routes[target.provider],
                    "mode": "embedding" if embedding else "chat",
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                }
            }
        )
        self._described.add(key)


def _get(row: Any, name: str) -> Any:
    # LiteLLM gives embedding rows as dicts or as objects, depending on the provider.
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def _headers_of(exc: Exception) -> Any:
    """The headers of the answer behind a LiteLLM exception (LiteLLM copies them onto the
    exceptions it maps; else the answer it kept)."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers


def _translate(exc: Exception, target: ProviderTarget, settings: Settings) -> Exception:
    from litellm import exceptions as llm

    where = target.kwargs.get("api_base") or target.provider
    message = without_secrets(str(exc), settings, target.kwargs.get("api_key"))
    transient = (
        llm.APIConnectionError,
        llm.Timeout,
        llm.RateLimitError,
        llm.ServiceUnavailableError,
        llm.InternalServerError,
        llm.BadGatewayError,
    )
    if says_too_long(message) and not isinstance(exc, llm.APIConnectionError | llm.Timeout):
        # Whatever the status (Ollama answers a too-long embedding input with a 500), the
        # request did not fit the model: the caller's input, not an outage of the model.
        return ContextWindowExceeded(
            f"{target.provider} model {target.model} cannot take the prompt: {message}",
            provider=target.provider,
            cause=type(exc).__name__,
        )
    if isinstance(exc, transient):
        hint = f" ({HOW_TO_CONFIGURE})" if isinstance(exc, llm.APIConnectionError) else ""
        failure = TransientFailure(
            f"{target.provider} at {where} failed: {message}{hint}",
            provider=target.provider,
            cause=type(exc).__name__,
        )
        if isinstance(exc, llm.RateLimitError):
            # The provider's own wait (Anthropic's and Groq's 429s say it): the gateway passes
            # it on, and a task's retry waits that long.
            wait = retry_after_of(_headers_of(exc))
            if wait is not None:
                failure.details["retry_after"] = wait
        return failure
    if isinstance(exc, llm.ContextWindowExceededError):
        return ContextWindowExceeded(
            f"{target.provider} model {target.model} cannot take the prompt: {message}",
            provider=target.provider,
            cause=type(exc).__name__,
        )
    if isinstance(exc, llm.AuthenticationError):
        return ProviderNotConfigured(
            f"{target.provider} rejected the credentials: check "
            f"GENAI_{target.provider.upper()}_API_KEY",
            provider=target.provider,
        )
    return PermanentFailure(
        f"{target.provider} refused the call: {message}",
        provider=target.provider,
        cause=type(exc).__name__,
    )
