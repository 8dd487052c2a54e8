"""A metered stream: a routed stream that is settled, recorded and cached when it ends.

A stream is reserved when it opens (by :class:`~spine.platform.metering.metered.MeteredModels`)
and settled and recorded when it ends: with the usage of its final chunk, or an estimate (4
characters a token) when the provider sent none. One that fails mid-way or is abandoned is
charged for what it produced so far, and never cached; one that ended normally is cached like
any answer, and a cache hit is replayed as a one-delta stream (:func:`replayed`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spine.platform.errors import SpineError
from spine.platform.metering.budgets import Reservation
from spine.platform.metering.cache import CacheKey
from spine.platform.metering.context import ABANDONED, CacheStatus, CallContext
from spine.platform.metering.usage import OK
from spine.platform.models import Attempt, Completion, CompletionDelta
from spine.platform.router import CompletionStream, ModelSpec

__all__ = ["MeteredStream", "replayed"]

_CHARS_PER_TOKEN = 4


@dataclass(slots=True, kw_only=True)
class MeteredStream:
    """A routed stream that settles its budget and records its usage when it ends.

    Iterate it once; ``cost`` is known as soon as the iteration ended. ``finish`` is called
    once, with the outcome: it sets ``cost`` and returns the task that settles the stream's
    books (budget, usage row, outcome event, cache), which the caller does not wait for;
    ``MeteredModels.flush`` does.
    """

    inner: CompletionStream
    context: CallContext
    finish: Callable[[MeteredStream, str], asyncio.Task[None]]
    reservation: Reservation | None
    spec: ModelSpec | None
    prompt_tokens: int
    started: float
    cache: CacheStatus = "bypass"
    key: CacheKey | None = None
    routing: str = ""
    decision: dict[str, Any] | None = None
    cost: Decimal | None = None
    chars: int = 0
    texts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    _finished: bool = field(default=False, init=False)
    ended: float | None = field(default=None, init=False)
    """When the stream ended (``time.perf_counter``): its latency ends there, not at the books."""

    @property
    def model(self) -> str:
        """The model that answers."""
        return self.inner.model

    @property
    def provider(self) -> str:
        """The provider of the model that answers."""
        return self.inner.provider

    @property
    def strategy(self) -> str:
        """The strategy that ordered the plan."""
        return self.inner.strategy

    @property
    def fallback_path(self) -> list[Attempt]:
        """The models tried, the answering one last."""
        return self.inner.fallback_path

    @property
    def input_tokens(self) -> int:
        """Prompt tokens: as the provider reported them, else the estimate (see :meth:`tokens`)."""
        return self.tokens()[0]

    @property
    def output_tokens(self) -> int:
        """Answer tokens: as the provider reported them, else the estimate (see :meth:`tokens`)."""
        return self.tokens()[1]

    def tokens(self) -> tuple[int, int]:
        """Return the (prompt, answer) tokens the stream is charged for.

        The provider's usage when it sent any; else (llama-cpp-python's server never does, and
        not every Ollama) the prompt's estimate and 4 characters a token of what was streamed,
        so the usage chunk a client reads and the usage ledger tell the same numbers.
        """
        reported = self.inner.input_tokens, self.inner.output_tokens
        if any(reported):
            return reported
        return self.prompt_tokens, math.ceil(self.chars / _CHARS_PER_TOKEN)

    def answer(self, input_tokens: int, output_tokens: int, latency_ms: float) -> Completion:
        """Return what was streamed as one answer (to cache it)."""
        inner = self.inner
        return Completion(
            text="".join(self.texts),
            model=inner.model,
            provider=inner.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            strategy=inner.strategy,
            fallback_path=list(inner.fallback_path),
            finish_reason=inner.finish_reason,
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)],
        )

    def __aiter__(self) -> AsyncGenerator[CompletionDelta, None]:
        return self._deltas()

    async def _deltas(self) -> AsyncGenerator[CompletionDelta, None]:
        deltas = self.inner.__aiter__()
        outcome = ABANDONED
        try:
            async for delta in deltas:
                self._seen(delta)
                yield delta
            outcome = OK
        except SpineError as exc:
            outcome = exc.error_type
            raise
        finally:
            try:
                await deltas.aclose()
            finally:
                await self._finish(outcome)

    def _seen(self, delta: CompletionDelta) -> None:
        self.chars += len(delta.text)
        if delta.text:
            self.texts.append(delta.text)
        for part in delta.tool_calls:
            index = int(part.get("index") or 0)
            call = self.tool_calls.setdefault(
                index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if part.get("id"):
                call["id"] = part["id"]
            function = part.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = function["name"]
            arguments = str(function.get("arguments") or "")
            call["function"]["arguments"] += arguments
            self.chars += len(arguments)

    async def aclose(self) -> None:
        """Stop reading the model; an unfinished stream is settled as abandoned."""
        await self.inner.aclose()
        await self._finish(ABANDONED)

    async def _finish(self, outcome: str) -> None:
        if self._finished:
            return
        self._finished = True
        # The books are kept in a task of their own (a client that went away cancels the
        # response, not the books), and not waited for: an agent's next step, or the end of a
        # streamed response, need not wait for a settlement (~0.5 ms a call).
        self.finish(self, outcome)  # MeteredModels holds the task until it is done


def replayed(hit: Completion) -> CompletionStream:
    """Return a cached answer as a stream: everything in one delta, usage included."""
    tool_calls = [{"index": i, **call} for i, call in enumerate(hit.tool_calls)]
    finish = hit.finish_reason or ("tool_calls" if tool_calls else "stop")
    delta = CompletionDelta(
        text=hit.text,
        tool_calls=tool_calls,
        finish_reason=finish,
        input_tokens=hit.input_tokens,
        output_tokens=hit.output_tokens,
    )
    return CompletionStream(
        model=hit.model,
        provider=hit.provider,
        strategy=hit.strategy or "",
        fallback_path=list(hit.fallback_path),
        buffered=[delta],
        rest=None,
        settle=lambda _outcome: None,
    )
