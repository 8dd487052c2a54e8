"""The ``completion`` agent: one OpenAI chat-completions request, answered as OpenAI would.

Its input is the body of a ``POST /v1/chat/completions`` and its result the ``chat.completion``
object, so a batch line (see :mod:`spine.platform.batches.store`) runs as one of these tasks and its
result is the line's response body as it is. The call goes through the shared router like the
gateway's: routed (``model: "auto"`` and ``spine_strategy`` work), cached, budgeted and recorded
as the task's.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

from spine.agents.base import RunContext
from spine.platform.models.openai_wire import ChatCompletionRequest, completion_body

__all__ = ["CompletionAgent", "CompletionInput"]


class CompletionInput(ChatCompletionRequest):
    """A chat-completions body that a task can run: unknown fields refused, no streaming."""

    @model_validator(mode="after")
    def _runnable(self) -> CompletionInput:
        unknown = self.unknown_parameters()
        if unknown:
            raise PydanticCustomError(
                "unknown_parameter",
                "unrecognized request argument(s): {names}",
                {"names": ", ".join(unknown)},
            )
        if self.stream:
            raise PydanticCustomError(
                "stream_unsupported", "a task cannot stream its answer; leave 'stream' out"
            )
        return self


class CompletionAgent:
    """Answers one chat-completions request with one routed model call."""

    name: ClassVar[str] = "completion"
    description: ClassVar[str] = (
        "Answer one OpenAI chat-completions request body; the result is the chat.completion "
        "object. Batch lines run as these tasks."
    )
    input_model: ClassVar[type[BaseModel]] = CompletionInput

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Make the model call and return OpenAI's ``chat.completion`` object."""
        assert isinstance(request, CompletionInput)
        params = request.params()
        if request.spine_strategy:
            params["strategy"] = request.spine_strategy
        answer = await ctx.step(
            ctx.models.complete(request.messages_out(), model=request.routed_model, **params)
        )
        ctx.emit_at_end(
            "model_call",
            {
                "model": answer.model,
                "provider": answer.provider,
                "strategy": answer.strategy,
                "fallback_path": [a.model for a in answer.fallback_path[:-1]],
                "cached": answer.cache_hit,
                "latency_ms": round(answer.latency_ms, 1),
                "input_tokens": answer.input_tokens,
                "output_tokens": answer.output_tokens,
                "cost_usd": str(answer.cost) if answer.cost is not None else None,
            },
        )
        # The task's id names the answer: a rerun of the task gives the same id.
        completion_id = f"chatcmpl-{ctx.task.id.replace('-', '')}"
        return completion_body(
            answer,
            completion_id=completion_id,
            created=int(time.time()),
            functions=request.uses_functions,
        )
