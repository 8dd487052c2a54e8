"""Model calls through LiteLLM: one call to one provider, and the default provider's client.

This is the seam agents call (:class:`ModelClient`); the model router
(:mod:`spine.platform.router`) implements the same seam and makes each of its calls through
:meth:`LiteLLMClient.call`. Chat calls to the providers that speak OpenAI's protocol
(:data:`NATIVE_PROVIDERS`) skip LiteLLM and go through the ``openai`` SDK
(:mod:`spine.platform.openai_upstream`), which translates its errors the same way. LiteLLM's
errors are translated here: transient ones (connection, timeout, 429, 5xx) are retryable, a
prompt too long for the model is :class:`~spine.platform.errors.ContextWindowExceeded`,
everything else is permanent, and a provider that is not configured says what to set.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol

from spine.platform.errors import (
    ContextWindowExceeded,
    PermanentTaskError,
    ProviderNotConfigured,
    TransientTaskError,
)
from spine.platform.settings import Provider, Settings

if TYPE_CHECKING:
    from spine.platform.openai_upstream import OpenAIUpstream

__all__ = [
    "NATIVE_PROVIDERS",
    "Attempt",
    "Completion",
    "CompletionDelta",
    "Embedding",
    "LiteLLMClient",
    "ModelClient",
    "ModelProvider",
    "ProviderTarget",
    "configured_providers",
    "default_provider",
    "known_model_facts",
    "provider_target",
    "resolve_provider",
    "supported_params",
]

logger = logging.getLogger(__name__)

HOW_TO_CONFIGURE = (
    "set GENAI_OLLAMA_URL to a reachable Ollama server (e.g. http://127.0.0.1:11434), or set "
    "GENAI_DEFAULT_PROVIDER with its key (GENAI_OPENAI_API_KEY, GENAI_ANTHROPIC_API_KEY, "
    "GENAI_GROQ_API_KEY; GENAI_AWS_REGION for bedrock); for a toy local model, install "
    "'genai-spine[local]' and run `spine up`"
)

# The providers a model can live at: the settings' providers plus any OpenAI-compatible server.
# ``local-embed`` is the in-process embedding model (:mod:`spine.platform.local_embeddings`).
ModelProvider = Literal[
    "ollama", "openai", "anthropic", "bedrock", "groq", "local", "openai-compatible", "local-embed"
]

_PROVIDERS: tuple[Provider, ...] = ("ollama", "openai", "anthropic", "bedrock", "groq", "local")
# LiteLLM's route for each provider that is not its own: the embedded local model is a
# llama-cpp-python server speaking OpenAI's protocol, like any OpenAI-compatible server.
_LITELLM_PREFIX = {"ollama": "ollama_chat", "openai-compatible": "openai", "local": "openai"}
# Embeddings take LiteLLM's plain Ollama route (``ollama_chat`` has none). Its Ollama embedding
# path works in LiteLLM 1.110.2 (answers, 429/503/4xx, refused connections and timeouts were
# checked against the fake server); an older release raised "'Logging' object has no
# attribute 'debug'" there.
_EMBEDDING_PREFIX = {"ollama": "ollama", "openai-compatible": "openai", "local": "openai"}
NATIVE_PROVIDERS: frozenset[str] = frozenset({"openai", "openai-compatible", "local"})
"""The providers whose chat calls go through the ``openai`` SDK instead of LiteLLM."""


@dataclass(slots=True, kw_only=True, frozen=True)
class Attempt:
    """One model the router tried for a call, and why it moved on (None: it answered)."""

    model: str
    provider: str
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class Completion:
    """What a model answered, and what it cost in tokens and time.

    ``fallback_path`` lists every model tried for the call in order, the one that answered
    last; ``strategy`` is the routing strategy that ordered them (None without a router).
    ``cache_hit`` says the answer came from the response cache, not from a model call;
    ``cost`` (USD) is set by the metered path (:mod:`spine.platform.calls`), None elsewhere.
    """

    text: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)
    strategy: str | None = None
    fallback_path: list[Attempt] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    cache_hit: bool = False
    cost: Decimal | None = None


@dataclass(slots=True, kw_only=True)
class Embedding:
    """Vectors for a list of texts, in order, and what they cost in tokens and time.

    ``model``, ``strategy``, ``fallback_path`` and ``cost`` mean what they mean on
    :class:`Completion`.
    """

    vectors: list[list[float]]
    model: str
    provider: str
    input_tokens: int = 0
    latency_ms: float = 0.0
    strategy: str | None = None
    fallback_path: list[Attempt] = field(default_factory=list)
    cost: Decimal | None = None

    @property
    def dimensions(self) -> int:
        """The size of the vectors (0 when there are none)."""
        return len(self.vectors[0]) if self.vectors else 0


@dataclass(slots=True, kw_only=True)
class CompletionDelta:
    """One piece of a streamed answer, in provider-independent form.

    ``tool_calls`` holds OpenAI-shaped tool call deltas (``index``, and ``id``, ``type``,
    ``function.name``/``function.arguments`` where given); the usage counts arrive once, on
    the delta that carries them.
    """

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def has_output(self) -> bool:
        """Tell whether the delta carries text or a tool call (what a client sees)."""
        return bool(self.text or self.tool_calls)


class ModelClient(Protocol):
    """The seam agents call to reach a model."""

    async def warm_up(self) -> None:
        """Do slow one-time set-up before the first call, off the event loop."""
        ...

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """Answer a chat conversation."""
        ...


@dataclass(slots=True, kw_only=True)
class ProviderTarget:
    """Where LiteLLM should send a call: its model string and connection arguments."""

    provider: ModelProvider
    model: str
    kwargs: dict[str, Any]

    @property
    def litellm_model(self) -> str:
        """Return the ``provider/model`` string LiteLLM routes on."""
        return f"{_LITELLM_PREFIX.get(self.provider, self.provider)}/{self.model}"

    @property
    def litellm_embedding_model(self) -> str:
        """Return the ``provider/model`` string LiteLLM routes an embedding call on."""
        return f"{_EMBEDDING_PREFIX.get(self.provider, self.provider)}/{self.model}"


def configured_providers(settings: Settings) -> list[Provider]:
    """Name the providers whose URL, key or region is set, in a fixed order."""
    return [p for p in _PROVIDERS if _provider_setting(settings, p) is not None]


def default_provider(settings: Settings) -> Provider:
    """Return the provider of calls that name no model.

    ``GENAI_DEFAULT_PROVIDER`` when it is set; left at its default (``ollama``) while Ollama is
    not configured but the embedded local model runs, the local model.
    """
    chosen = settings.default_provider
    if "default_provider" in settings.model_fields_set or _provider_setting(settings, chosen):
        return chosen
    return "local" if settings.local_model.url is not None else chosen


def _provider_setting(settings: Settings, provider: Provider) -> object | None:
    if provider == "ollama":
        return settings.ollama_url
    if provider == "local":
        return settings.local_model.url
    if provider == "bedrock":
        return settings.aws_region
    key: object | None = getattr(settings, f"{provider}_api_key")
    return key


def provider_target(
    settings: Settings,
    provider: ModelProvider,
    model: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
) -> ProviderTarget:
    """Return the target for ``model`` at ``provider``, or say exactly what is missing.

    ``api_base`` and ``api_key`` (from a models file) override the settings' connection.
    """
    kwargs: dict[str, Any] = {}
    if provider == "local-embed":
        return ProviderTarget(provider=provider, model=model, kwargs=kwargs)
    if provider == "ollama":
        base = api_base or settings.ollama_url
        if base is None:
            raise ProviderNotConfigured(f"no model provider is configured: {HOW_TO_CONFIGURE}")
        kwargs["api_base"] = base
    elif provider == "bedrock":
        if settings.aws_region is None:
            raise ProviderNotConfigured(f"bedrock needs GENAI_AWS_REGION; or {HOW_TO_CONFIGURE}")
        kwargs["aws_region_name"] = settings.aws_region
    elif provider in ("openai-compatible", "local"):
        base = api_base or (settings.local_model.url if provider == "local" else None)
        if base is None:
            raise ProviderNotConfigured(
                "the local model is not running: install 'genai-spine[local]' and run "
                f"`spine up`, or set GENAI_LOCAL_MODEL__URL; or {HOW_TO_CONFIGURE}"
                if provider == "local"
                else f"model {model!r} at an OpenAI-compatible server needs api_base"
            )
        kwargs["api_base"] = base
        # The OpenAI client insists on a key even where the server wants none.
        kwargs["api_key"] = api_key or "none"
    else:
        secret = getattr(settings, f"{provider}_api_key")
        key = api_key or (secret.get_secret_value() if secret is not None else None)
        if not key:
            raise ProviderNotConfigured(
                f"GENAI_DEFAULT_PROVIDER={provider} needs GENAI_{provider.upper()}_API_KEY; "
                f"or {HOW_TO_CONFIGURE}"
            )
        kwargs["api_key"] = key
        base = api_base or (settings.openai_base_url if provider == "openai" else None)
        if base:
            kwargs["api_base"] = base
    return ProviderTarget(provider=provider, model=model, kwargs=kwargs)


def supported_params(provider: str, model: str) -> frozenset[str] | None:
    """Return the OpenAI parameters LiteLLM passes to ``provider`` for ``model``; None if unknown.

    Imports LiteLLM (seconds): call it after :meth:`LiteLLMClient.warm_up`. ``user`` is always
    taken: LiteLLM drops it where a provider has no such field.
    """
    import litellm

    route = _LITELLM_PREFIX.get(provider, provider)
    try:
        found = litellm.get_supported_openai_params(model=model, custom_llm_provider=route)
    except Exception:  # an unknown provider or model: leave the check to the provider
        return None
    return frozenset(found) | {"user"} if found else None


def known_model_facts(provider: str, model: str) -> dict[str, Any] | None:
    """Return LiteLLM's bundled facts on a model (prices, context window), None if unknown.

    Imports LiteLLM (seconds): call it after :meth:`LiteLLMClient.warm_up`.
    """
    import litellm

    prefix = _LITELLM_PREFIX.get(provider, provider)
    for key in (f"{prefix}/{model}", f"{provider}/{model}", model):
        facts = litellm.model_cost.get(key)
        if isinstance(facts, dict) and facts.get("litellm_provider", prefix) in {prefix, provider}:
            return facts
    return None


def resolve_provider(settings: Settings, model: str | None = None) -> ProviderTarget:
    """Choose the default provider's target, or say exactly what is missing."""
    provider = default_provider(settings)
    return provider_target(settings, provider, model or getattr(settings.models, provider))


class LiteLLMClient:
    """A :class:`ModelClient` that calls the default provider through LiteLLM.

    :meth:`call` makes one call to any target; the model router calls it for each model it
    tries, so both share the call, its logging and its error translation.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._described: set[str] = set()
        self._native: OpenAIUpstream | None = None
        # LiteLLM otherwise downloads a price list on import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    async def warm_up(self) -> None:
        """Import LiteLLM in a thread.

        The import takes seconds; done lazily inside the first task it would block the event
        loop, and every heartbeat, past a short ack_wait, and JetStream would redeliver tasks
        that are still running.
        """
        await asyncio.to_thread(importlib.import_module, "litellm")
        await asyncio.to_thread(importlib.import_module, "spine.platform.openai_upstream")

    async def close(self) -> None:
        """Close the connections of the OpenAI-compatible upstreams."""
        if self._native is not None:
            await self._native.close()

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """Answer a chat conversation with one call; errors come back typed."""
        return await self.call(resolve_provider(self._settings, model), messages, **params)

    async def call(
        self, target: ProviderTarget, messages: list[dict[str, Any]], **params: Any
    ) -> Completion:
        """Make one call to ``target`` without retries; errors come back typed.

        ``timeout`` (seconds) overrides ``GENAI_MODELS__TIMEOUT`` for this call.
        """
        if target.provider in NATIVE_PROVIDERS:
            return await self._openai().call(target, messages, **params)
        import litellm  # a 4 s import that only model-calling processes pay

        self._describe(litellm, target)
        timeout = params.pop("timeout", None) or self._settings.models.timeout
        params = _for_provider(target, params)
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(
                model=target.litellm_model,
                messages=messages,
                timeout=timeout,
                num_retries=0,
                **target.kwargs,
                **params,
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = getattr(response, "usage", None)
        choice = response.choices[0]
        text = choice.message.content or ""
        logger.info("model call %s answered in %.0f ms", target.litellm_model, latency_ms)
        return Completion(
            text=text,
            model=target.model,
            provider=target.provider,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_ms=latency_ms,
            finish_reason=getattr(choice, "finish_reason", None),
            tool_calls=_tool_calls(getattr(choice.message, "tool_calls", None)),
        )

    async def stream(
        self, target: ProviderTarget, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one call to ``target`` without retries; errors come back typed.

        A failure before the first delta and one in the middle of the stream both raise the
        translated error from the iteration; usage comes on a delta near the end.
        """
        if target.provider in NATIVE_PROVIDERS:
            native = self._openai().stream(target, messages, **params)
            try:
                async for delta in native:
                    yield delta
            finally:
                await native.aclose()  # closes the upstream response when the caller stops
            return
        import litellm

        self._describe(litellm, target)
        timeout = params.pop("timeout", None) or self._settings.models.timeout
        params.pop("stream_options", None)
        params = _for_provider(target, params)
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(
                model=target.litellm_model,
                messages=messages,
                timeout=timeout,
                num_retries=0,
                stream=True,
                stream_options={"include_usage": True},
                **target.kwargs,
                **params,
            )
            async for chunk in response:
                yield _delta(chunk)
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        logger.info(
            "model stream %s ended after %.0f ms",
            target.litellm_model,
            (time.perf_counter() - started) * 1000,
        )

    async def embed(self, target: ProviderTarget, texts: list[str], **params: Any) -> Embedding:
        """Embed ``texts`` with one call to ``target`` without retries; errors come back typed.

        ``timeout`` (seconds) overrides ``GENAI_MODELS__TIMEOUT``; ``dimensions`` is passed on
        (only models that take it should get it). Vectors come back as floats.
        """
        import litellm

        self._describe(litellm, target, embedding=True)
        timeout = params.pop("timeout", None) or self._settings.models.timeout
        params.pop("encoding_format", None)
        if target.litellm_embedding_model.startswith("openai/"):
            # The OpenAI SDK would retry a refused connection twice more on its own; the
            # router's fallback and breakers decide instead.
            params["max_retries"] = 0
        started = time.perf_counter()
        try:
            response = await litellm.aembedding(
                model=target.litellm_embedding_model,
                input=texts,
                timeout=timeout,
                num_retries=0,
                **target.kwargs,
                **params,
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        rows = sorted(response.data, key=lambda row: int(_get(row, "index") or 0))
        vectors = [[float(x) for x in _get(row, "embedding")] for row in rows]
        if len(vectors) != len(texts):
            raise PermanentTaskError(
                f"{target.provider} model {target.model} returned {len(vectors)} vectors "
                f"for {len(texts)} texts",
                provider=target.provider,
            )
        usage = getattr(response, "usage", None)
        logger.info(
            "embedding call %s (%d texts) answered in %.0f ms",
            target.litellm_embedding_model,
            len(texts),
            latency_ms,
        )
        return Embedding(
            vectors=vectors,
            model=target.model,
            provider=target.provider,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            latency_ms=latency_ms,
        )

    def _openai(self) -> OpenAIUpstream:
        if self._native is None:
            from spine.platform.openai_upstream import OpenAIUpstream

            self._native = OpenAIUpstream(self._settings)
        return self._native

    def _describe(self, litellm: Any, target: ProviderTarget, *, embedding: bool = False) -> None:
        # LiteLLM asks Ollama about a model it has no price entry for on every call, and asks
        # localhost:11434 whatever api_base says (embeddings: with a blocking request, on the
        # event loop). A local model costs nothing: say so once.
        local = target.provider in ("ollama", "local")
        key = target.litellm_embedding_model if embedding else target.litellm_model
        if not local or key in self._described:
            return
        prefixes = _EMBEDDING_PREFIX if embedding else _LITELLM_PREFIX
        litellm.register_model(
            {
                key: {
                    "litellm_provider": prefixes[target.provider],
                    "mode": "embedding" if embedding else "chat",
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                }
            }
        )
        self._described.add(key)


def _for_provider(target: ProviderTarget, params: dict[str, Any]) -> dict[str, Any]:
    """Adapt OpenAI parameters a provider's server spells its own way.

    llama-cpp-python's server rejects OpenAI's ``{"type": "json_schema", "json_schema":
    {"schema": ...}}`` (a 500, which would count as an outage) and takes the same constraint
    as ``{"type": "json_object", "schema": ...}``.
    """
    response_format = params.get("response_format")
    if target.provider != "local" or not isinstance(response_format, dict):
        return params
    if response_format.get("type") != "json_schema":
        return params
    wanted = response_format.get("json_schema") or {}
    adapted: dict[str, Any] = {"type": "json_object"}
    if isinstance(wanted, dict) and isinstance(wanted.get("schema"), dict):
        adapted["schema"] = wanted["schema"]
    return {**params, "response_format": adapted}


def _get(row: Any, name: str) -> Any:
    # LiteLLM gives embedding rows as dicts or as objects, depending on the provider.
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def _tool_calls(calls: Any, *, delta: bool = False) -> list[dict[str, Any]]:
    """Render LiteLLM's tool calls (or tool call deltas) as OpenAI-shaped dicts."""
    rendered: list[dict[str, Any]] = []
    for position, call in enumerate(calls or []):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        arguments = getattr(function, "arguments", None)
        if not delta:
            rendered.append(
                {
                    "id": getattr(call, "id", None) or f"call_{position}",
                    "type": "function",
                    "function": {"name": name or "", "arguments": arguments or ""},
                }
            )
            continue
        part: dict[str, Any] = {"index": getattr(call, "index", None) or position}
        if getattr(call, "id", None):
            part["id"] = call.id
            part["type"] = "function"
        fn: dict[str, Any] = {}
        if name:
            fn["name"] = name
        if arguments is not None:
            fn["arguments"] = arguments
        if fn:
            part["function"] = fn
        rendered.append(part)
    return rendered


def _delta(chunk: Any) -> CompletionDelta:
    usage = getattr(chunk, "usage", None)
    found = CompletionDelta(
        input_tokens=getattr(usage, "prompt_tokens", None) if usage else None,
        output_tokens=getattr(usage, "completion_tokens", None) if usage else None,
    )
    if chunk.choices:
        choice = chunk.choices[0]
        found.text = getattr(choice.delta, "content", None) or ""
        found.tool_calls = _tool_calls(getattr(choice.delta, "tool_calls", None), delta=True)
        found.finish_reason = choice.finish_reason
    return found


def _translate(exc: Exception, target: ProviderTarget, settings: Settings) -> Exception:
    from litellm import exceptions as llm

    where = target.kwargs.get("api_base") or target.provider
    message = _without_secrets(str(exc), settings, target.kwargs.get("api_key"))
    transient = (
        llm.APIConnectionError,
        llm.Timeout,
        llm.RateLimitError,
        llm.ServiceUnavailableError,
        llm.InternalServerError,
        llm.BadGatewayError,
    )
    if isinstance(exc, transient):
        hint = f" ({HOW_TO_CONFIGURE})" if isinstance(exc, llm.APIConnectionError) else ""
        return TransientTaskError(
            f"{target.provider} at {where} failed: {message}{hint}",
            provider=target.provider,
            cause=type(exc).__name__,
        )
    if isinstance(exc, llm.ContextWindowExceededError) or (
        # LiteLLM maps OpenAI's context_length_exceeded, not Ollama's plain 400 saying the same.
        isinstance(exc, llm.BadRequestError) and "context length" in message.lower()
    ):
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
    return PermanentTaskError(
        f"{target.provider} refused the call: {message}",
        provider=target.provider,
        cause=type(exc).__name__,
    )


def _without_secrets(text: str, settings: Settings, key: str | None = None) -> str:
    secrets = [settings.openai_api_key, settings.anthropic_api_key, settings.groq_api_key]
    values = [s.get_secret_value() for s in secrets if s is not None] + [key or ""]
    for value in values:
        if value:
            text = text.replace(value, "***")
    return text[:500]
