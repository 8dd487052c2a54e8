"""The models the router may choose from, and what a request needs of them.

The catalog starts with the default model of each configured provider (its URL, key or region
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

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.models import configured_providers
from spine.platform.router.specs import LOCAL, Capabilities, ModelSpec, Requirements
from spine.platform.settings import Settings

__all__ = ["ModelCatalog", "discover_ollama", "load_models_file"]

logger = logging.getLogger(__name__)

# Ollama embedding models whose names do not say "embed".
_OLLAMA_EMBEDDING_FAMILIES = ("all-minilm", "bge-", "paraphrase-multilingual", "granite-embedding")


class _ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[Any] = Field(default_factory=list)


class ModelCatalog:
    """The models the router may choose from, by public name."""

    def __init__(self, specs: Iterable[ModelSpec] = ()) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        """Build the catalog from the configured providers and ``GENAI_MODELS_FILE``."""
        catalog = cls()
        configured = configured_providers(settings)
        for provider in configured:
            upstream = getattr(settings.models, provider)
            extra: dict[str, Any] = {}
            if provider == "local":
                extra["context_window"] = settings.local_model.n_ctx
            catalog.add(ModelSpec.for_provider(provider, upstream, **extra), qualify_on_clash=True)
        if settings.models_file is not None:
            for spec in load_models_file(settings.models_file):
                if spec.provider in configured or spec.api_base or spec.api_key:
                    catalog.add(spec, replace=True)
                else:
                    logger.info(
                        "model %s skipped: provider %s is not configured", spec.name, spec.provider
                    )
        return catalog

    def add(
        self, spec: ModelSpec, *, replace: bool = False, qualify_on_clash: bool = False
    ) -> ModelSpec:
        """Add ``spec``; a clashing name is replaced, qualified as ``provider/name``, or an error."""
        if spec.name in self._specs and not replace:
            if not qualify_on_clash:
                raise ConfigurationError(f"model {spec.name!r} is already in the catalog")
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

    def unknown_facts(self) -> list[tuple[str, str]]:
        """The ``(provider, model)`` of each model missing what :meth:`fill_unknown` or
        :meth:`fill_supported_params` could fill in."""
        return [
            (spec.provider, spec.model)
            for spec in self._specs.values()
            if spec.input_price is None
            or spec.output_price is None
            or spec.context_window is None
            or (spec.supported_params is None and not spec.capabilities.embeddings)
        ]

    def fill_supported_params(self, supported: Callable[[str, str], frozenset[str] | None]) -> None:
        """Learn which OpenAI parameters each model takes, from ``supported(provider, model)``."""
        for name, spec in list(self._specs.items()):
            if spec.supported_params is None and not spec.capabilities.embeddings:
                found = supported(spec.provider, spec.model)
                if found is not None:
                    self._specs[name] = spec.model_copy(update={"supported_params": found})

    def candidates(self, requirements: Requirements) -> list[ModelSpec]:
        """Return the models that meet ``requirements``, in catalog order.

        A chat request gets the chat models, an embedding request the embedding models.
        """
        return [
            spec
            for spec in self._specs.values()
            if (requirements.embeddings or not _embedding_only(spec))
            and spec.refusal(requirements) is None
        ]

    def embedding_models(self) -> list[ModelSpec]:
        """Return the models that make embeddings, in catalog order."""
        return [spec for spec in self._specs.values() if spec.capabilities.embeddings]

    def chat_models(self) -> list[ModelSpec]:
        """Return the models that answer chat calls, in catalog order."""
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
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{where}: not UTF-8 text (byte {exc.start})", field="GENAI_MODELS_FILE"
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
    catalog: ModelCatalog,
    base_url: str,
    *,
    timeout: float = 2.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[ModelSpec]:
    """Add the models an Ollama server lists at ``/api/tags``; return the ones added.

    What each listed model can do (tools, images, embeddings) is read from ``/api/show``'s
    ``capabilities`` (Ollama 0.6 and later), for the models added and for the Ollama models
    already in the catalog whose capabilities no models file gave; where Ollama does not say,
    an embedding model is told by its name and the others are assumed to do everything.

    Raises:
        ServiceUnavailable: The server did not answer, or not with a model list.
    """
    base_url = base_url.rstrip("/")
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        try:
            response = await client.get(f"{base_url}/api/tags")
            response.raise_for_status()
            listed = [str(m["name"]) for m in response.json()["models"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ServiceUnavailable(
                f"Ollama at {base_url} did not list its models ({type(exc).__name__}: {exc})",
                field="GENAI_OLLAMA_URL",
            ) from exc
        known: dict[str, list[ModelSpec]] = {}
        for spec in catalog:
            if spec.provider == "ollama":
                known.setdefault(spec.model.removesuffix(":latest"), []).append(spec)
        asked = [m for m in listed if not _described(known.get(m.removesuffix(":latest")))]
        said = await _capabilities_said(client, base_url, asked)
    added: list[ModelSpec] = []
    for upstream in listed:
        name = upstream.removesuffix(":latest")
        capabilities = said.get(upstream)
        if name in known:  # described by the settings, or by a file that may say what it can do
            for spec in known[name]:
                if capabilities is not None and "capabilities" not in spec.model_fields_set:
                    update = {"capabilities": capabilities}
                    catalog.add(spec.model_copy(update=update), replace=True)
            continue
        if capabilities is None:
            embeddings = "embed" in name or name.startswith(_OLLAMA_EMBEDDING_FAMILIES)
            capabilities = Capabilities(
                tools=not embeddings, json_output=not embeddings, embeddings=embeddings
            )
        spec = ModelSpec.for_provider("ollama", upstream, name=name, capabilities=capabilities)
        added.append(catalog.add(spec, qualify_on_clash=True))
        known[name] = [spec]
    logger.info("Ollama at %s lists %d models, %d new", base_url, len(listed), len(added))
    return added


_SHOWN_AT_ONCE = 8


def _described(specs: list[ModelSpec] | None) -> bool:
    """Whether a models file said what each catalog entry of an Ollama model can do (then
    Ollama is not asked)."""
    return bool(specs) and all("capabilities" in s.model_fields_set for s in specs or [])


async def _capabilities_said(
    client: httpx.AsyncClient, base_url: str, models: list[str]
) -> dict[str, Capabilities]:
    """What ``/api/show`` says each model can do; a model it says nothing of is left out."""
    gate = asyncio.Semaphore(_SHOWN_AT_ONCE)

    async def show(model: str) -> Capabilities | None:
        async with gate:
            try:
                response = await client.post(f"{base_url}/api/show", json={"model": model})
                response.raise_for_status()
                said = response.json().get("capabilities")
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                logger.info("Ollama did not describe %s (%s)", model, type(exc).__name__)
                return None
        if not isinstance(said, list) or not said:  # an Ollama before 0.6
            return None
        chat = "completion" in said
        return Capabilities(
            tools=chat and "tools" in said,
            json_output=chat,
            vision=chat and "vision" in said,
            embeddings="embedding" in said,
        )

    shown = await asyncio.gather(*(show(m) for m in models))
    return {m: c for m, c in zip(models, shown, strict=True) if c is not None}
