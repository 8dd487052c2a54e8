"""The model calls of one caller, as an agent makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spine.platform.metering.context import CallContext
from spine.platform.metering.streams import MeteredStream
from spine.platform.models import ChatRequest, Completion, Embedding, EmbeddingRequest

if TYPE_CHECKING:
    from spine.platform.metering.metered import MeteredModels

__all__ = ["CallerModels"]


class CallerModels:
    """The model calls of one caller (an agent's task): routed, cached, budgeted and recorded.

    Agents reach models through this, so they share the gateway's router, cache, budgets and
    usage ledger; the answer carries its cost. Options are spelled as keywords here, once, and
    travel below as one :class:`~spine.platform.models.ChatRequest`.
    """

    def __init__(self, models: MeteredModels, context: CallContext) -> None:
        self._models = models
        self.context = context

    async def warm_up(self) -> None:
        """Warm the shared router up."""
        await self._models.warm_up()

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any
    ) -> Completion:
        """Answer through the router; raises what :meth:`MeteredModels.complete` raises."""
        request = ChatRequest.of(messages, model=model, **options)
        metered = await self._models.complete(request, self.context)
        metered.completion.cost = metered.cost
        metered.completion.cache_hit = metered.cache == "hit"
        return metered.completion

    async def stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **options: Any
    ) -> MeteredStream:
        """Open a streamed answer through the router; see :meth:`MeteredModels.stream`."""
        request = ChatRequest.of(messages, model=model, **options)
        return await self._models.stream(request, self.context)

    async def embed(self, request: EmbeddingRequest) -> Embedding:
        """Embed texts through the router; raises what :meth:`MeteredModels.embed` raises."""
        metered = await self._models.embed(request, self.context)
        return metered.embedding
