"""The model router: chooses the models a call tries, and tries them in turn.

Embedding calls (:meth:`ModelRouter.embed`) take the same path over the models that make
embeddings: the same plan, strategies, breakers and fallback. When no model of the catalog
makes embeddings, the in-process local model (``local-embed``, extra ``[embed]``) is offered.

For each call it builds a plan — the explicit model (then the ``GENAI_FALLBACK_CHAIN``
providers' models), or else every model that meets the request in the strategy's order — and
tries the models in turn through an :class:`Upstream` (the real one is
:class:`~spine.platform.models.upstream.UpstreamClient`). It moves on after a timeout, a
connection error, a 429, a 5xx (the retryable errors) or a context-window overflow, and stops
at any other error. A model whose breaker is open is skipped without a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from spine.platform.errors import (
    BadRequest,
    ProviderNotConfigured,
    ServiceUnavailable,
    SpineError,
    UnknownModel,
)
from spine.platform.learning.features import SparseFeatures
from spine.platform.models import (
    HOW_TO_CONFIGURE,
    TOOL_MODEL_HINT,
    Attempt,
    ChatRequest,
    Completion,
    Embedding,
    EmbeddingRequest,
    ProviderTarget,
    configured_providers,
    default_provider,
    provider_target,
)
from spine.platform.models.litellm_facts import ask_litellm
from spine.platform.models.local_embeddings import (
    HOW_TO_INSTALL,
    LOCAL_EMBEDDING_MODEL,
    LOCAL_EMBEDDING_PROVIDER,
    LocalEmbedder,
    missing_packages,
)
from spine.platform.models.upstream import UpstreamClient
from spine.platform.router.attempts import (
    RoutePlan,
    admitted,
    exhausted,
    param_named,
    record_failure,
    unmet,
)
from spine.platform.router.catalog import ModelCatalog, discover_ollama
from spine.platform.router.health import ModelHealth, Permit
from spine.platform.router.learned import LearnedRouting
from spine.platform.router.specs import ModelSpec, Requirements
from spine.platform.router.strategies import RoutingContext, order_candidates, strategy_named
from spine.platform.router.streaming import CompletionStream, StreamOutcome, first_output
from spine.platform.router.upstream import Upstream
from spine.platform.settings import Settings

__all__ = ["CIRCUIT_OPEN", "ModelRouter"]

logger = logging.getLogger(__name__)

CIRCUIT_OPEN = "circuit_open"
WRONG_DIMENSIONS = "wrong_dimensions"
NO_EMBEDDING_MODEL = (
    "no configured model makes embeddings: pull one into Ollama (e.g. `ollama pull "
    "nomic-embed-text`), list one in GENAI_MODELS_FILE with capabilities.embeddings, name one "
    "as provider/model (openai/text-embedding-3-small), or " + HOW_TO_INSTALL
)


class ModelRouter:
    """Routes calls across the catalog with a strategy, fallbacks and circuit breakers.

    A call is a :class:`~spine.platform.models.ChatRequest` (or an ``EmbeddingRequest``), and
    optionally the :class:`RoutePlan` its caller already made with :meth:`plan` (the metered
    path plans once, to price the call) or an ``admit`` predicate that narrows the plan.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: ModelCatalog | None = None,
        health: ModelHealth | None = None,
        upstream: Upstream | None = None,
        local_embedder: LocalEmbedder | None = None,
    ) -> None:
        self._settings = settings
        self._local_embedder = local_embedder
        self.catalog = catalog if catalog is not None else ModelCatalog.from_settings(settings)
        self.health = health if health is not None else ModelHealth()
        self._upstream: Upstream = upstream if upstream is not None else UpstreamClient(settings)
        self.learned = LearnedRouting(settings.learning)
        # The API and the workers of one process share the router: it warms up once.
        self._warm_up_lock = asyncio.Lock()
        self._warm = False

    @property
    def default_strategy(self) -> str:
        """The strategy of calls that name none (``GENAI_ROUTING_STRATEGY``)."""
        return self._settings.routing_strategy

    def strategy_for(self, tenant: str) -> str:
        """The strategy of a tenant's calls that name none (``GENAI_TENANT_STRATEGIES``)."""
        return self._settings.tenant_strategies.get(tenant, self._settings.routing_strategy)

    async def warm_up(self) -> None:
        """Add the models Ollama lists, fill in prices and parameters from LiteLLM.

        Prices and context windows no setting or models file gave come from LiteLLM's
        bundled price map, where it knows the model, and the parameters each chat model
        takes from LiteLLM too: both asked of a child process unless LiteLLM is loaded here
        already (:func:`~spine.platform.models.litellm_facts.ask_litellm`), so a process
        loads LiteLLM only for its first call to a provider that needs it. Later calls
        return at once.
        """
        async with self._warm_up_lock:
            if self._warm:
                return
            if self._settings.ollama_url is not None:
                try:
                    await discover_ollama(self.catalog, self._settings.ollama_url)
                except ServiceUnavailable as exc:
                    logger.warning("model discovery skipped: %s", exc.message)
            unknown = self.catalog.unknown_facts()
            if unknown:
                known = await ask_litellm(unknown)
                self.catalog.fill_unknown(known.facts)
                self.catalog.fill_supported_params(known.params)
            self._offer_local_embedding()
            self._warm = True

    def _offer_local_embedding(self) -> None:
        wanted = self._settings.local_embedding.enabled
        if wanted is False or (wanted == "auto" and self.catalog.embedding_models()):
            return
        missing = missing_packages()
        if missing and wanted == "auto":
            logger.info("no model makes embeddings; the local one needs %s", ", ".join(missing))
            return
        # Enabled without the extra, it is listed all the same: its calls say what to install.
        spec = ModelSpec.for_provider(LOCAL_EMBEDDING_PROVIDER, LOCAL_EMBEDDING_MODEL)
        self.catalog.add(spec, qualify_on_clash=True)
        logger.info("embeddings: the local model %s is offered", spec.name)

    async def close(self) -> None:
        """Stop the local embedding model's thread, if it ran, and close upstream connections."""
        if self._local_embedder is not None:
            self._local_embedder.close()
        await self._upstream.close()

    def plan(
        self,
        requirements: Requirements,
        *,
        model: str | None = None,
        strategy: str | None = None,
        admit: Callable[[ModelSpec], bool] | None = None,
        features: SparseFeatures | None = None,
        tenant: str | None = None,
        cost_weight: float | None = None,
        budget_pressure: float = 0.0,
    ) -> RoutePlan:
        """Return the models a call with ``requirements`` would try, in order.

        ``admit`` narrows the plan to the models it accepts (the caller's budget may only
        admit free models, for example). The ``learned`` strategy decides with the request's
        ``features`` and the knob (``cost_weight``, else the ``tenant``'s, else the global
        one), raised by ``budget_pressure`` (0..1); its record is the plan's ``decision``.

        Raises:
            ProviderNotConfigured: No provider is configured.
            BadRequest: The model or strategy is unknown, or no model meets the request (or
                ``admit`` accepts none).
        """
        # The local embedding model alone answers no chat call.
        if not len(self.catalog) or not (requirements.embeddings or self.catalog.chat_models()):
            raise ProviderNotConfigured(f"no model provider is configured: {HOW_TO_CONFIGURE}")
        if requirements.embeddings and model is None and not self.catalog.embedding_models():
            raise ProviderNotConfigured(NO_EMBEDDING_MODEL)
        chosen = strategy or self._settings.routing_strategy
        if model is not None:
            return admitted(self._named_plan(model, chosen, requirements), admit)
        ctx = self._routing_context(requirements)
        candidates = self.catalog.candidates(requirements)
        decision: dict[str, Any] | None = None
        ordered: list[ModelSpec] = []
        if chosen == "learned" and features is not None:
            learned = self.learned.decide(
                candidates,
                requirements,
                features,
                health=self.health,
                kind="embedding" if requirements.embeddings else "chat",
                cost_weight=self.learned.cost_weight(tenant, cost_weight),
                budget_pressure=budget_pressure,
            )
            if learned is not None:
                ordered, decision = learned
        if not ordered:  # not learned, or cold: the configured order
            ordered = order_candidates(self._ordering(chosen), candidates, ctx)
            if chosen == "learned" and decision is None:  # say why
                decision = {
                    "strategy": "learned",
                    "cold_start": True,  # no weights yet: the configured order
                    "ordered_by": self._ordering(chosen),
                    "weights_version": self.learned.version,
                }
        if not ordered:
            reasons = "; ".join(
                f"{name}: {why}" for name, why in self.catalog.refusals(requirements).items()
            )
            field, code = None, None
            if requirements.embeddings:
                field = "dimensions" if requirements.dimensions is not None else None
            else:
                field, code = unmet(self.catalog.chat_models(), requirements)
            hint = ""
            if requirements.tools:
                # What a new user meets first: a tool-using agent on the toy local model.
                hint = f"; tool-using agents need a tool-capable model: {TOOL_MODEL_HINT}"
            raise BadRequest(
                f"no configured model meets the request ({reasons}){hint}",
                field=field,
                **({"code": code} if code else {}),
            )
        return admitted(RoutePlan(strategy=chosen, models=ordered, decision=decision), admit)

    def _named_plan(self, model: str, strategy: str, requirements: Requirements) -> RoutePlan:
        """The named model, then the fallback chain's models that meet the call, each provider's
        in the strategy's order. Only the chain's models are ordered: with no chain, a named
        model's call orders nothing (the strategy's name is checked all the same)."""
        chain = dict.fromkeys(self._settings.fallback_chain)
        ordering = strategy_named(self._ordering(strategy))
        ordered = []
        if chain:
            candidates = self.catalog.candidates(requirements)
            ordered = ordering(
                [spec for spec in candidates if spec.provider in chain],
                self._routing_context(requirements),
            )
        first = self._explicit(model)
        if requirements.embeddings:
            first = self._explicit_embedding_model(first, requirements)
        lacking = first.unsupported(requirements)
        if lacking is not None:
            raise BadRequest(
                f"model {first.name!r} {lacking}; leave it out or choose another model",
                field=param_named(lacking, requirements),
            )
        fallbacks = [
            spec
            for provider in chain
            for spec in ordered
            if spec.provider == provider and spec.name != first.name
        ]
        return RoutePlan(strategy=strategy, models=[first, *fallbacks])

    def _ordering(self, strategy: str) -> str:
        # ``learned`` orders by its weights; without them, by the configured cold-start order.
        return self._settings.learning.cold_start_strategy if strategy == "learned" else strategy

    def _routing_context(self, requirements: Requirements) -> RoutingContext:
        preference = [default_provider(self._settings), *self._settings.fallback_chain]
        return RoutingContext(
            health=self.health,
            requirements=requirements,
            preference=preference,
            defaults=frozenset(
                str(getattr(self._settings.models, provider, "")) for provider in preference
            ),
            weights=self.learned.weights,
            min_observations=self._settings.learning.min_observations,
        )

    async def complete(
        self,
        request: ChatRequest,
        *,
        plan: RoutePlan | None = None,
        admit: Callable[[ModelSpec], bool] | None = None,
    ) -> Completion:
        """Answer with the first model of the plan that can; errors come back typed.

        Raises:
            TransientFailure: Every model failed transiently or is cooling down.
            ContextWindowExceeded: No model of the plan could take the prompt.
            SpineError: A model refused the call for a reason another model would share.
        """
        plan = plan or self.plan_chat(request, admit=admit)
        path: list[Attempt] = []
        last_error: SpineError | None = None
        for spec in plan.models:
            target = self._target(spec)
            breaker = self.health.breaker(spec.name)
            permit = breaker.acquire()
            if permit is None:
                path.append(Attempt(model=spec.name, provider=spec.provider, error=CIRCUIT_OPEN))
                continue
            try:
                answer = await self._upstream.call(target, request)
            except SpineError as exc:
                record_failure(exc, spec, breaker, permit, path)
                last_error = exc
                continue
            except BaseException:
                breaker.abandoned(permit)
                raise
            breaker.succeeded(permit)
            self.health.observe_latency(spec.name, answer.latency_ms)
            path.append(Attempt(model=spec.name, provider=spec.provider))
            answer.model = spec.name
            answer.strategy = plan.strategy
            answer.fallback_path = path
            return answer
        raise exhausted(self.health, path, last_error)

    async def stream(
        self,
        request: ChatRequest,
        *,
        plan: RoutePlan | None = None,
        admit: Callable[[ModelSpec], bool] | None = None,
    ) -> CompletionStream:
        """Open a streamed answer from the first model of the plan that produces output.

        A model that fails before its first text or tool call is treated as in
        :meth:`complete` (the next one is tried); the returned stream is bound to the model
        that produced output, and raises a mid-stream failure from its iteration.

        Raises:
            TransientFailure: Every model failed transiently or is cooling down.
            ContextWindowExceeded: No model of the plan could take the prompt.
            SpineError: A model refused the call for a reason another model would share.
        """
        plan = plan or self.plan_chat(request, admit=admit)
        path: list[Attempt] = []
        last_error: SpineError | None = None
        for spec in plan.models:
            target = self._target(spec)
            breaker = self.health.breaker(spec.name)
            permit = breaker.acquire()
            if permit is None:
                path.append(Attempt(model=spec.name, provider=spec.provider, error=CIRCUIT_OPEN))
                continue
            started = time.perf_counter()
            deltas = self._upstream.stream(target, request)
            try:
                buffered, ended = await first_output(deltas)
            except SpineError as exc:
                record_failure(exc, spec, breaker, permit, path)
                last_error = exc
                continue
            except BaseException:
                breaker.abandoned(permit)
                await deltas.aclose()
                raise
            path.append(Attempt(model=spec.name, provider=spec.provider))

            def settle(
                outcome: StreamOutcome,
                name: str = spec.name,
                granted: Permit = permit,
                t0: float = started,
            ) -> None:
                held = self.health.breaker(name)
                if outcome == "failed":
                    held.failed(granted)
                elif outcome == "abandoned":
                    held.abandoned(granted)
                else:
                    held.succeeded(granted)
                    self.health.observe_latency(name, (time.perf_counter() - t0) * 1000)

            return CompletionStream(
                model=spec.name,
                provider=spec.provider,
                strategy=plan.strategy,
                fallback_path=path,
                buffered=buffered,
                rest=None if ended else deltas,
                settle=settle,
            )
        raise exhausted(self.health, path, last_error)

    async def embed(
        self,
        request: EmbeddingRequest,
        *,
        plan: RoutePlan | None = None,
        admit: Callable[[ModelSpec], bool] | None = None,
    ) -> Embedding:
        """Embed ``texts`` with the first model of the plan that can; errors come back typed.

        ``dimensions`` asks for vectors of that size: models that shorten their vectors are
        asked to; others must give that size (checked, and learned for later plans).
        ``fallback=False`` with a ``model`` tries that model only: vectors of different models
        live in different spaces, and a store must not mix them.

        Raises:
            ProviderNotConfigured: No model makes embeddings.
            TransientFailure: Every model failed transiently or is cooling down.
            BadRequest: No model gives vectors of the size asked for.
            SpineError: A model refused the call for a reason another model would share.
        """
        model, dimensions = request.model, request.dimensions
        plan = plan or self.plan_embedding(request, admit=admit)
        path: list[Attempt] = []
        last_error: SpineError | None = None
        for spec in plan.models:
            breaker = self.health.breaker(spec.name, "embedding")
            permit = breaker.acquire()
            if permit is None:
                path.append(Attempt(model=spec.name, provider=spec.provider, error=CIRCUIT_OPEN))
                continue
            try:
                answer = await self._embed_once(spec, request)
            except SpineError as exc:
                record_failure(exc, spec, breaker, permit, path)
                last_error = exc
                continue
            except BaseException:
                breaker.abandoned(permit)
                raise
            breaker.succeeded(permit)
            self.health.observe_latency(spec.name, answer.latency_ms)
            if not spec.capabilities.variable_dimensions and answer.vectors:
                self.catalog.learn_dimensions(spec.name, answer.dimensions)
            if dimensions is not None and answer.dimensions != dimensions:
                wrong = BadRequest(
                    f"model {spec.name} gives {answer.dimensions}-dimensional vectors, "
                    f"not {dimensions}",
                    field="dimensions",
                )
                if model is not None:
                    raise wrong  # the caller chose the model: its size is the answer
                # The model is up, its vectors are another size: another model may fit.
                path.append(
                    Attempt(model=spec.name, provider=spec.provider, error=WRONG_DIMENSIONS)
                )
                last_error = wrong
                continue
            path.append(Attempt(model=spec.name, provider=spec.provider))
            answer.model = spec.name
            answer.strategy = plan.strategy
            answer.fallback_path = path
            return answer
        raise exhausted(self.health, path, last_error, kind="embedding")

    async def _embed_once(self, spec: ModelSpec, request: EmbeddingRequest) -> Embedding:
        if spec.provider == LOCAL_EMBEDDING_PROVIDER:
            if self._local_embedder is None:
                self._local_embedder = LocalEmbedder(self._settings.local_embedding)
            return await self._local_embedder.embed(request.texts)
        wanted = spec.embedding_params(request.dimensions)
        asked = replace(request, params={**request.params, **wanted})
        return await self._upstream.embed(self._target(spec), asked)

    def _explicit_embedding_model(self, spec: ModelSpec, requirements: Requirements) -> ModelSpec:
        if not spec.capabilities.embeddings:
            if spec.name in self.catalog:
                able = ", ".join(s.name for s in self.catalog.embedding_models()) or "none"
                raise BadRequest(
                    f"model {spec.name!r} does not make embeddings; the models that do: {able}",
                    field="model",
                )
            spec = spec.as_embedding_model()
        refusal = spec.refusal(requirements)
        if refusal is not None and requirements.dimensions is not None and "dimension" in refusal:
            raise BadRequest(
                f"model {spec.name!r} {refusal}: leave 'dimensions' out or choose another model",
                field="dimensions",
            )
        return spec

    def plan_chat(
        self, request: ChatRequest, *, admit: Callable[[ModelSpec], bool] | None = None
    ) -> RoutePlan:
        """Return the plan of a chat call (see :meth:`plan`)."""
        requirements = Requirements.of(
            request.messages, request.params, min_quality=request.min_quality
        )
        return self.plan(requirements, model=request.model, strategy=request.strategy, admit=admit)

    def plan_embedding(
        self, request: EmbeddingRequest, *, admit: Callable[[ModelSpec], bool] | None = None
    ) -> RoutePlan:
        """Return the plan of an embedding call (see :meth:`plan`).

        ``fallback=False`` with a ``model`` keeps that model alone.
        """
        requirements = Requirements.for_embedding(
            request.texts, dimensions=request.dimensions, min_quality=request.min_quality
        )
        plan = self.plan(requirements, model=request.model, strategy=request.strategy, admit=admit)
        if not request.fallback and request.model is not None:
            plan = RoutePlan(strategy=plan.strategy, models=plan.models[:1])
        return plan

    def _target(self, spec: ModelSpec) -> ProviderTarget:
        return provider_target(
            self._settings,
            spec.provider,
            spec.model,
            api_base=spec.api_base,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
        )

    def knows(self, name: str) -> bool:
        """Tell whether a call may name ``name`` (a catalog model, or provider/model)."""
        try:
            self._explicit(name)
        except UnknownModel:
            return False
        return True

    def _explicit(self, name: str) -> ModelSpec:
        found = self.catalog.get(name)
        if found is not None:
            return found
        provider, _, upstream = name.partition("/")
        if upstream and provider in configured_providers(self._settings):
            # "provider/model" reaches a model of a configured provider that no one listed.
            return ModelSpec.for_provider(provider, upstream, name=name)
        raise UnknownModel(
            f"unknown model {name!r}; known models: {', '.join(self.catalog.names)} "
            "(or give provider/model for a configured provider)",
            field="model",
        )
