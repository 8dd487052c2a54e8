"""The models the router may choose from, and what a request needs of them.

The catalogue starts with the default model of each configured provider (its URL, key or region
is set; for ``local``, the embedded toy model that ``spine up`` runs), adds the entries of
``GENAI_MODELS_FILE`` (an entry with a name already present replaces it), and can add what an
Ollama server lists at ``/api/tags``. A models file looks like this (prices are per token)::

    models:
      - name: smart
        provider: openai
        model: gpt-4o
        input_price: "0.0000025"
        output_price: "0.00001"
        quality: 0.9
        context_window: 128000
        capabilities: {tools: true, json_output: true}
      - name: embed-small
        provider: openai
        model: text-embedding-3-small
        input_price: "0.00000002"
        output_price: "0"
        capabilities: {tools: false, json_output: false, embeddings: true,
                       dimensions: 1536, variable_dimensions: true}
      - name: vllm-qwen
        provider: openai-compatible
        model: Qwen/Qwen2.5-7B-Instruct
        api_base: http://127.0.0.1:8000/v1
        tags: [local]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.llm import ModelProvider, configured_providers
from spine.platform.settings import Settings

__all__ = [
    "TOY_NOTE",
    "Capabilities",
    "ModelCatalogue",
    "ModelSpec",
    "Requirements",
    "discover_ollama",
    "load_models_file",
]

logger = logging.getLogger(__name__)

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
# Ollama embedding models whose names do not say "embed".
_OLLAMA_EMBEDDING_FAMILIES = ("all-minilm", "bge-", "paraphrase-multilingual", "granite-embedding")
# OpenAI's embedding models that shorten their vectors on request (OpenAI's ``dimensions``).
_VARIABLE_DIMENSIONS = ("text-embedding-3-",)


class Capabilities(BaseModel):
    """What a model can do beyond plain chat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: bool = True
    json_output: bool = True
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
                    tools=False, json_output=False, embeddings=True, dimensions=384
                ),
            }
        elif provider == "local":
            defaults |= {
                "input_price": 0,
                "output_price": 0,
                "tags": {LOCAL, TOY},
                "note": TOY_NOTE,
                "capabilities": Capabilities(tools=False, json_output=True),
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
    min_quality: float = 0.0
    embeddings: bool = False
    dimensions: int | None = None
    """The vector size an embedding call asks for; None: the model's own."""
    longest_input: int = 0
    """Tokens of the longest text of an embedding call (each must fit the model)."""
    params: frozenset[str] = frozenset()
    """The optional OpenAI generation parameters the call sets (see :data:`CHECKED_PARAMS`)."""

    @property
    def context_tokens(self) -> int:
        """Tokens the prompt and the longest answer asked for take together."""
        return self.prompt_tokens + (self.max_tokens or 0)

    @classmethod
    def of(
        cls, messages: list[dict[str, Any]], params: dict[str, Any], *, min_quality: float = 0.0
    ) -> Requirements:
        """Read the needs of a chat call; prompt tokens are estimated (4 characters each)."""
        tools = params.get("tools") or []
        chars = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools))
        response_format = params.get("response_format") or {}
        kind = response_format.get("type") if isinstance(response_format, dict) else "json"
        return cls(
            prompt_tokens=math.ceil(chars / _CHARS_PER_TOKEN),
            max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
            tools=bool(tools),
            json_output=kind in {"json", "json_object", "json_schema"},
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


class _ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[Any] = Field(default_factory=list)


class ModelCatalogue:
    """The models the router may choose from, by public name."""

    def __init__(self, specs: Iterable[ModelSpec] = ()) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalogue:
        """Build the catalogue from the configured providers and ``GENAI_MODELS_FILE``."""
        catalogue = cls()
        configured = configured_providers(settings)
        for provider in configured:
            upstream = getattr(settings.models, provider)
            extra: dict[str, Any] = {}
            if provider == "local":
                extra["context_window"] = settings.local_model.n_ctx
            catalogue.add(
                ModelSpec.for_provider(provider, upstream, **extra), qualify_on_clash=True
            )
        if settings.models_file is not None:
            for spec in load_models_file(settings.models_file):
                if spec.provider in configured or spec.api_base or spec.api_key:
                    catalogue.add(spec, replace=True)
                else:
                    logger.info(
                        "model %s skipped: provider %s is not configured", spec.name, spec.provider
                    )
        return catalogue

    def add(
        self, spec: ModelSpec, *, replace: bool = False, qualify_on_clash: bool = False
    ) -> ModelSpec:
        """Add ``spec``; a clashing name is replaced, qualified as ``provider/name``, or an error."""
        if spec.name in self._specs and not replace:
            if not qualify_on_clash:
                raise ConfigurationError(f"model {spec.name!r} is already in the catalogue")
            spec = spec.model_copy(update={"name": f"{spec.provider}/{spec.name}"})
            if spec.name in self._specs:
                return self._specs[spec.name]
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ModelSpec | None:
        """Return the model called ``name`` (Ollama's ``:latest`` suffix is optional)."""
        return self._specs.get(name) or self._specs.get(name.removesuffix(":latest"))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        """The public names, sorted."""
        return sorted(self._specs)

    def fill_unknown(self, facts: Callable[[str, str], Mapping[str, Any] | None]) -> int:
        """Fill in unknown prices and context windows from ``facts(provider, model)``.

        ``facts`` answers like LiteLLM's price map (``input_cost_per_token``,
        ``output_cost_per_token``, ``max_input_tokens``); what is known already is kept.
        Returns how many models gained something.
        """
        filled = 0
        for name, spec in list(self._specs.items()):
            found = facts(spec.provider, spec.model) or {}
            update: dict[str, Any] = {}
            for field_name, key in (
                ("input_price", "input_cost_per_token"),
                ("output_price", "output_cost_per_token"),
            ):
                if getattr(spec, field_name) is None and found.get(key) is not None:
                    update[field_name] = Decimal(str(found[key]))
            if spec.context_window is None and found.get("max_input_tokens"):
                update["context_window"] = int(found["max_input_tokens"])
            if update:
                self._specs[name] = spec.model_copy(update=update)
                filled += 1
        return filled

    def fill_supported_params(self, supported: Callable[[str, str], frozenset[str] | None]) -> None:
        """Learn which OpenAI parameters each model takes, from ``supported(provider, model)``."""
        for name, spec in list(self._specs.items()):
            if spec.supported_params is None and not spec.capabilities.embeddings:
                found = supported(spec.provider, spec.model)
                if found is not None:
                    self._specs[name] = spec.model_copy(update={"supported_params": found})

    def candidates(self, requirements: Requirements) -> list[ModelSpec]:
        """Return the models that meet ``requirements``, in catalogue order.

        A chat request gets the chat models, an embedding request the embedding models.
        """
        return [
            spec
            for spec in self._specs.values()
            if (requirements.embeddings or not _embedding_only(spec))
            and spec.refusal(requirements) is None
        ]

    def embedding_models(self) -> list[ModelSpec]:
        """Return the models that make embeddings, in catalogue order."""
        return [spec for spec in self._specs.values() if spec.capabilities.embeddings]

    def chat_models(self) -> list[ModelSpec]:
        """Return the models that answer chat calls, in catalogue order."""
        return [spec for spec in self._specs.values() if not _embedding_only(spec)]

    def learn_dimensions(self, name: str, dimensions: int) -> None:
        """Note the vector size a model was seen to give, so later plans know it."""
        spec = self._specs.get(name)
        if spec is None or spec.capabilities.dimensions == dimensions:
            return
        able = spec.capabilities.model_copy(update={"dimensions": dimensions})
        self._specs[name] = spec.model_copy(update={"capabilities": able})

    def refusals(self, requirements: Requirements) -> dict[str, str]:
        """Say, per model, why it cannot serve ``requirements``."""
        found = {spec.name: spec.refusal(requirements) for spec in self._specs.values()}
        return {name: why for name, why in found.items() if why is not None}


def _embedding_only(spec: ModelSpec) -> bool:
    return spec.capabilities.embeddings and not (
        spec.capabilities.tools or spec.capabilities.json_output
    )


def load_models_file(path: Path) -> list[ModelSpec]:
    """Read and validate a models file; errors name the file and the entry."""
    where = f"GENAI_MODELS_FILE={path}"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"{where}: cannot read it ({exc.strerror})", field="GENAI_MODELS_FILE"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            f"{where}: not valid YAML ({exc})", field="GENAI_MODELS_FILE"
        ) from None
    try:
        entries = _ModelsFile.model_validate(raw if raw is not None else {}).models
    except ValidationError:
        raise ConfigurationError(
            f"{where}: expected a mapping with a 'models' list", field="GENAI_MODELS_FILE"
        ) from None
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigurationError(
                f"{where}: models[{index}]: expected a mapping, got {entry!r}",
                field="GENAI_MODELS_FILE",
            )
        label = f"models[{index}]" + (f" ({entry['name']!r})" if "name" in entry else "")
        entry = {"model": entry.get("name"), **entry}
        if entry.get("provider") in ("ollama", "local") and "tags" not in entry:
            entry["tags"] = [LOCAL]
        try:
            spec = ModelSpec.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigurationError(
                f"{where}: {label}: {problems}", field="GENAI_MODELS_FILE"
            ) from None
        if spec.name in seen:
            raise ConfigurationError(
                f"{where}: {label}: the name {spec.name!r} is used twice",
                field="GENAI_MODELS_FILE",
            )
        seen.add(spec.name)
        specs.append(spec)
    return specs


async def discover_ollama(
    catalogue: ModelCatalogue,
    base_url: str,
    *,
    timeout: float = 2.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[ModelSpec]:
    """Add the models an Ollama server lists at ``/api/tags``; return the ones added.

    Raises:
        ServiceUnavailable: The server did not answer, or not with a model list.
    """
    url = f"{base_url.rstrip('/')}/api/tags"
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            response = await client.get(url)
            response.raise_for_status()
            listed = [str(m["name"]) for m in response.json()["models"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ServiceUnavailable(
            f"Ollama at {base_url} did not list its models ({type(exc).__name__}: {exc})",
            field="GENAI_OLLAMA_URL",
        ) from exc
    known = {(s.provider, s.model.removesuffix(":latest")) for s in catalogue}
    added: list[ModelSpec] = []
    for upstream in listed:
        name = upstream.removesuffix(":latest")
        if ("ollama", name) in known:
            continue
        embeddings = "embed" in name or name.startswith(_OLLAMA_EMBEDDING_FAMILIES)
        spec = ModelSpec.for_provider(
            "ollama",
            upstream,
            name=name,
            capabilities=Capabilities(
                tools=not embeddings, json_output=not embeddings, embeddings=embeddings
            ),
        )
        added.append(catalogue.add(spec, qualify_on_clash=True))
        known.add(("ollama", name))
    logger.info("Ollama at %s lists %d models, %d new", base_url, len(listed), len(added))
    return added
