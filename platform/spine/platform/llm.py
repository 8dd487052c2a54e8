"""Model calls through LiteLLM to the configured default provider.

This is the seam agents call (:class:`ModelClient`); the full router with strategies, fallback
chains, caching and budgets replaces what sits behind it without changing the seam. LiteLLM's
errors are translated here: transient ones (connection, timeout, 429, 5xx) are retryable,
everything else is permanent, and a provider that is not configured says what to set.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from spine.platform.errors import PermanentTaskError, ProviderNotConfigured, TransientTaskError
from spine.platform.settings import Provider, Settings

__all__ = ["Completion", "LiteLLMClient", "ModelClient", "ProviderTarget", "resolve_provider"]

logger = logging.getLogger(__name__)

HOW_TO_CONFIGURE = (
    "set GENAI_OLLAMA_URL to a reachable Ollama server (e.g. http://127.0.0.1:11434), or set "
    "GENAI_DEFAULT_PROVIDER with its key (GENAI_OPENAI_API_KEY, GENAI_ANTHROPIC_API_KEY, "
    "GENAI_GROQ_API_KEY; GENAI_AWS_REGION for bedrock)"
)


@dataclass(slots=True, kw_only=True)
class Completion:
    """What a model answered, and what it cost in tokens and time."""

    text: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)


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

    provider: Provider
    model: str
    kwargs: dict[str, Any]

    @property
    def litellm_model(self) -> str:
        """Return the ``provider/model`` string LiteLLM routes on."""
        prefix = "ollama_chat" if self.provider == "ollama" else self.provider
        return f"{prefix}/{self.model}"


def resolve_provider(settings: Settings, model: str | None = None) -> ProviderTarget:
    """Choose the default provider's target, or say exactly what is missing."""
    provider = settings.default_provider
    name = model or getattr(settings.models, provider)
    kwargs: dict[str, Any] = {}
    if provider == "ollama":
        if settings.ollama_url is None:
            raise ProviderNotConfigured(f"no model provider is configured: {HOW_TO_CONFIGURE}")
        kwargs["api_base"] = settings.ollama_url
    elif provider == "bedrock":
        if settings.aws_region is None:
            raise ProviderNotConfigured(f"bedrock needs GENAI_AWS_REGION; or {HOW_TO_CONFIGURE}")
        kwargs["aws_region_name"] = settings.aws_region
    else:
        key = getattr(settings, f"{provider}_api_key")
        if key is None:
            raise ProviderNotConfigured(
                f"GENAI_DEFAULT_PROVIDER={provider} needs GENAI_{provider.upper()}_API_KEY; "
                f"or {HOW_TO_CONFIGURE}"
            )
        kwargs["api_key"] = key.get_secret_value()
        if provider == "openai" and settings.openai_base_url:
            kwargs["api_base"] = settings.openai_base_url
    return ProviderTarget(provider=provider, model=name, kwargs=kwargs)


class LiteLLMClient:
    """A :class:`ModelClient` that calls the default provider through LiteLLM."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._described: set[str] = set()
        # LiteLLM otherwise downloads a price list on import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    async def warm_up(self) -> None:
        """Import LiteLLM in a thread.

        The import takes seconds; done lazily inside the first task it would block the event
        loop, and every heartbeat, past a short ack_wait, and JetStream would redeliver tasks
        that are still running.
        """
        await asyncio.to_thread(importlib.import_module, "litellm")

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """Answer a chat conversation with one call; errors come back typed."""
        import litellm  # a 4 s import that only model-calling processes pay

        target = resolve_provider(self._settings, model)
        self._describe(litellm, target)
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(
                model=target.litellm_model,
                messages=messages,
                timeout=self._settings.models.timeout,
                num_retries=0,
                **target.kwargs,
                **params,
            )
        except Exception as exc:
            raise _translate(exc, target, self._settings) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = getattr(response, "usage", None)
        text = response.choices[0].message.content or ""
        logger.info("model call %s answered in %.0f ms", target.litellm_model, latency_ms)
        return Completion(
            text=text,
            model=target.model,
            provider=target.provider,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_ms=latency_ms,
        )

    def _describe(self, litellm: Any, target: ProviderTarget) -> None:
        # LiteLLM asks Ollama about a model it has no price entry for on every call, and asks
        # localhost:11434 whatever api_base says. A local model costs nothing: say so once.
        if target.provider != "ollama" or target.litellm_model in self._described:
            return
        litellm.register_model(
            {
                target.litellm_model: {
                    "litellm_provider": "ollama_chat",
                    "mode": "chat",
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                }
            }
        )
        self._described.add(target.litellm_model)


def _translate(exc: Exception, target: ProviderTarget, settings: Settings) -> Exception:
    from litellm import exceptions as llm

    where = target.kwargs.get("api_base") or target.provider
    message = _without_secrets(str(exc), settings)
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


def _without_secrets(text: str, settings: Settings) -> str:
    for secret in (settings.openai_api_key, settings.anthropic_api_key, settings.groq_api_key):
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text[:500]
