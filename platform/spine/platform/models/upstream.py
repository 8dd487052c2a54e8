"""One call to one provider target: posted as it is where the provider speaks OpenAI's
protocol, through LiteLLM for the rest.

:class:`UpstreamClient` is what the model router calls for each model it tries. Chat and
embedding calls to :data:`OPENAI_PROTOCOL_PROVIDERS` (Ollama among them, at its ``/v1``
routes) skip LiteLLM (it costs several ms of CPU a call above a plain HTTP call); Anthropic,
Bedrock and Groq take LiteLLM. Each library is imported on the first call
that needs it, in a thread (seconds for LiteLLM; the event loop, and with it every heartbeat
of the tasks in hand, goes on): a process that makes no call through one never loads it. Both
paths translate their errors to the same :class:`~spine.platform.errors.RunFailure` classes
with the same ``cause`` names.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from spine.platform.models.litellm_upstream import LiteLLMUpstream
from spine.platform.models.providers import ProviderTarget, resolve_provider
from spine.platform.models.values import (
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
)
from spine.platform.settings import Settings

if TYPE_CHECKING:
    from spine.platform.models.openai_upstream import OpenAIUpstream

__all__ = ["OPENAI_PROTOCOL_PROVIDERS", "UpstreamClient"]

OPENAI_PROTOCOL_PROVIDERS: frozenset[str] = frozenset(
    {"openai", "openai-compatible", "local", "ollama"}
)
"""The providers called at their OpenAI-protocol routes directly instead of through LiteLLM."""


class UpstreamClient:
    """Makes one call to one provider target, without retries; errors come back typed."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._litellm = LiteLLMUpstream(settings)
        self._direct: OpenAIUpstream | None = None

    async def close(self) -> None:
        """Close the connections of the OpenAI-compatible upstreams."""
        if self._direct is not None:
            await self._direct.close()

    async def complete(self, request: ChatRequest) -> Completion:
        """Answer with the default provider (or ``request.model`` there), in one call."""
        return await self.call(resolve_provider(self._settings, request.model), request)

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Answer one chat call at ``target``."""
        if target.provider in OPENAI_PROTOCOL_PROVIDERS:
            return await (await self._openai()).call(target, request)
        return await self._litellm.call(target, request)

    async def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one chat call at ``target``; failures raise from the iteration."""
        deltas = (
            (await self._openai()).stream(target, request)
            if target.provider in OPENAI_PROTOCOL_PROVIDERS
            else self._litellm.stream(target, request)
        )
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()  # closes the upstream response when the caller stops

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.texts`` with one call at ``target``."""
        if target.provider in OPENAI_PROTOCOL_PROVIDERS:
            return await (await self._openai()).embed(target, request)
        return await self._litellm.embed(target, request)

    async def _openai(self) -> OpenAIUpstream:
        if self._direct is None:
            # Its import (aiohttp) takes a moment: in a thread, on the first call.
            module = await asyncio.to_thread(
                importlib.import_module, "spine.platform.models.openai_upstream"
            )
            if self._direct is None:
                self._direct = module.OpenAIUpstream(self._settings)
        return self._direct
