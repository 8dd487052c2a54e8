"""What the router knows of a model (:class:`ModelSpec`) and what a call needs of one
(:class:`Requirements`); a model serves a call when it has no :meth:`ModelSpec.refusal`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from spine.platform.models import ModelProvider

__all__ = [
    "CHECKED_PARAMS",
    "LOCAL",
    "TOY",
    "TOY_NOTE",
    "Capabilities",
    "ModelSpec",
    "Requirements",
]

LOCAL = "local"
CHECKED_PARAMS = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "seed",
        "stop",
        "top_p",
        "temperature",
        "tool_choice",
        "reasoning_effort",
        "modalities",
        "prediction",
        "audio",
        "web_search_options",
    }
)
"""Optional OpenAI parameters a model's provider may not take; a call that sets one goes only
to models that take it, and one naming a model that does not is refused, naming it."""
TOY = "toy"
TOY_NOTE = (
    "toy quality: a 135M-parameter model on the CPU, for demos and plumbing, not for answers; "
    "set GENAI_OLLAMA_URL or a cloud key for a real model"
)
# Scores for models no file describes: a small local model below a hosted one, and the
# embedded toy model far below both.
_DEFAULT_QUALITY = {"ollama": 0.5, "local": 0.1, "local-embed": 0.5}
_HOSTED_QUALITY = 0.8
_CHARS_PER_TOKEN = 4
# The prompt's upper bound (what a budget reserves) counts a token per UTF-8 byte of its text:
# byte-level BPE (tiktoken, Llama 3, Qwen, ...) and SentencePiece with byte fallback never make
# more tokens than bytes. The chat template adds special tokens that are not in the text: per
# message ChatML has 5 (<|im_start|>, the role, \n, <|im_end|>, \n), Llama 3 5, OpenAI counts
# 3 or 4; a message is given 8 besides its role's and name's bytes. The answer's opening (ChatML's
# <|im_start|>assistant\n, Llama 3's <|begin_of_text|> and header) is given 8 more, and tools
# their JSON plus 256 for the instructions a template puts around them.
_MESSAGE_TOKENS = 8
_REPLY_TOKENS = 8
_TOOLS_TOKENS = 256
# An image is priced by its size, not its URL's: OpenAI's high detail and Anthropic's largest
# come to about 1,600 tokens. A data URL is counted at least as the estimate counts it.
_IMAGE_TOKENS = 2048
# OpenAI's embedding models that shorten their vectors on request (OpenAI's ``dimensions``).
_VARIABLE_DIMENSIONS = ("text-embedding-3-",)


class Capabilities(BaseModel):
    """What a model can do beyond plain chat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: bool = True
    json_output: bool = True
    vision: bool = Field(True, description="Reads images in messages (`image_url` parts).")
    embeddings: bool = False
    dimensions: int | None = Field(
        None, ge=1, description="Size of the vectors an embedding model gives; None: unknown."
    )
    variable_dimensions: bool = Field(
        False, description="Takes OpenAI's `dimensions` parameter to give shorter vectors."
    )


class ModelSpec(BaseModel):
    """One model the router can call, under the public name clients use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    provider: ModelProvider
    model: str = Field(min_length=1, description="The provider's own model id.")
    input_price: Decimal | None = Field(
        None, ge=0, description="Price per input token; None when unknown (0 for local)."
    )
    output_price: Decimal | None = Field(None, ge=0, description="Price per output token.")
    quality: float = Field(0.5, ge=0, le=1)
    context_window: int | None = Field(None, ge=1, description="Tokens; None when unknown.")
    capabilities: Capabilities = Field(default_factory=Capabilities)
    tags: frozenset[str] = frozenset()
    note: str | None = Field(None, description="What a client should know, e.g. toy quality.")
    supported_params: frozenset[str] | None = Field(
        None,
        description="The OpenAI parameters the provider takes for it (from LiteLLM); None: "
        "not known, so not checked.",
    )
    api_base: str | None = None
    api_key: SecretStr | None = None

    @classmethod
    def for_provider(
        cls, provider: ModelProvider, model: str, *, name: str | None = None, **fields: Any
    ) -> ModelSpec:
        """Describe a model no file describes: Ollama's are local and free.

        The embedded ``local`` model is free as well, and labelled toy quality: it cannot
        choose tools on its own (forced tool calls and JSON output work).
        """
        defaults: dict[str, Any] = {"quality": _DEFAULT_QUALITY.get(provider, _HOSTED_QUALITY)}
        if provider == "ollama":
            defaults |= {"input_price": 0, "output_price": 0, "tags": {LOCAL}}
        elif provider == "local-embed":
            defaults |= {
                "input_price": 0,
                "output_price": 0,
                "tags": {LOCAL},
                "capabilities": Capabilities(
                    tools=False, json_output=False, vision=False, embeddings=True, dimensions=384
                ),
            }
        elif provider == "local":
            defaults |= {
                "input_price": 0,
                "output_price": 0,
                "tags": {LOCAL, TOY},
                "note": TOY_NOTE,
                "capabilities": Capabilities(tools=False, json_output=True, vision=False),
            }
        return cls(name=name or model, provider=provider, model=model, **(defaults | fields))

    @model_validator(mode="after")
    def _compatible_needs_a_base(self) -> ModelSpec:
        if self.provider == "openai-compatible" and self.api_base is None:
            raise ValueError("an openai-compatible model needs api_base")
        return self

    @property
    def local(self) -> bool:
        """Whether the model runs on the operator's own hardware."""
        return LOCAL in self.tags

    @property
    def toy(self) -> bool:
        """Whether the model is only good for demos and plumbing (the embedded one)."""
        return TOY in self.tags

    def estimated_cost(self, requirements: Requirements) -> Decimal | None:
        """Return what the request would cost at most, None when a price is unknown."""
        if self.input_price is None or self.output_price is None:
            return None
        answer = requirements.max_tokens or 0
        return self.input_price * requirements.prompt_tokens + self.output_price * answer

    def refusal(self, requirements: Requirements) -> str | None:
        """Say why the model cannot serve the request, None when it can."""
        if requirements.embeddings:
            return self._embedding_refusal(requirements)
        needed = requirements.context_tokens
        if self.context_window is not None and needed > self.context_window:
            return f"needs about {needed} tokens of context, has {self.context_window}"
        if self.quality < requirements.min_quality:
            return f"quality {self.quality} is below {requirements.min_quality}"
        return self.unsupported(requirements)

    def unsupported(self, requirements: Requirements) -> str | None:
        """Say which asked-for parameter or capability the model lacks (what a client must
        change to use it), None when it has them all; the context window is not checked."""
        if requirements.tools and not self.capabilities.tools:
            return "cannot call tools (tools)"
        if requirements.json_output and not self.capabilities.json_output:
            return "cannot produce JSON output (response_format)"
        if requirements.images and not self.capabilities.vision:
            return "cannot read images (messages)"
        if self.supported_params is not None:
            missing = sorted(requirements.params - self.supported_params)
            if missing:
                return f"does not support {', '.join(missing)}"
        return None

    def _embedding_refusal(self, requirements: Requirements) -> str | None:
        able = self.capabilities
        if not able.embeddings:
            return "does not make embeddings"
        wanted = requirements.dimensions
        if wanted is not None and not able.variable_dimensions:
            if able.dimensions is not None and able.dimensions != wanted:
                return f"gives {able.dimensions}-dimensional vectors, not {wanted}"
        elif wanted is not None and able.dimensions is not None and wanted > able.dimensions:
            return f"gives at most {able.dimensions} dimensions, not {wanted}"
        longest = requirements.longest_input
        if self.context_window is not None and longest > self.context_window:
            return f"an input needs about {longest} tokens, the model takes {self.context_window}"
        if self.quality < requirements.min_quality:
            return f"quality {self.quality} is below {requirements.min_quality}"
        return None

    def embedding_params(self, dimensions: int | None) -> dict[str, Any]:
        """Return what to send the provider so it gives ``dimensions``-sized vectors."""
        if dimensions is None or not self.capabilities.variable_dimensions:
            return {}
        return {"dimensions": dimensions}

    def as_embedding_model(self) -> ModelSpec:
        """Return this model marked as making embeddings (one a call named explicitly)."""
        if self.capabilities.embeddings:
            return self
        variable = self.provider in ("openai", "openai-compatible") and self.model.startswith(
            _VARIABLE_DIMENSIONS
        )
        able = self.capabilities.model_copy(
            update={"embeddings": True, "variable_dimensions": variable}
        )
        return self.model_copy(update={"capabilities": able})


@dataclass(slots=True, kw_only=True, frozen=True)
class Requirements:
    """What one request needs of a model."""

    prompt_tokens: int = 0
    max_tokens: int | None = None
    tools: bool = False
    json_output: bool = False
    images: bool = False
    """Whether a message holds an image (an ``image_url`` part)."""
    min_quality: float = 0.0
    embeddings: bool = False
    dimensions: int | None = None
    """The vector size an embedding call asks for; None: the model's own."""
    longest_input: int = 0
    """Tokens of the longest text of an embedding call (each must fit the model)."""
    params: frozenset[str] = frozenset()
    """The optional OpenAI generation parameters the call sets (see :data:`CHECKED_PARAMS`)."""
    prompt_bound: int | None = None
    """The most tokens the prompt can take (None: ``prompt_tokens``), which budgets reserve;
    ``prompt_tokens`` is the estimate the context-window checks use."""

    @property
    def context_tokens(self) -> int:
        """Tokens the prompt and the longest answer asked for take together."""
        return self.prompt_tokens + (self.max_tokens or 0)

    @property
    def prompt_ceiling(self) -> int:
        """The most tokens the prompt can take: its bound, never below the estimate."""
        return max(self.prompt_tokens, self.prompt_bound or 0)

    @classmethod
    def of(
        cls, messages: list[dict[str, Any]], params: dict[str, Any], *, min_quality: float = 0.0
    ) -> Requirements:
        """Read the needs of a chat call.

        Prompt tokens are estimated (4 characters of JSON each) for the context-window checks,
        and bounded from above (a token per UTF-8 byte of text, plus the template's tokens)
        for the budgets' reservations.
        """
        tools = params.get("tools") or []
        chars = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools))
        response_format = params.get("response_format") or {}
        kind = response_format.get("type") if isinstance(response_format, dict) else "json"
        bound = _REPLY_TOKENS + sum(_message_bound(message) for message in messages)
        if tools:
            bound += _TOOLS_TOKENS + _json_bytes(tools)
        if kind == "json_schema":  # the schema is put in the prompt
            bound += _json_bytes(response_format)
        return cls(
            prompt_tokens=math.ceil(chars / _CHARS_PER_TOKEN),
            prompt_bound=bound,
            max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
            tools=bool(tools),
            json_output=kind in {"json", "json_object", "json_schema"},
            images=any(_holds_image(message) for message in messages),
            min_quality=min_quality,
            params=frozenset(name for name in params if name in CHECKED_PARAMS),
        )

    @classmethod
    def for_embedding(
        cls, texts: list[str], *, dimensions: int | None = None, min_quality: float = 0.0
    ) -> Requirements:
        """Read the needs of an embedding call; tokens are estimated (4 characters each)."""
        sizes = [math.ceil(len(text) / _CHARS_PER_TOKEN) for text in texts]
        return cls(
            prompt_tokens=sum(sizes),
            max_tokens=0,
            embeddings=True,
            dimensions=dimensions,
            longest_input=max(sizes, default=0),
            min_quality=min_quality,
        )


def _holds_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "image_url" for part in content
    )


def _message_bound(message: dict[str, Any]) -> int:
    """The most tokens one chat message can take: its text's bytes and the template's tokens."""
    total = _MESSAGE_TOKENS
    for name, value in message.items():
        if name == "content":
            total += _content_bound(value)
        elif isinstance(value, str):  # role, name, tool_call_id
            total += len(value.encode())
        elif value is not None:  # tool calls: templates render them as JSON
            total += _json_bytes(value)
    return total


def _content_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if not isinstance(content, list):
        return _json_bytes(content)
    total = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            total += len(part["text"].encode())
        elif kind == "image_url":
            estimate = math.ceil(len(json.dumps(part, ensure_ascii=False)) / _CHARS_PER_TOKEN)
            total += max(_IMAGE_TOKENS, estimate)
        else:
            total += _json_bytes(part)
    return total


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())
