"""Model calls: their value types, where a call goes, and the adapters that make one call.

``values`` (what a call asks and answers) ← ``providers`` (the target of a call) ← ``shapes``
(converters of OpenAI-shaped answers) ← ``litellm_upstream`` and ``openai_upstream`` (the two
adapters) ← ``upstream`` (one call to one target, through the right adapter). Beside them:
``openai_wire`` and ``openai_errors`` (the OpenAI wire format the gateway speaks, and errors in
its shape), ``responses_wire`` (OpenAI's Responses API, read as a chat call) and
``local_embeddings`` (the in-process embedding model). The router (:mod:`spine.platform.router`) decides which targets a
call tries; metering (:mod:`spine.platform.metering`) prices and records it.
"""

from spine.platform.models.providers import (
    HOW_TO_CONFIGURE,
    TOOL_MODEL_HINT,
    ProviderTarget,
    configured_providers,
    default_provider,
    provider_target,
    resolve_provider,
)
from spine.platform.models.values import (
    Attempt,
    ChatRequest,
    Completion,
    CompletionDelta,
    Embedding,
    EmbeddingRequest,
    ModelProvider,
)

__all__ = [
    "HOW_TO_CONFIGURE",
    "TOOL_MODEL_HINT",
    "Attempt",
    "ChatRequest",
    "Completion",
    "CompletionDelta",
    "Embedding",
    "EmbeddingRequest",
    "ModelProvider",
    "ProviderTarget",
    "configured_providers",
    "default_provider",
    "provider_target",
    "resolve_provider",
]
