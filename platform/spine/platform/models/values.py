"""The value types of a model call: what a model answered, streamed or embedded, and where."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Attempt", "Completion", "CompletionDelta", "Embedding", "ModelProvider"]

# The providers a model can live at: the settings' providers plus any OpenAI-compatible server.
# ``local-embed`` is the in-process embedding model (:mod:`spine.platform.models.local_embeddings`).
ModelProvider = Literal[
    "ollama", "openai", "anthropic", "bedrock", "groq", "local", "openai-compatible", "local-embed"
]


@dataclass(slots=True, kw_only=True, frozen=True)
class Attempt:
    """One model the router tried for a call, and why it moved on (None: it answered)."""

    model: str
    provider: str
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class Completion:
    """What a model answered, and what it cost in tokens and time.

    ``fallback_path`` lists every model tried for the call in order, the one that answered
    last; ``strategy`` is the routing strategy that ordered them (None without a router).
    ``cache_hit`` says the answer came from the response cache, not from a model call;
    ``cost`` (USD) is set by the metered path (:mod:`spine.platform.metering.calls`), None elsewhere.
    """

    text: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)
    strategy: str | None = None
    fallback_path: list[Attempt] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    cache_hit: bool = False
    cost: Decimal | None = None


@dataclass(slots=True, kw_only=True)
class Embedding:
    """Vectors for a list of texts, in order, and what they cost in tokens and time.

    ``model``, ``strategy``, ``fallback_path`` and ``cost`` mean what they mean on
    :class:`Completion`.
    """

    vectors: list[list[float]]
    model: str
    provider: str
    input_tokens: int = 0
    latency_ms: float = 0.0
    strategy: str | None = None
    fallback_path: list[Attempt] = field(default_factory=list)
    cost: Decimal | None = None

    @property
    def dimensions(self) -> int:
        """The size of the vectors (0 when there are none)."""
        return len(self.vectors[0]) if self.vectors else 0


@dataclass(slots=True, kw_only=True)
class CompletionDelta:
    """One piece of a streamed answer, in provider-independent form.

    ``tool_calls`` holds OpenAI-shaped tool call deltas (``index``, and ``id``, ``type``,
    ``function.name``/``function.arguments`` where given); the usage counts arrive once, on
    the delta that carries them.
    """

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def has_output(self) -> bool:
        """Tell whether the delta carries text or a tool call (what a client sees)."""
        return bool(self.text or self.tool_calls)


@dataclass(slots=True, kw_only=True)
class ChatRequest:
    """One chat call, as every layer from the gateway or an agent down to a provider sees it.

    ``model`` names the model (None: the router chooses by ``strategy``, else the tenant's or
    the global one); ``min_quality`` (0 to 1) narrows the candidates; ``timeout`` (seconds)
    overrides ``GENAI_MODELS__TIMEOUT``. ``params`` are the OpenAI parameters that go to the
    model (``temperature``, ``tools``, ``response_format``, ``max_tokens``, ...): routing
    options never travel among them.
    """

    messages: list[dict[str, Any]]
    model: str | None = None
    strategy: str | None = None
    min_quality: float = 0.0
    timeout: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    cost_weight: float | None = None
    """The ``learned`` strategy's knob for this call (0..1; None: the tenant's or global)."""

    @classmethod
    def of(
        cls,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        strategy: str | None = None,
        min_quality: float | None = None,
        timeout: float | None = None,
        cost_weight: float | None = None,
        **params: Any,
    ) -> ChatRequest:
        """Build a request from keyword options, the way agents spell a call."""
        return cls(
            messages=messages,
            model=model,
            strategy=strategy or None,
            min_quality=float(min_quality or 0.0),
            timeout=timeout,
            cost_weight=cost_weight,
            params={name: value for name, value in params.items() if value is not None},
        )


@dataclass(slots=True, kw_only=True)
class EmbeddingRequest:
    """One embedding call: the texts, and the options :class:`ChatRequest` documents.

    ``dimensions`` asks for vectors of that size; ``fallback=False`` with a ``model`` tries
    that model only (vectors of different models live in different spaces). ``params`` go to
    the model as they are.
    """

    texts: list[str]
    model: str | None = None
    strategy: str | None = None
    min_quality: float = 0.0
    dimensions: int | None = None
    fallback: bool = True
    timeout: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
