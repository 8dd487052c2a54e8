"""Metered model calls: the one path every routed call takes, with cache, budgets and usage.

:class:`MeteredModels` wraps the :class:`~spine.platform.router.ModelRouter`. Per call it

1. looks the answer up in the response cache (unless the caller bypasses it); a hit costs
   nothing, reserves nothing and is recorded as a hit;
2. plans the call once (the router gets the same plan) and reserves the most the call can cost
   in every budget scope of the caller (global, tenant, key). The estimate is the *maximum*
   over the models of the plan, not the first model's price: any of them may end up answering
   after a fallback, and a settlement above the reservation is counted in full, past the
   limit. Reserving the maximum is what keeps "concurrency never overspends" true with
   fallbacks. A plan that starts with a free model (local, price 0) is never refused: when the
   budget cannot cover the dearest fallback, the call is narrowed to the plan's free models;
3. calls the router;
4. settles the reservation with the actual cost (the answer's tokens at the answering model's
   prices; written behind, see :meth:`BudgetLedger.settle_later`), or releases it when the
   call failed;
5. records one usage row: for answers, failures, budget refusals and cache hits alike. The row
   is queued for the usage ledger's background writer, not committed on the call's path (see
   :mod:`spine.platform.metering.usage`); :meth:`MeteredModels.flush` writes what is queued;
6. hands that row to the outcome hook, if one was given (:class:`OutcomeHook`: the API wires
   a publisher of outcome events to JetStream there; this module knows nothing of NATS).

Steps 4 to 6 of an answered call run in a task of their own once its cost is known, and so do
a cache hit's: the answer goes back to the caller without waiting for its books (and the
request's features for the learner are extracted there, unless the ``learned`` strategy needed
them to plan). A miss's answer is written to the cache first in that task, ahead of anything
that may wait, so the caller's same request, sent again at once, finds it.
:meth:`MeteredModels.flush`, :meth:`~MeteredModels.take_usage` and
:meth:`~MeteredModels.close` wait for those tasks.

Each call is one model-call span when tracing is on (:mod:`spine.platform.telemetry.tracing`):
what answered, its provider and tokens; a stream's ends when the stream does.

Embedding calls (:meth:`MeteredModels.embed`) take steps 2 to 6 (they are not cached): the
reservation is the input's estimated tokens at the dearest input price of the plan. Streams
are reserved when they open and settled when they end (:mod:`spine.platform.metering.streams`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

from spine.platform.errors import BudgetExceeded, SpineError
from spine.platform.learning.experiments import ExperimentBook
from spine.platform.metering.budgets import (
    BudgetLedger,
    Reservation,
    budget_scopes,
    cost_of,
    estimate_cost,
    is_free,
)
from spine.platform.metering.cache import CacheKey, ResponseCache
from spine.platform.metering.caller import CallerModels
from spine.platform.metering.choosing import RouteChooser
from spine.platform.metering.context import (
    ABANDONED,
    EXPLICIT,
    CacheStatus,
    CallContext,
    OutcomeHook,
)
from spine.platform.metering.streams import MeteredStream, replayed
from spine.platform.metering.usage import OK, ModelCallRecord, UsageLedger
from spine.platform.models import Attempt, ChatRequest, Completion, Embedding, EmbeddingRequest
from spine.platform.router import ModelRouter, ModelSpec, Requirements, RoutePlan
from spine.platform.telemetry import ModelCallSpan, model_call, start_model_call

__all__ = ["MeteredCompletion", "MeteredEmbedding", "MeteredModels"]

logger = logging.getLogger(__name__)

_Request = TypeVar("_Request", ChatRequest, EmbeddingRequest)
_ZERO = Decimal(0)

# Answers whose books (settlement, usage row, outcome, cache) may still be being written while
# their callers go on; past this, a caller writes its own before its answer goes back.
BOOKS_BEHIND = 256


@dataclass(slots=True, kw_only=True)
class MeteredCompletion:
    """An answer with what it cost (USD) and how the cache served it."""

    completion: Completion
    cost: Decimal
    cache: CacheStatus


@dataclass(slots=True, kw_only=True)
class MeteredEmbedding:
    """Vectors with what they cost (USD)."""

    embedding: Embedding
    cost: Decimal


@dataclass(slots=True, kw_only=True)
class _Budgeted:
    """The plan a call may take once its budget was reserved."""

    reservation: Reservation
    plan: RoutePlan


class MeteredModels:
    """Makes routed model calls with the response cache, budgets and the usage ledger."""

    def __init__(
        self,
        router: ModelRouter,
        *,
        budgets: BudgetLedger,
        usage: UsageLedger,
        cache: ResponseCache | None = None,
        outcomes: OutcomeHook | None = None,
        experiments: ExperimentBook | None = None,
    ) -> None:
        self.router = router
        self.budgets = budgets
        self.usage = usage
        self.cache = cache
        self.outcomes = outcomes
        self.experiments = experiments
        self._chooser = RouteChooser(router, budgets=budgets, experiments=experiments)
        self._pending: set[asyncio.Task[None]] = set()

    async def complete(self, request: ChatRequest, context: CallContext) -> MeteredCompletion:
        """Answer a chat call through the cache, the budgets and the router.

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises (unknown model, every model failed, ...).
        """
        with model_call("chat", request.model, messages=request.messages) as traced:
            metered = await self._complete(request, context)
            if traced is not None:
                answer = metered.completion
                traced.answered(
                    model=answer.model,
                    provider=answer.provider,
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.output_tokens,
                    cache=metered.cache,
                    cost=float(metered.cost),
                    text=answer.text,
                )
            return metered

    async def _complete(self, request: ChatRequest, context: CallContext) -> MeteredCompletion:
        started = time.perf_counter()
        request, context = await self._chooser.in_experiment(request, context)
        request = self._with_strategy(request, context)
        strategy = self._strategy(request, context)
        key = self._cache_key(request, context)
        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                ended = time.perf_counter()
                await self._books(
                    self._record(
                        context,
                        strategy,
                        started,
                        hit.model,
                        hit.provider,
                        ended=ended,
                        cache_hit=True,
                    )
                )
                return MeteredCompletion(completion=hit, cost=_ZERO, cache="hit")
        requirements = _requirements(request)
        plan = await self._chooser.plan(request, requirements, context)
        budgeted = await self._reserve(plan, requirements, context, strategy, started, request)
        try:
            answer = await self.router.complete(request, plan=budgeted.plan)
        except BaseException as exc:
            await self._failed(exc, budgeted, context, strategy, request, started)
            raise
        cost = await self._answered(
            budgeted, context, strategy, answer, started, chat=request, cache_key=key
        )
        return MeteredCompletion(
            completion=answer, cost=cost, cache="miss" if key is not None else "bypass"
        )

    async def stream(self, request: ChatRequest, context: CallContext) -> MeteredStream:
        """Open a streamed answer; it is settled, recorded and cached when its iteration ends.

        A cache hit is replayed as a stream of one delta; only a stream that ended normally
        is stored, never one that failed or was abandoned part-way.

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises before the first output.
        """
        # Its span ends with the stream (when its books are settled).
        traced = start_model_call("chat", request.model, messages=request.messages)
        try:
            opened = await self._stream(request, context)
        except BaseException as exc:
            if traced is not None:
                traced.failed(exc)
                traced.end()
            raise
        if traced is not None:
            opened.finish = _ending_span(traced, opened.finish)
        return opened

    async def _stream(self, request: ChatRequest, context: CallContext) -> MeteredStream:
        started = time.perf_counter()
        request, context = await self._chooser.in_experiment(request, context)
        request = self._with_strategy(request, context)
        strategy = self._strategy(request, context)
        requirements = _requirements(request)
        key = self._cache_key(request, context)
        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                return MeteredStream(
                    inner=replayed(hit),
                    context=context,
                    finish=self._settle_later,
                    reservation=None,
                    spec=None,
                    prompt_tokens=requirements.prompt_tokens,
                    started=started,
                    cache="hit",
                    routing=strategy,
                )
        plan = await self._chooser.plan(request, requirements, context)
        budgeted = await self._reserve(plan, requirements, context, strategy, started, request)
        try:
            opened = await self.router.stream(request, plan=budgeted.plan)
        except BaseException as exc:
            await self._failed(exc, budgeted, context, strategy, request, started)
            raise
        return MeteredStream(
            inner=opened,
            context=context,
            finish=self._settle_later,
            reservation=budgeted.reservation,
            spec=self._spec(opened.model, budgeted.plan),
            prompt_tokens=requirements.prompt_tokens,
            started=started,
            cache="miss" if key is not None else "bypass",
            key=key,
            routing=strategy,
            decision=self._chooser.described(budgeted.plan, request, context),
        )

    async def embed(self, request: EmbeddingRequest, context: CallContext) -> MeteredEmbedding:
        """Embed texts through the budgets and the router, and record the call.

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises (no embedding model, every model failed, ...).
        """
        with model_call("embeddings", request.model) as traced:
            metered = await self._embed(request, context)
            if traced is not None:
                answer = metered.embedding
                traced.answered(
                    model=answer.model,
                    provider=answer.provider,
                    input_tokens=answer.input_tokens,
                    output_tokens=0,
                    cost=float(metered.cost),
                )
            return metered

    async def _embed(self, request: EmbeddingRequest, context: CallContext) -> MeteredEmbedding:
        started = time.perf_counter()
        request = self._with_strategy(request, context)
        strategy = self._strategy(request, context)
        requirements = Requirements.for_embedding(
            request.texts, dimensions=request.dimensions, min_quality=request.min_quality
        )
        plan = self.router.plan_embedding(request)
        budgeted = await self._reserve(plan, requirements, context, strategy, started, request)
        try:
            answer = await self.router.embed(request, plan=budgeted.plan)
        except BaseException as exc:
            await self._failed(exc, budgeted, context, strategy, request, started)
            raise
        answer.cost = await self._answered(budgeted, context, strategy, answer, started)
        return MeteredEmbedding(embedding=answer, cost=answer.cost)

    def for_caller(self, context: CallContext) -> CallerModels:
        """Return the model calls of one caller, metered as ``context``."""
        return CallerModels(self, context)

    async def warm_up(self) -> None:
        """Warm the router up (once per process, however often it is asked)."""
        await self.router.warm_up()

    async def flush(self) -> None:
        """Write the usage rows and budget settlements of the calls made so far (both are
        written behind)."""
        if self._pending:  # calls and streams whose books are still being written
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.budgets.flush()
        await self.usage.flush()

    async def take_usage(self, task_id: str) -> list[ModelCallRecord]:
        """Write the budget settlements of the calls made so far, and take the usage rows of
        ``task_id``'s calls not written yet, for the caller to write with the task's end
        (:meth:`put_back_usage` what it could not)."""
        if self._pending:  # calls and streams whose books are still being written
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.budgets.flush()
        return self.usage.take(task_id)

    def put_back_usage(self, calls: list[ModelCallRecord]) -> None:
        """Queue again usage rows :meth:`take_usage` gave out and their taker did not write."""
        self.usage.put_back(calls)

    async def close(self) -> None:
        """Wait for streams being settled, drain what is written behind, then close the cache."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.budgets.close()
        await self.usage.close()
        if self.cache is not None:
            await self.cache.close()
        await self.router.close()

    # -- steps ------------------------------------------------------------------------------

    def _with_strategy(self, request: _Request, context: CallContext) -> _Request:
        # The request's strategy, else its tenant's, else the global one.
        if request.strategy:
            return request
        return replace(request, strategy=self.router.strategy_for(context.tenant))

    def _strategy(self, request: ChatRequest | EmbeddingRequest, context: CallContext) -> str:
        # A model an experiment's arm set was chosen for the caller, not named by it: the call
        # is routed, under the strategy in force (the arm's, else the caller's).
        chosen = context.assignment is not None and context.assignment.model is not None
        if request.model is not None and not chosen:
            return EXPLICIT
        return request.strategy or self.router.default_strategy

    def _cache_key(self, request: ChatRequest, context: CallContext) -> CacheKey | None:
        if self.cache is None or not context.use_cache:
            return None
        strategy = request.strategy or self.router.default_strategy
        keyed: dict[str, Any] = dict(request.params)
        if request.min_quality:
            keyed["min_quality"] = request.min_quality
        try:
            return CacheKey.of(
                tenant=context.tenant,
                model=request.model if request.model is not None else f"auto:{strategy}",
                messages=request.messages,
                params=keyed,
            )
        except TypeError as exc:
            logger.debug("call not cacheable: %s", exc)
            return None

    async def _reserve(
        self,
        plan: RoutePlan,
        requirements: Requirements,
        context: CallContext,
        strategy: str,
        started: float,
        request: ChatRequest | EmbeddingRequest,
    ) -> _Budgeted:
        # The prompt's upper bound, not the estimate the context checks use: a reservation
        # below the actual cost lets concurrent calls overspend.
        prices = [
            estimate_cost(
                spec,
                requirements.prompt_ceiling,
                requirements.max_tokens,
                window_prompt_tokens=requirements.prompt_tokens,
            )
            or _ZERO
            for spec in plan.models
        ]
        scopes = budget_scopes(tenant=context.tenant, key_id=context.key_id)
        try:
            reservation = await self.budgets.reserve(scopes, max(prices, default=_ZERO))
        except BudgetExceeded as exc:
            free = [spec for spec in plan.models if is_free(spec)]
            if plan.models and is_free(plan.models[0]):
                # A local model never waits on the budget; only the dearer fallbacks are cut.
                logger.info(
                    "budget exhausted: call limited to free models %s",
                    sorted(spec.name for spec in free),
                )
                reservation = await self.budgets.reserve(scopes, _ZERO)
                narrowed = RoutePlan(strategy=plan.strategy, models=free, decision=plan.decision)
                return _Budgeted(reservation=reservation, plan=narrowed)
            first = plan.models[0] if plan.models else None
            await self._record(
                context,
                strategy,
                started,
                first.name if first else "",
                first.provider if first else "",
                outcome=exc.error_type,
                decision=self._decision(plan, request, context),
            )
            raise
        return _Budgeted(reservation=reservation, plan=plan)

    async def _answered(
        self,
        budgeted: _Budgeted,
        context: CallContext,
        strategy: str,
        answer: Completion | Embedding,
        started: float,
        *,
        chat: ChatRequest | None = None,
        cache_key: CacheKey | None = None,
    ) -> Decimal:
        """Price the answer now; settle, record (and cache) it in a task of its own.

        The caller's answer does not wait for its books, which are written behind anyway;
        :meth:`flush`, :meth:`take_usage` and :meth:`close` wait for that task. When books
        pile up (a full usage queue, a slow cache), the caller writes its own: backpressure.
        """
        output_tokens = answer.output_tokens if isinstance(answer, Completion) else 0
        cost = cost_of(self._spec(answer.model, budgeted.plan), answer.input_tokens, output_tokens)
        ended = time.perf_counter()

        async def books() -> None:
            # The cache first: a caller's same request, sent once this answer reaches it, meets
            # the answer in the cache (its books task runs before that request's, and an
            # in-process cache is written without waiting), not behind the settlement's waits.
            if cache_key is not None and self.cache is not None and isinstance(answer, Completion):
                try:
                    await self.cache.put(cache_key, answer)
                except Exception as exc:  # a cache that cannot be written costs a later call
                    logger.warning("answer of a %s call not cached: %r", answer.model, exc)
            await self._settle(budgeted.reservation, cost)
            await self._record(
                context,
                strategy,
                started,
                answer.model,
                answer.provider,
                ended=ended,
                input_tokens=answer.input_tokens,
                output_tokens=output_tokens,
                cost=cost,
                fallback_path=_tried_before(answer.fallback_path),
                decision=self._decision(budgeted.plan, chat, context),
            )

        await self._books(books())
        return cost

    async def _failed(
        self,
        exc: BaseException,
        budgeted: _Budgeted,
        context: CallContext,
        strategy: str,
        request: ChatRequest | EmbeddingRequest,
        started: float,
    ) -> None:
        """Release the reservation of a call that raised; record it unless it was a bug.

        A caller that went away (a client that gave up, a cancelled task) may still have cost
        a model call: it is recorded as abandoned, never dropped.
        """
        await self._settle(budgeted.reservation, None)
        if not isinstance(exc, SpineError | asyncio.CancelledError):
            return
        path = exc.details.get("fallback_path", []) if isinstance(exc, SpineError) else []
        tried = [str(step).rpartition(": ")[0] for step in path]
        plan = budgeted.plan.models
        last = tried[-1] if tried else (plan[0].name if plan else (request.model or ""))
        spec = self._spec(last, budgeted.plan)
        await self._record(
            context,
            strategy,
            started,
            last,
            spec.provider if spec is not None else "",
            fallback_path=tried[:-1],
            outcome=exc.error_type if isinstance(exc, SpineError) else ABANDONED,
            decision=self._decision(budgeted.plan, request, context),
        )

    def _decision(
        self, plan: RoutePlan, request: ChatRequest | EmbeddingRequest | None, context: CallContext
    ) -> dict[str, Any] | None:
        # A chat call's decision carries its features for the learner; an embedding's has none.
        if isinstance(request, ChatRequest):
            return self._chooser.described(plan, request, context)
        return plan.decision

    async def _books(self, books: Coroutine[Any, Any, None]) -> None:
        """Write an answer's books in a task of its own (:meth:`flush` and :meth:`close` wait
        for it), or here once :data:`BOOKS_BEHIND` are being written already: backpressure."""
        if len(self._pending) >= BOOKS_BEHIND:
            await books
            return
        self._keep(asyncio.get_running_loop().create_task(books))

    def _keep(self, task: asyncio.Task[None]) -> None:
        # Books being written: flush() and close() wait for them.
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, reservation: Reservation, cost: Decimal | None) -> None:
        # Settles (or, without a cost, releases) even when the caller is cancelled. A ledger
        # that cannot be written must not fail a call that was made; the reservation then
        # stays held until the day ends, which errs on the side of spending less.
        work = (
            self.budgets.release(reservation)
            if cost is None
            else self.budgets.settle_later(reservation, cost)
        )
        try:
            await asyncio.shield(work)
        except Exception as exc:
            logger.warning("budget of %s not settled: %s", ", ".join(reservation.scopes), exc)

    async def _record(
        self,
        context: CallContext,
        strategy: str,
        started: float,
        model: str,
        provider: str,
        *,
        ended: float | None = None,
        **outcome: Any,
    ) -> None:
        """Queue the call's usage row and tell the outcome hook (``ended``: when the call
        ended, if not now).

        Queued for the ledger's background writer: no commit on the call's path. Losing a
        usage row must not fail a call that was made (and maybe paid for).
        """
        record = ModelCallRecord(
            tenant=context.tenant,
            key_id=context.key_id,
            task_id=context.task_id,
            task_category=context.task_category,
            completion_id=context.completion_id,
            model=model,
            provider=provider,
            latency_ms=_since(started, ended),
            strategy=strategy,
            experiment_id=context.assignment.experiment_id if context.assignment else None,
            arm=context.assignment.arm if context.assignment else None,
            **outcome,
        )
        try:
            await self.usage.submit(record)
        except Exception as exc:
            logger.warning("usage of a %s call not recorded: %s", record.model, exc)
        if self.outcomes is not None:
            try:
                self.outcomes(record)
            except Exception:
                logger.warning("outcome of a %s call not reported", record.model, exc_info=True)

    async def _finish_stream(self, stream: MeteredStream, outcome: str) -> None:
        inner = stream.inner
        if stream.cache == "hit":
            await self._record(
                stream.context,
                stream.routing,
                stream.started,
                inner.model,
                inner.provider,
                ended=stream.ended,
                cache_hit=True,
                outcome=outcome,
            )
            return
        # The provider's usage, else an estimate: the same numbers the client's usage chunk has.
        input_tokens, output_tokens = stream.tokens()
        cost = stream.cost  # set by _settle_later as the stream ended
        if stream.reservation is not None:
            await self._settle(stream.reservation, cost)
        await self._record(
            stream.context,
            stream.routing,
            stream.started,
            inner.model,
            inner.provider,
            ended=stream.ended,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            fallback_path=_tried_before(inner.fallback_path),
            outcome=outcome,
            decision=stream.decision,
        )
        if outcome == OK and stream.key is not None and self.cache is not None:
            answer = stream.answer(
                input_tokens, output_tokens, _since(stream.started, stream.ended)
            )
            await self.cache.put(stream.key, answer)

    def _settle_later(self, stream: MeteredStream, outcome: str) -> asyncio.Task[None]:
        # The cost, which the caller reads as the stream ends, is known now; the books follow.
        stream.ended = time.perf_counter()
        if stream.cache == "hit":
            stream.cost = _ZERO
        else:
            stream.cost = cost_of(stream.spec, *stream.tokens())
        task = asyncio.get_running_loop().create_task(self._finish_stream(stream, outcome))
        self._keep(task)
        return task

    def _spec(self, name: str, plan: RoutePlan) -> ModelSpec | None:
        for spec in plan.models:
            if spec.name == name:
                return spec
        return self.router.catalog.get(name)


def _ending_span(
    traced: ModelCallSpan, finish: Callable[[MeteredStream, str], asyncio.Task[None]]
) -> Callable[[MeteredStream, str], asyncio.Task[None]]:
    """Wrap a stream's ``finish`` so that it also ends the stream's span."""

    def finishing(stream: MeteredStream, outcome: str) -> asyncio.Task[None]:
        input_tokens, output_tokens = stream.tokens()
        traced.answered(
            model=stream.model,
            provider=stream.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache=stream.cache,
            text="".join(stream.texts),
        )
        if outcome != OK:
            traced.failed(outcome)
        traced.end()
        return finish(stream, outcome)

    return finishing


def _requirements(request: ChatRequest) -> Requirements:
    return Requirements.of(request.messages, request.params, min_quality=request.min_quality)


def _tried_before(path: list[Attempt]) -> list[str]:
    return [attempt.model for attempt in path[:-1]]


def _since(started: float, ended: float | None = None) -> float:
    return ((time.perf_counter() if ended is None else ended) - started) * 1000
