"""Streamed answers: the router commits to a model only once it has produced output.

:func:`first_output` reads a model's stream up to its first text or tool call; a failure
before that lets the router try the next model, and the client never knows. From then on the
answer is a :class:`CompletionStream` bound to that model: a failure in the middle of it is
raised from the iteration, because the client has already seen tokens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from spine.platform.errors import SpineError
from spine.platform.models import Attempt, CompletionDelta

__all__ = ["CompletionStream", "StreamOutcome", "first_output"]

logger = logging.getLogger(__name__)

StreamOutcome = Literal["succeeded", "failed", "refused", "abandoned"]


async def first_output(
    deltas: AsyncIterator[CompletionDelta],
) -> tuple[list[CompletionDelta], bool]:
    """Read ``deltas`` up to the first one with output; return them and whether it ended."""
    buffered: list[CompletionDelta] = []
    async for delta in deltas:
        buffered.append(delta)
        if delta.has_output:
            return buffered, False
    return buffered, True


@dataclass(slots=True, kw_only=True)
class CompletionStream:
    """A streamed answer from the model that produced its first output.

    ``model``, ``provider``, ``strategy`` and ``fallback_path`` are known before the first
    delta is read. Iterate once; a failure after the first output raises the translated
    :class:`~spine.platform.errors.SpineError`. ``settle`` hears how the stream ended, once.
    """

    model: str
    provider: str
    strategy: str
    fallback_path: list[Attempt]
    buffered: list[CompletionDelta]
    rest: AsyncGenerator[CompletionDelta, None] | None
    settle: Callable[[StreamOutcome], None]
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    _settled: bool = field(default=False, init=False)

    def __aiter__(self) -> AsyncGenerator[CompletionDelta, None]:
        return self._deltas()

    async def _deltas(self) -> AsyncGenerator[CompletionDelta, None]:
        try:
            for delta in self.buffered:
                yield self._seen(delta)
            self.buffered = []
            if self.rest is not None:
                async for delta in self.rest:
                    yield self._seen(delta)
        except SpineError as exc:
            logger.warning("model %s failed mid-stream: %s", self.model, exc.message)
            self._finish("failed" if exc.retryable else "refused")
            raise
        except BaseException:
            await self.aclose()
            raise
        self._finish("succeeded")

    async def aclose(self) -> None:
        """Stop reading the model's stream; an unfinished stream counts as abandoned."""
        self._finish("abandoned")
        if self.rest is not None:
            await self.rest.aclose()

    def _seen(self, delta: CompletionDelta) -> CompletionDelta:
        if delta.input_tokens is not None:
            self.input_tokens = delta.input_tokens
        if delta.output_tokens is not None:
            self.output_tokens = delta.output_tokens
        self.finish_reason = delta.finish_reason or self.finish_reason
        return delta

    def _finish(self, outcome: StreamOutcome) -> None:
        if not self._settled:
            self._settled = True
            self.settle(outcome)
