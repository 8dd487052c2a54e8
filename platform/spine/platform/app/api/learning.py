"""The learning loop over HTTP: feedback, the router's decisions and weights, experiments.

``POST /v1/feedback`` rates a model call, a task or a gateway completion (``chatcmpl-...``)
from 0 to 1, once per (target, key): a repeat with the same key answers 200 with the first
feedback; another tenant's target is not found (404). Creating, stopping and promoting an
experiment (and a refusal by role) are recorded in the audit log.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.errors import BadRequest, Forbidden, NotFound, UnknownAgent
from spine.platform.inputs import check_moment
from spine.platform.keys import Principal
from spine.platform.learning.experiments import Experiment, ExperimentInput, ExperimentReport
from spine.platform.learning.feedback import Feedback, FeedbackInput
from spine.platform.metering.usage import ModelCallRecord
from spine.platform.schema import money_text
from spine.platform.settings import RoutingStrategy

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["learning"])

ALL_TENANTS = "*"
# Every strategy a call may name, the learned one too (an arm may test it against the others).
STRATEGY_NAMES: frozenset[str] = frozenset(get_args(RoutingStrategy))


@router.post(
    "/feedback",
    status_code=201,
    response_model=Feedback,
    responses={
        200: {"model": Feedback, "description": "The same key rated this target before."},
        **documented(404),
    },
)
async def give_feedback(
    given: FeedbackInput, request: Request, response: Response, caller: Caller
) -> Feedback:
    """Rate a call, a task or a completion; the learner joins it to the calls it covers."""
    platform = platform_of(request)
    # A completion answered a moment ago may still sit in the usage writer's buffer.
    await platform.metered.flush()
    feedback, created = await platform.feedback.give(given, principal=caller)
    if created:
        await platform.feedback_announcer.announce([feedback])
    else:
        response.status_code = 200
    return feedback


class RoutingDecision(BaseModel):
    """How the router chose the model of one call (the usage ledger's record of it)."""

    call_id: str
    time: datetime
    tenant: str
    task_id: str | None
    task_category: str | None
    strategy: str | None
    model: str
    provider: str
    outcome: str
    latency_ms: float
    cost: str
    fallback_path: list[str]
    decision: dict[str, Any] | None = Field(
        description="The learned strategy's record: candidates and scores, the chosen model, "
        "whether it explored, the weights version."
    )
    experiment_id: str | None
    arm: str | None

    @classmethod
    def of(cls, call: ModelCallRecord) -> RoutingDecision:
        """Describe one recorded call."""
        return cls(
            call_id=call.id,
            time=call.created_at,
            tenant=call.tenant,
            task_id=call.task_id,
            task_category=call.task_category,
            strategy=call.strategy,
            model=call.model,
            provider=call.provider,
            outcome=call.outcome,
            latency_ms=call.latency_ms,
            cost=money_text(call.cost),
            fallback_path=call.fallback_path,
            decision=_public(call.decision),
            experiment_id=call.experiment_id,
            arm=call.arm,
        )


class DecisionPage(BaseModel):
    """A page of routing decisions, newest first."""

    data: list[RoutingDecision]
    next_cursor: str | None


@router.get("/routing/decisions", response_model=DecisionPage, responses=documented(404))
async def routing_decisions(
    request: Request,
    caller: Caller,
    model: Annotated[str | None, Query(max_length=200)] = None,
    strategy: Annotated[str | None, Query(max_length=64)] = None,
    task_id: Annotated[str | None, Query(max_length=100)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> DecisionPage:
    """List the router's decisions (calls it chose a model for), filtered, in cursor pages.

    A key sees its own tenant's; an operator key may name another ``tenant`` or ``*`` for all.
    """
    ledger = platform_of(request).metered.usage
    calls, following = await ledger.calls_page(
        tenant=_tenant_scope(caller, tenant),
        model=model,
        strategy=strategy,
        task_id=task_id,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
        routed_only=strategy is None,
        limit=limit,
        cursor=cursor,
    )
    return DecisionPage(data=[RoutingDecision.of(c) for c in calls], next_cursor=following)


def _tenant_scope(caller: Principal, tenant: str | None) -> str | None:
    """The tenant a read covers (None: every tenant, for an operator asking ``*``)."""
    if tenant is None or tenant == caller.tenant:
        return caller.tenant
    if not caller.is_operator:
        raise NotFound(f"no tenant {tenant!r} for this key", field="tenant")
    return None if tenant == ALL_TENANTS else tenant


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return check_moment(moment, field=name).astimezone(UTC)


def _public(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    # The request's hashed features are the learner's, not an audit reader's.
    if decision is None:
        return None
    return {k: v for k, v in decision.items() if k != "features"}


class ModelWeights(BaseModel):
    """What the router currently believes of one model."""

    model: str
    observations: int = Field(description="Quality scores folded in.")
    quality: float | None = Field(
        description="Expected quality (for ``category``/the tenant when given, else the mean "
        "of recent scores)."
    )
    quality_sd: float | None = Field(description="Uncertainty (standard deviation) of it.")
    calls: int = Field(description="Outcomes folded in (latency and cost).")
    latency_ms: float | None
    latency_ms_se: float | None
    cost: float | None


class WeightsView(BaseModel):
    """The learned routing weights this API process routes by."""

    version: int | None = Field(description="None: no weights yet (the learner has not run).")
    loaded_seconds_ago: float | None
    events: int = Field(
        description="The learning events (outcomes and feedback) the weights were learnt from, "
        "as `spine doctor` reports; each model's `observations` count its quality scores."
    )
    category: str | None
    models: list[ModelWeights]


@router.get("/routing/weights", response_model=WeightsView)
async def routing_weights(
    request: Request,
    caller: Caller,
    category: Annotated[str | None, Query(max_length=100)] = None,
) -> WeightsView:
    """Show the current estimates per model, for a category (and the caller's tenant) if asked.

    The weights are shared by every tenant (the tenant is one of the request's features); the
    estimates shown with ``category`` are for an average request of that category and tenant.
    """
    learned = platform_of(request).router.learned
    weights = learned.weights
    age = learned.age_seconds()
    if weights is None:
        return WeightsView(
            version=None, loaded_seconds_ago=None, events=0, category=category, models=[]
        )
    context = weights.space.extract("", category=category, tenant=caller.tenant)
    rows = []
    for name, estimates in weights:
        quality: float | None
        spread: float | None
        if category is not None:
            quality, variance = weights.predict(name, context)
            spread = variance**0.5
        else:
            quality = estimates.score.mean if estimates.score.count else None
            spread = _finite(estimates.score.std_error) if estimates.score.count else None
        rows.append(
            ModelWeights(
                model=name,
                observations=estimates.quality.observations,
                quality=quality,
                quality_sd=spread,
                calls=estimates.latency_ms.count,
                latency_ms=estimates.latency_ms.mean if estimates.latency_ms.count else None,
                latency_ms_se=_finite(estimates.latency_ms.std_error),
                cost=estimates.cost.mean if estimates.cost.count else None,
            )
        )
    return WeightsView(
        version=learned.version,
        loaded_seconds_ago=None if age is None else round(age, 1),
        events=learned.events,
        category=category,
        models=rows,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@router.get("/asyncapi.json", tags=["events"], response_model=None)
async def asyncapi() -> dict[str, Any]:
    """The AsyncAPI document of the platform's NATS subjects (event contracts)."""
    return _asyncapi()


# -- experiments -------------------------------------------------------------------------------


class ExperimentList(BaseModel):
    """The tenant's experiments, newest first."""

    data: list[Experiment]


class Promotion(BaseModel):
    """The body of ``POST /v1/experiments/{id}/promote``."""

    model_config = ConfigDict(extra="forbid")

    arm: str = Field(min_length=1, max_length=100)


@router.post(
    "/experiments",
    status_code=201,
    response_model=Experiment,
    responses=documented(400, 403, 409),
)
async def create_experiment(given: ExperimentInput, request: Request, caller: Caller) -> Experiment:
    """Start an A/B test of routing over a scope of the caller's tenant (admin keys)."""
    async with audited(request, caller, "experiment.create", details={"name": given.name}) as note:
        experiment = await _create_experiment(given, request, caller)
        note.target = experiment.id
    return experiment


async def _create_experiment(
    given: ExperimentInput, request: Request, caller: Principal
) -> Experiment:
    _admin(caller)
    platform = platform_of(request)
    router_ = await platform.warm_router()
    given.check_split()
    if given.scope.agent is not None and given.scope.agent not in platform.catalog.names():
        raise UnknownAgent(  # its experiment would never see a call
            f"scope names an unknown agent {given.scope.agent!r}; known agents: "
            f"{', '.join(platform.catalog.names())}",
            field="scope.agent",
        )
    for index, arm in enumerate(given.arms):
        if arm.strategy is not None and arm.strategy not in STRATEGY_NAMES:
            raise BadRequest(
                f"arm {arm.name!r} names an unknown strategy {arm.strategy!r} "
                f"(known: {', '.join(sorted(STRATEGY_NAMES))})",
                field=f"arms.{index}.strategy",
            )
        for name in arm.named_models():
            if not router_.knows(name):
                field = "model" if arm.model is not None else "models"
                raise BadRequest(
                    f"arm {arm.name!r} names an unknown model {name!r}",
                    field=f"arms.{index}.{field}",
                )
    return await platform.experiments.create(given, tenant=caller.tenant, key_id=caller.key_id)


@router.get("/experiments", response_model=ExperimentList)
async def list_experiments(request: Request, caller: Caller) -> ExperimentList:
    """List the caller's tenant's experiments."""
    return ExperimentList(data=await platform_of(request).experiments.listing(tenant=caller.tenant))


@router.get(
    "/experiments/{experiment_id}", response_model=ExperimentReport, responses=documented(404)
)
async def experiment_report(
    experiment_id: str, request: Request, caller: Caller
) -> ExperimentReport:
    """Per-arm counts, means with 95% intervals, and whether the difference is significant."""
    await platform_of(request).metered.flush()
    return await platform_of(request).experiments.report(experiment_id, tenant=caller.tenant)


@router.post(
    "/experiments/{experiment_id}/stop",
    response_model=Experiment,
    responses=documented(403, 404, 409),
)
async def stop_experiment(experiment_id: str, request: Request, caller: Caller) -> Experiment:
    """End an experiment; its calls route as before it (admin keys)."""
    async with audited(request, caller, "experiment.stop", target=experiment_id):
        _admin(caller)
        return await platform_of(request).experiments.stop(experiment_id, tenant=caller.tenant)


@router.post(
    "/experiments/{experiment_id}/promote",
    response_model=Experiment,
    responses=documented(400, 403, 404, 409),
)
async def promote_arm(
    experiment_id: str, promotion: Promotion, request: Request, caller: Caller
) -> Experiment:
    """Give one arm all of the scope's traffic from now on (admin keys)."""
    details = {"arm": promotion.arm}
    async with audited(
        request, caller, "experiment.promote", target=experiment_id, details=details
    ):
        _admin(caller)
        return await platform_of(request).experiments.promote(
            experiment_id, promotion.arm, tenant=caller.tenant
        )


def _admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise Forbidden("experiments are changed with an admin key of the tenant")


@functools.cache
def _asyncapi() -> dict[str, Any]:
    # Built once, on first request: FastStream is imported only by whoever asks.
    from spine.events.contracts import asyncapi_document

    return asyncapi_document()
