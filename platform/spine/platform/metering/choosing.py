"""Choosing a metered call's route: its experiment arm, then its plan (with what the
``learned`` strategy needs: the request's features, the tenant's budget pressure).

With learning on, every routed chat call is described by its hashed features (never its text)
in the plan's decision record, so the learner can score it later whatever chose its model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from spine.platform.learning.experiments import ExperimentBook
from spine.platform.learning.features import FeatureSpace, prompt_text
from spine.platform.metering.budgets import BudgetLedger
from spine.platform.metering.context import CallContext
from spine.platform.models import ChatRequest
from spine.platform.router import ModelRouter, Requirements, RoutePlan

__all__ = ["RouteChooser"]

logger = logging.getLogger(__name__)

_PRESSURE_SECONDS = 5.0


class RouteChooser:
    """Assigns experiment arms and plans chat calls for :class:`MeteredModels`."""

    def __init__(
        self,
        router: ModelRouter,
        *,
        budgets: BudgetLedger,
        experiments: ExperimentBook | None = None,
    ) -> None:
        self._router = router
        self._budgets = budgets
        self._experiments = experiments
        self._space = FeatureSpace()
        self._pressure: dict[str, tuple[float, float]] = {}

    async def plan(
        self, request: ChatRequest, requirements: Requirements, context: CallContext
    ) -> RoutePlan:
        """Plan a chat call; with learning on, describe the request for the learner."""
        pressure = await self._budget_pressure(request, context)
        return self._planned(request, requirements, context, pressure)

    async def _budget_pressure(self, request: ChatRequest, context: CallContext) -> float:
        """How much of the tenant's daily budget is spent (0..1), read at most every 5 s.

        Only the ``learned`` strategy uses it (it raises the cost weight as the day's budget
        runs out); other calls pay nothing for it.
        """
        if request.strategy != "learned" or request.model is not None:
            return 0.0
        scope = f"tenant:{context.tenant}"
        limit = self._budgets.limits.limit(scope)
        if not limit:
            return 0.0
        now = time.monotonic()
        known = self._pressure.get(context.tenant)
        if known is not None and now - known[1] < _PRESSURE_SECONDS:
            return known[0]
        try:
            state = await self._budgets.state(scope)
            used = float((state.spent + state.reserved) / limit)
        except Exception as exc:  # a call never fails for want of this figure
            logger.debug("budget pressure of %s unknown: %r", context.tenant, exc)
            used = known[0] if known is not None else 0.0
        pressure = min(1.0, max(0.0, used))
        self._pressure[context.tenant] = (pressure, now)
        return pressure

    def _planned(
        self,
        request: ChatRequest,
        requirements: Requirements,
        context: CallContext,
        pressure: float = 0.0,
    ) -> RoutePlan:
        """Plan a chat call; the ``learned`` strategy gets the request's features."""
        features = None
        if self._router.learned.settings.enabled and self._learns(request):
            features = self._space.extract(
                prompt_text(request.messages),
                category=context.task_category,
                tenant=context.tenant,
            )
        plan = self._router.plan(
            requirements,
            model=request.model,
            strategy=request.strategy,
            features=features,
            tenant=context.tenant,
            cost_weight=request.cost_weight,
            budget_pressure=pressure,
        )
        if features is not None:
            described = dict(plan.decision or {})
            described["features"] = features.model_dump(mode="json")
            plan = RoutePlan(strategy=plan.strategy, models=plan.models, decision=described)
        return plan

    def described(
        self, plan: RoutePlan, request: ChatRequest, context: CallContext
    ) -> dict[str, Any] | None:
        """The plan's decision record, with the request's features when learning is on.

        Features the plan did not need (any strategy but ``learned``) are extracted here, when
        the call is recorded, off the call's path: the learner scores every routed call by them.
        """
        decision = plan.decision
        if not self._router.learned.settings.enabled or (decision and "features" in decision):
            return decision
        features = self._space.extract(
            prompt_text(request.messages), category=context.task_category, tenant=context.tenant
        )
        return {**(decision or {}), "features": features.model_dump(mode="json")}

    def _learns(self, request: ChatRequest) -> bool:
        # What ModelRouter.plan decides by: only a routed call of the learned strategy.
        strategy = request.strategy or self._router.default_strategy
        return request.model is None and strategy == "learned"

    async def in_experiment(
        self, request: ChatRequest, context: CallContext
    ) -> tuple[ChatRequest, CallContext]:
        """Route a call the router would choose for by its experiment arm, if one covers it."""
        if self._experiments is None or request.model is not None:
            return request, context
        try:
            assigned = await self._experiments.assignment(
                tenant=context.tenant,
                task_category=context.task_category,
                caller=context.task_id or context.key_id or context.tenant,
            )
        except Exception as exc:  # an experiment must never fail a call
            logger.warning("experiments not consulted: %r", exc)
            return request, context
        if assigned is None:
            return request, context
        routed = replace(
            request,
            model=assigned.model,
            strategy=assigned.strategy if assigned.strategy else request.strategy,
        )
        return routed, replace(context, assignment=assigned)
