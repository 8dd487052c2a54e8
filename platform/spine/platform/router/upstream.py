"""The seam the router calls for one call to one provider target."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from spine.platform.models import (
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
    ProviderTarget,
)

__all__ = ["Upstream"]


class Upstream(Protocol):
    """Makes one call to one provider target, raising translated errors."""

    async def close(self) -> None:
        """Close connections to the providers."""
        ...

    async def call(self, target: ProviderTarget, request: ChatRequest) -> Completion:
        """Call ``target`` once."""
        ...

    def stream(
        self, target: ProviderTarget, request: ChatRequest
    ) -> AsyncGenerator[CompletionDelta, None]:
        """Stream one call to ``target``; failures raise from the iteration."""
        ...

    async def embed(self, target: ProviderTarget, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.texts`` with one call to ``target``."""
        ...
