"""Where a model call goes: the configured providers, the default one, and a call's target.

A provider that is not configured is a :class:`~spine.platform.errors.ProviderNotConfigured`
saying exactly what to set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spine.platform.errors import ProviderNotConfigured
from spine.platform.models.values import ModelProvider
from spine.platform.settings import Provider, Settings

__all__ = [
    "HOW_TO_CONFIGURE",
    "LOCAL_SERVER_HINT",
    "TOOL_MODEL_HINT",
    "ProviderTarget",
    "configured_providers",
    "default_provider",
    "provider_target",
    "resolve_provider",
    "without_secrets",
]

HOW_TO_CONFIGURE = (
    "set GENAI_OLLAMA_URL to a reachable Ollama server (e.g. http://127.0.0.1:11434), or set "
    "GENAI_DEFAULT_PROVIDER with its key (GENAI_OPENAI_API_KEY, GENAI_ANTHROPIC_API_KEY, "
    "GENAI_GROQ_API_KEY; GENAI_AWS_REGION for bedrock); for a toy local model, install "
    "'genai-spine[local]' and run `spine up`"
)
LOCAL_SERVER_HINT = (
    "the embedded local model's server is not answering; `spine up` restarts it (`spine status` "
    "shows it)"
)
TOOL_MODEL_HINT = (
    "set GENAI_OLLAMA_URL to an Ollama server with a tool-calling model (e.g. llama3.2), or a "
    "cloud provider and its key (the embedded toy model cannot choose tools)"
)

_PROVIDERS: tuple[Provider, ...] = ("ollama", "openai", "anthropic", "bedrock", "groq", "local")


@dataclass(slots=True, kw_only=True)
class ProviderTarget:
    """Where one call goes: the provider, its name for the model, and connection arguments.

    ``kwargs`` uses LiteLLM's names (``api_base``, ``api_key``, ``aws_region_name``); the
    ``openai`` SDK path reads the same ones.
    """

    provider: ModelProvider
    model: str
    kwargs: dict[str, Any]


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


def resolve_provider(settings: Settings, model: str | None = None) -> ProviderTarget:
    """Choose the default provider's target, or say exactly what is missing."""
    provider = default_provider(settings)
    return provider_target(settings, provider, model or getattr(settings.models, provider))


def without_secrets(text: str, settings: Settings, key: str | None = None) -> str:
    """Return ``text`` with every configured key (and ``key``) masked, cut to 500 characters."""
    secrets = [settings.openai_api_key, settings.anthropic_api_key, settings.groq_api_key]
    values = [s.get_secret_value() for s in secrets if s is not None] + [key or ""]
    for value in values:
        if value:
            text = text.replace(value, "***")
    return text[:500]
