"""The ``chat`` agent: one routed model call with the task's prompt or messages."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spine.agents.base import RunContext

__all__ = ["ChatAgent", "ChatInput", "ChatMessage"]


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatInput(BaseModel):
    """The input of a ``chat`` task: a prompt, or a whole conversation."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    temperature: float | None = Field(None, ge=0, le=2)

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> ChatInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    def conversation(self) -> list[dict[str, Any]]:
        """Return the messages to send to the model."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        if self.messages is not None:
            messages.extend(m.model_dump() for m in self.messages)
        else:
            messages.append({"role": "user", "content": self.prompt})
        return messages


class ChatAgent:
    """Answers a prompt with one routed model call (the router picks the model unless named)."""

    name: ClassVar[str] = "chat"
    description: ClassVar[str] = "Answer a prompt or a conversation with one model call."
    input_model: ClassVar[type[BaseModel]] = ChatInput

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Make the model call and return its answer with token usage."""
        assert isinstance(request, ChatInput)
        params = {
            k: v
            for k, v in (("max_tokens", request.max_tokens), ("temperature", request.temperature))
            if v is not None
        }
        answer = await ctx.step(
            ctx.models.complete(request.conversation(), model=request.model, **params)
        )
        usage = {
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "cost_usd": str(answer.cost) if answer.cost is not None else None,
        }
        ctx.emit_at_end(
            "model_call",
            {
                "model": answer.model,
                "provider": answer.provider,
                "strategy": answer.strategy,
                "fallback_path": [a.model for a in answer.fallback_path[:-1]],
                "cached": answer.cache_hit,
                "latency_ms": round(answer.latency_ms, 1),
                **usage,
            },
        )
        return {
            "text": answer.text,
            "model": answer.model,
            "provider": answer.provider,
            "usage": usage,
        }
