"""Metered model calls: the one path every routed call takes, with cache, budgets and usage.

:class:`ModelCalls` wraps the :class:`~spine.platform.router.ModelRouter`. Per call it

1. looks the answer up in the response cache (unless the caller bypasses it); a hit costs
   nothing, reserves nothing and is recorded as a hit;
2. reserves the most the call can cost in every budget scope of the caller (global, tenant,
   key). The estimate is the *maximum* over the models of the route plan, not the first
   model's price: any of them may end up answering after a fallback, and a settlement above
   the reservation is counted in full, past the limit. Reserving the maximum is what keeps
   "concurrency never overspends" true with fallbacks. A plan that starts with a free model
   (local, price 0) is never refused: when the budget cannot cover the dearest fallback, the
   call is narrowed to the plan's free models instead;
3. calls the router;
4. settles the reservation with the actual cost (the answer's tokens at the answering model's
   prices; written behind, see :meth:`BudgetLedger.settle_later`), or releases it when the
   call failed;
5. records one usage row: for answers, failures, budget refusals and cache hits alike. The row
   is queued for the usage ledger's background writer, not committed on the call's path (see
   :mod:`spine.platform.usage`); :meth:`ModelCalls.flush` writes what is queued;
6. hands that row to the outcome hook, if one was given (:class:`OutcomeHook`: the API wires
   a publisher of outcome events to JetStream there; this module knows nothing of NATS).

Embedding calls (:meth:`ModelCalls.embed`) take steps 2 to 6 (they are not cached): the
reservation is the input's estimated tokens at the dearest input price of the plan.

A stream is reserved when it opens and settled and recorded when it ends: with the usage of its
final chunk, or an estimate (4 characters a token) when the provider sent none. A stream that
fails mid-way or is abandoned is charged for what it produced so far, and never cached; one
that ended normally is cached like any answer, and a hit is replayed as a one-delta stream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from spine.platform.budgets import BudgetLedger, Reservation, budget_scopes, estimate_cost
from spine.platform.errors import BudgetExceeded, SpineError
from spine.platform.llm import Attempt, Completion, CompletionDelta, Embedding
from spine.platform.router import CompletionStream, ModelRouter, ModelSpec, Requirements
from spine.platform.router.cache import CacheKey, ResponseCache
from spine.platform.usage import OK, ModelCallRecord, UsageLedger

__all__ = [
    "EXPLICIT",
    "CacheStatus",
    "CallContext",
    "CallerModels",
    "MeteredCompletion",
    "MeteredEmbedding",
    "MeteredStream",
    "ModelCalls",
    "OutcomeHook",
]

logger = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "bypass"]
_ZERO = Decimal(0)
_CHARS_PER_TOKEN = 4
EXPLICIT = "explicit"
"""The strategy reported for a call that named its model."""
ABANDONED = "abandoned"
"""The outcome of a call whose caller went away before it ended."""


@dataclass(slots=True, kw_only=True, frozen=True)
class CallContext:
    """Who makes a call, and whether it may be answered from the cache."""

    tenant: str
    key_id: str | None = None
    task_id: str | None = None
    task_category: str | None = None
    use_cache: bool = True


class OutcomeHook(Protocol):
    """Told of every routed call once its usage row was queued (or failed to be).

    Called in the caller's task, so it must return at once (hand the work to a background
    task) and should not raise; an exception it raises is logged and otherwise ignored.
    ``strategy`` is the routing strategy of the call, or ``"explicit"`` when it named a model.
    """

    def __call__(
        self, record: ModelCallRecord, *, strategy: str, task_category: str | None
    ) -> None:
        """Take note of one call."""


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
    """What a call may use once its budget was reserved."""

    reservation: Reservation
    admit: Callable[[ModelSpec], bool] | None
    plan: list[ModelSpec]


class ModelCalls:
    """Makes routed model calls with the response cache, budgets and the usage ledger."""

    def __init__(
        self,
        router: ModelRouter,
        *,
        budgets: BudgetLedger,
        usage: UsageLedger,
        cache: ResponseCache | None = None,
        outcomes: OutcomeHook | None = None,
    ) -> None:
        self.router = router
        self.budgets = budgets
        self.usage = usage
        self.cache = cache
        self.outcomes = outcomes
        self._pending: set[asyncio.Task[None]] = set()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        context: CallContext,
        *,
        model: str | None = None,
        **params: Any,
    ) -> MeteredCompletion:
        """Answer a chat call through the cache, the budgets and the router.

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises (unknown model, every model failed, ...).
        """
        started = time.perf_counter()
        params = self._with_strategy(context, params)
        strategy = self._strategy(model, params)
        key = self._cache_key(messages, context, model, params)
        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                await self._record(
                    context,
                    strategy,
                    ModelCallRecord(
                        tenant=context.tenant,
                        key_id=context.key_id,
                        task_id=context.task_id,
                        model=hit.model,
                        provider=hit.provider,
                        latency_ms=_since(started),
                        cache_hit=True,
                    ),
                )
                return MeteredCompletion(completion=hit, cost=_ZERO, cache="hit")
        requirements = _requirements(messages, params)
        budgeted = await self._reserve(messages, context, model, params, requirements, started)
        try:
            answer = await self.router.complete(
                messages, model=model, admit=budgeted.admit, **params
            )
        except BaseException as exc:
            await self._failed(exc, budgeted, context, model, params, started)
            raise
        cost = await self._answered(
            budgeted, context, strategy, answer, answer.output_tokens, started
        )
        if key is not None and self.cache is not None:
            await self.cache.put(key, answer)
        return MeteredCompletion(
            completion=answer, cost=cost, cache="miss" if key is not None else "bypass"
        )

    async def stream(
        self,
        messages: list[dict[str, Any]],
        context: CallContext,
        *,
        model: str | None = None,
        **params: Any,
    ) -> MeteredStream:
        """Open a streamed answer; it is settled, recorded and cached when its iteration ends.

        A cache hit is replayed as a stream of one delta; only a stream that ended normally
        is stored, never one that failed or was abandoned part-way.

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises before the first output.
        """
        started = time.perf_counter()
        params = self._with_strategy(context, params)
        requirements = _requirements(messages, params)
        key = self._cache_key(messages, context, model, params)
        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                return MeteredStream(
                    calls=self,
                    inner=_replayed(hit),
                    context=context,
                    reservation=None,
                    spec=None,
                    prompt_tokens=requirements.prompt_tokens,
                    started=started,
                    cache="hit",
                    routing=self._strategy(model, params),
                )
        budgeted = await self._reserve(messages, context, model, params, requirements, started)
        try:
            opened = await self.router.stream(messages, model=model, admit=budgeted.admit, **params)
        except BaseException as exc:
            await self._failed(exc, budgeted, context, model, params, started)
            raise
        return MeteredStream(
            calls=self,
            inner=opened,
            context=context,
            reservation=budgeted.reservation,
            spec=_spec(opened.model, budgeted.plan, self.router),
            prompt_tokens=requirements.prompt_tokens,
            started=started,
            cache="miss" if key is not None else "bypass",
            key=key,
            routing=self._strategy(model, params),
        )

    async def embed(
        self,
        texts: list[str],
        context: CallContext,
        *,
        model: str | None = None,
        **params: Any,
    ) -> MeteredEmbedding:
        """Embed ``texts`` through the budgets and the router, and record the call.

        ``dimensions`` asks for vectors of that size (see :meth:`ModelRouter.embed`).

        Raises:
            BudgetExceeded: A budget scope of the caller cannot cover the call.
            SpineError: What the router raises (no embedding model, every model failed, ...).
        """
        started = time.perf_counter()
        params = self._with_strategy(context, params)
        strategy = self._strategy(model, params)
        requirements = Requirements.for_embedding(
            texts,
            dimensions=params.get("dimensions"),
            min_quality=float(params.get("min_quality") or 0.0),
        )
        budgeted = await self._reserve([], context, model, params, requirements, started)
        try:
            answer = await self.router.embed(texts, model=model, admit=budgeted.admit, **params)
        except BaseException as exc:
            await self._failed(exc, budgeted, context, model, params, started)
            raise
        answer.cost = await self._answered(budgeted, context, strategy, answer, 0, started)
        cost = answer.cost
        return MeteredEmbedding(embedding=answer, cost=cost)

    def for_caller(self, context: CallContext) -> CallerModels:
        """Return a :class:`~spine.platform.llm.ModelClient` whose calls are metered as ``context``."""
        return CallerModels(self, context)

    async def warm_up(self) -> None:
        """Warm the router up (once per process, however often it is asked)."""
        await self.router.warm_up()

    async def flush(self) -> None:
        """Write the usage rows and budget settlements of the calls made so far (both are
        written behind)."""
        await self.budgets.flush()
        await self.usage.flush()

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

    def _with_strategy(self, context: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        # The request's strategy, else its tenant's, else the global one.
        if params.get("strategy"):
            return params
        return {**params, "strategy": self.router.strategy_for(context.tenant)}

    def _strategy(self, model: str | None, params: dict[str, Any]) -> str:
        if model is not None:
            return EXPLICIT
        return str(params.get("strategy") or self.router.default_strategy)

    def _cache_key(
        self,
        messages: list[dict[str, Any]],
        context: CallContext,
        model: str | None,
        params: dict[str, Any],
    ) -> CacheKey | None:
        if self.cache is None or not context.use_cache:
            return None
        keyed = dict(params)
        strategy = keyed.pop("strategy", None) or self.router.default_strategy
        try:
            return CacheKey.of(
                tenant=context.tenant,
                model=model if model is not None else f"auto:{strategy}",
                messages=messages,
                params=keyed,
            )
        except TypeError as exc:
            logger.debug("call not cacheable: %s", exc)
            return None

    async def _reserve(
        self,
        messages: list[dict[str, Any]],
        context: CallContext,
        model: str | None,
        params: dict[str, Any],
        requirements: Requirements,
        started: float,
    ) -> _Budgeted:
        plan = self.router.plan(requirements, model=model, strategy=params.get("strategy")).models
        prices = [
            estimate_cost(spec, requirements.prompt_tokens, requirements.max_tokens) or _ZERO
            for spec in plan
        ]
        scopes = budget_scopes(tenant=context.tenant, key_id=context.key_id)
        try:
            reservation = await self.budgets.reserve(scopes, max(prices, default=_ZERO))
        except BudgetExceeded as exc:
            free = {spec.name for spec in plan if _free(spec)}
            if plan and plan[0].name in free:
                # A local model never waits on the budget; only the dearer fallbacks are cut.
                logger.info("budget exhausted: call limited to free models %s", sorted(free))
                reservation = await self.budgets.reserve(scopes, _ZERO)
                return _Budgeted(
                    reservation=reservation,
                    admit=lambda spec: spec.name in free,
                    plan=[spec for spec in plan if spec.name in free],
                )
            first = plan[0] if plan else None
            await self._record(
                context,
                self._strategy(model, params),
                ModelCallRecord(
                    tenant=context.tenant,
                    key_id=context.key_id,
                    task_id=context.task_id,
                    model=first.name if first else (model or ""),
                    provider=first.provider if first else "",
                    latency_ms=_since(started),
                    outcome=exc.error_type,
                ),
            )
            raise
        return _Budgeted(reservation=reservation, admit=None, plan=plan)

    async def _answered(
        self,
        budgeted: _Budgeted,
        context: CallContext,
        strategy: str,
        answer: Completion | Embedding,
        output_tokens: int,
        started: float,
    ) -> Decimal:
        """Settle the reservation at the answering model's prices and record the call."""
        spec = _spec(answer.model, budgeted.plan, self.router)
        cost = _cost(spec, answer.input_tokens, output_tokens)
        await self._settle(budgeted.reservation, cost)
        await self._record(
            context,
            strategy,
            ModelCallRecord(
                tenant=context.tenant,
                key_id=context.key_id,
                task_id=context.task_id,
                model=answer.model,
                provider=answer.provider,
                input_tokens=answer.input_tokens,
                output_tokens=output_tokens,
                cost=cost,
                latency_ms=_since(started),
                fallback_path=_tried_before(answer.fallback_path),
            ),
        )
        return cost

    async def _failed(
        self,
        exc: BaseException,
        budgeted: _Budgeted,
        context: CallContext,
        model: str | None,
        params: dict[str, Any],
        started: float,
    ) -> None:
        """Release the reservation of a call that raised; record it unless it was a bug."""
        await self._settle(budgeted.reservation, None)
        if isinstance(exc, SpineError | asyncio.CancelledError):
            await self._record_failure(exc, context, model, params, budgeted.plan, started)

    async def _record_failure(
        self,
        exc: SpineError | asyncio.CancelledError,
        context: CallContext,
        model: str | None,
        params: dict[str, Any],
        plan: list[ModelSpec],
        started: float,
    ) -> None:
        # A caller that went away (a client that gave up, a cancelled task) may still have
        # cost a model call: it is recorded as abandoned, never dropped.
        path = exc.details.get("fallback_path", []) if isinstance(exc, SpineError) else []
        tried = [str(step).rpartition(": ")[0] for step in path]
        last = tried[-1] if tried else (plan[0].name if plan else (model or ""))
        spec = _spec(last, plan, self.router)
        await self._record(
            context,
            self._strategy(model, params),
            ModelCallRecord(
                tenant=context.tenant,
                key_id=context.key_id,
                task_id=context.task_id,
                model=last,
                provider=spec.provider if spec is not None else "",
                latency_ms=_since(started),
                fallback_path=tried[:-1],
                outcome=exc.error_type if isinstance(exc, SpineError) else ABANDONED,
            ),
        )

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

    async def _record(self, context: CallContext, strategy: str, record: ModelCallRecord) -> None:
        # Queued for the ledger's background writer: no commit on the call's path. Losing a
        # usage row must not fail a call that was made (and maybe paid for).
        try:
            await self.usage.submit(record)
        except Exception as exc:
            logger.warning("usage of a %s call not recorded: %s", record.model, exc)
        if self.outcomes is not None:
            try:
                self.outcomes(record, strategy=strategy, task_category=context.task_category)
            except Exception:
                logger.warning("outcome of a %s call not reported", record.model, exc_info=True)

    async def _finish_stream(self, stream: MeteredStream, outcome: str) -> None:
        inner = stream.inner
        context = stream.context
        if stream.cache == "hit":
            stream.cost = _ZERO
            await self._record(
                context,
                stream.routing,
                ModelCallRecord(
                    tenant=context.tenant,
                    key_id=context.key_id,
                    task_id=context.task_id,
                    model=inner.model,
                    provider=inner.provider,
                    latency_ms=_since(stream.started),
                    cache_hit=True,
                    outcome=outcome,
                ),
            )
            return
        input_tokens, output_tokens = inner.input_tokens, inner.output_tokens
        if not input_tokens and not output_tokens:
            # The provider sent no usage: estimate from what was seen.
            input_tokens = stream.prompt_tokens
            output_tokens = math.ceil(stream.chars / _CHARS_PER_TOKEN)
        cost = _cost(stream.spec, input_tokens, output_tokens)
        stream.cost = cost
        if stream.reservation is not None:
            await self._settle(stream.reservation, cost)
        await self._record(
            context,
            stream.routing,
            ModelCallRecord(
                tenant=context.tenant,
                key_id=context.key_id,
                task_id=context.task_id,
                model=inner.model,
                provider=inner.provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost=cost,
                latency_ms=_since(stream.started),
                fallback_path=_tried_before(inner.fallback_path),
                outcome=outcome,
            ),
        )
        if outcome == OK and stream.key is not None and self.cache is not None:
            answer = Completion(
                text="".join(stream.texts),
                model=inner.model,
                provider=inner.provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_ms=_since(stream.started),
                strategy=inner.strategy,
                fallback_path=list(inner.fallback_path),
                finish_reason=inner.finish_reason,
                tool_calls=[stream.tool_calls[i] for i in sorted(stream.tool_calls)],
            )
            await self.cache.put(stream.key, answer)

    def _settle_later(self, stream: MeteredStream, outcome: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._finish_stream(stream, outcome))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task


@dataclass(slots=True, kw_only=True)
class MeteredStream:
    """A routed stream that settles its budget and records its usage when it ends.

    Iterate it once; ``cost`` is known after the iteration ended.
    """

    calls: ModelCalls
    inner: CompletionStream
    context: CallContext
    reservation: Reservation | None
    spec: ModelSpec | None
    prompt_tokens: int
    started: float
    cache: CacheStatus = "bypass"
    key: CacheKey | None = None
    routing: str = ""
    cost: Decimal | None = None
    chars: int = 0
    texts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    _finished: bool = field(default=False, init=False)

    @property
    def model(self) -> str:
        """The model that answers."""
        return self.inner.model

    @property
    def provider(self) -> str:
        """The provider of the model that answers."""
        return self.inner.provider

    @property
    def strategy(self) -> str:
        """The strategy that ordered the plan."""
        return self.inner.strategy

    @property
    def fallback_path(self) -> list[Attempt]:
        """The models tried, the answering one last."""
        return self.inner.fallback_path

    @property
    def input_tokens(self) -> int:
        """Prompt tokens, as the provider reported them (0 until then)."""
        return self.inner.input_tokens

    @property
    def output_tokens(self) -> int:
        """Answer tokens, as the provider reported them (0 until then)."""
        return self.inner.output_tokens

    def __aiter__(self) -> AsyncGenerator[CompletionDelta, None]:
        return self._deltas()

    async def _deltas(self) -> AsyncGenerator[CompletionDelta, None]:
        deltas = self.inner.__aiter__()
        outcome = ABANDONED
        try:
            async for delta in deltas:
                self._seen(delta)
                yield delta
            outcome = OK
        except SpineError as exc:
            outcome = exc.error_type
            raise
        finally:
            try:
                await deltas.aclose()
            finally:
                await self._finish(outcome)

    def _seen(self, delta: CompletionDelta) -> None:
        self.chars += len(delta.text)
        if delta.text:
            self.texts.append(delta.text)
        for part in delta.tool_calls:
            index = int(part.get("index") or 0)
            call = self.tool_calls.setdefault(
                index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if part.get("id"):
                call["id"] = part["id"]
            function = part.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = function["name"]
            arguments = str(function.get("arguments") or "")
            call["function"]["arguments"] += arguments
            self.chars += len(arguments)

    async def aclose(self) -> None:
        """Stop reading the model; an unfinished stream is settled as abandoned."""
        await self.inner.aclose()
        await self._finish(ABANDONED)

    async def _finish(self, outcome: str) -> None:
        if self._finished:
            return
        self._finished = True
        # In a task of its own: a client that went away cancels the response, not the books.
        await asyncio.shield(self.calls._settle_later(self, outcome))


class CallerModels:
    """The model calls of one caller (an agent's task): routed, cached, budgeted and recorded.

    Agents reach models through this, so they share the gateway's router, cache, budgets and
    usage ledger; the answer carries its cost.
    """

    def __init__(self, calls: ModelCalls, context: CallContext) -> None:
        self._calls = calls
        self.context = context

    async def warm_up(self) -> None:
        """Warm the shared router up."""
        await self._calls.warm_up()

    async def complete(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """Answer through the router; raises what :meth:`ModelCalls.complete` raises."""
        metered = await self._calls.complete(messages, self.context, model=model, **params)
        metered.completion.cost = metered.cost
        metered.completion.cache_hit = metered.cache == "hit"
        return metered.completion

    async def stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> MeteredStream:
        """Open a streamed answer through the router; see :meth:`ModelCalls.stream`."""
        return await self._calls.stream(messages, self.context, model=model, **params)

    async def embed(
        self, texts: list[str], *, model: str | None = None, **params: Any
    ) -> Embedding:
        """Embed texts through the router; raises what :meth:`ModelCalls.embed` raises."""
        metered = await self._calls.embed(texts, self.context, model=model, **params)
        return metered.embedding


def _replayed(hit: Completion) -> CompletionStream:
    # A cached answer as a stream: everything in one delta, usage included.
    tool_calls = [{"index": i, **call} for i, call in enumerate(hit.tool_calls)]
    finish = hit.finish_reason or ("tool_calls" if tool_calls else "stop")
    delta = CompletionDelta(
        text=hit.text,
        tool_calls=tool_calls,
        finish_reason=finish,
        input_tokens=hit.input_tokens,
        output_tokens=hit.output_tokens,
    )
    return CompletionStream(
        model=hit.model,
        provider=hit.provider,
        strategy=hit.strategy or "",
        fallback_path=list(hit.fallback_path),
        buffered=[delta],
        rest=None,
        settle=lambda _outcome: None,
    )


def _requirements(messages: list[dict[str, Any]], params: dict[str, Any]) -> Requirements:
    min_quality = float(params.get("min_quality") or 0.0)
    return Requirements.of(messages, params, min_quality=min_quality)


def _free(spec: ModelSpec) -> bool:
    return spec.input_price == 0 and spec.output_price == 0


def _spec(name: str, plan: list[ModelSpec], router: ModelRouter) -> ModelSpec | None:
    for spec in plan:
        if spec.name == name:
            return spec
    return router.catalogue.get(name)


def _cost(spec: ModelSpec | None, input_tokens: int, output_tokens: int) -> Decimal:
    if spec is None or spec.input_price is None or spec.output_price is None:
        return _ZERO  # unknown price: counted as free, and logged where the price was missing
    return spec.input_price * input_tokens + spec.output_price * output_tokens


def _tried_before(path: list[Attempt]) -> list[str]:
    return [attempt.model for attempt in path[:-1]]


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
