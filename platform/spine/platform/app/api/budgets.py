"""The budgets API: read, set and remove budgets per tenant and per key; every change is audited.

Budgets (``/v1/budgets/tenants/{tenant}``, ``/v1/budgets/keys/{key_id}``) are read with their
daily, weekly and monthly periods (limit and where it comes from, spent, reserved, remaining,
reset time) and the thresholds reached this period (``alerts``). ``PUT .../{period}`` stores a
limit, ``DELETE .../{period}`` removes it: a stored limit wins over the settings
(``GENAI_BUDGET_DAILY``, ``GENAI_BUDGETS__TENANTS``, ``GENAI_BUDGETS__KEYS``), and removing it
brings the settings' default back. Every API process and worker enforces a change within
``GENAI_BUDGETS__STORED_SECONDS`` (2 s by default), this one at once. A limit set for a budget
that had none counts the period's spend so far (from the usage ledger), and a period without a
limit shows that spend too.

Who may: any key reads its own tenant's budgets (a member only its own key's); an operator
reads and sets any; an admin sets its own tenant's keys' budgets (not its tenant's, nor an
operator key's: 403) — see :mod:`spine.platform.app.api.permissions`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.app.api.permissions import may_manage, visible_key, visible_tenant
from spine.platform.errors import Forbidden, NotFound
from spine.platform.keys import ApiKey, Principal
from spine.platform.metering.budget_alerts import BudgetAlert
from spine.platform.metering.budget_limits import MAX_LIMIT, LimitSource, StoredBudget
from spine.platform.metering.budget_periods import Period
from spine.platform.metering.budgets import BudgetLedger, BudgetState, budget_scopes
from spine.platform.schema import money_text

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["admin"])


class BudgetPeriod(BaseModel):
    """Where one budget stands in its current period; amounts are decimal strings (USD)."""

    limit: str | None = Field(description="None: unlimited.")
    source: LimitSource | None = Field(
        None,
        description="Where the limit comes from: stored (set over this API or the CLI), which "
        "wins over the settings' default; None: unlimited.",
    )
    spent: str
    reserved: str = Field(description="Held by calls in flight.")
    remaining: str | None
    period_start: date | None = Field(None, description="The period's first UTC day.")
    resets_at: datetime

    @classmethod
    def of(cls, state: BudgetState, source: LimitSource | None = None) -> BudgetPeriod:
        """Describe a budget's state."""
        remaining = state.remaining
        return cls(
            limit=money_text(state.limit) if state.limit is not None else None,
            source=source,
            spent=money_text(state.spent),
            reserved=money_text(state.reserved),
            remaining=money_text(remaining) if remaining is not None else None,
            period_start=state.day,
            resets_at=state.resets_at,
        )


class BudgetAlertView(BaseModel):
    """A threshold a budget reached in its current period (also published on NATS)."""

    period: Period
    period_start: date
    threshold: int = Field(description="Percent of the limit: 80 or 100.")
    limit: str
    spent: str = Field(description="What was spent when it was reached.")
    reached_at: datetime

    @classmethod
    def of(cls, alert: BudgetAlert) -> BudgetAlertView:
        """Describe a recorded alert."""
        return cls(
            period=alert.period,
            period_start=alert.period_start,
            threshold=alert.threshold,
            limit=money_text(alert.limit),
            spent=money_text(alert.spent),
            reached_at=alert.reached_at,
        )


class BudgetView(BaseModel):
    """The budgets of one scope (``tenant:<name>`` or ``key:<id>``), one per period."""

    scope: str
    daily: BudgetPeriod
    weekly: BudgetPeriod
    monthly: BudgetPeriod
    alerts: list[BudgetAlertView] = Field(
        default_factory=list, description="Thresholds reached in the current periods."
    )


class BudgetLimitInput(BaseModel):
    """The body of ``PUT /v1/budgets/.../{period}``: the period's limit in USD."""

    model_config = ConfigDict(extra="forbid")

    limit: Decimal = Field(
        ge=0,
        le=MAX_LIMIT,
        decimal_places=8,
        description='A decimal string or number, e.g. "25.00"; 0 refuses every paid call.',
        examples=["25.00"],
    )


@router.get("/budgets/tenants/{tenant}", response_model=BudgetView, responses=documented(404))
async def tenant_budget(tenant: str, request: Request, caller: Caller) -> BudgetView:
    """Return a tenant's budgets: its own for any key, any for an operator."""
    visible_tenant(caller, tenant)
    return await _budget(request, budget_scopes(tenant=tenant)[-1])


@router.put(
    "/budgets/tenants/{tenant}/{period}",
    response_model=BudgetView,
    responses=documented(403, 404),
)
async def set_tenant_budget(
    tenant: str, period: Period, given: BudgetLimitInput, request: Request, caller: Caller
) -> BudgetView:
    """Store a tenant's limit for a period (operator keys); it wins over the settings."""
    scope = budget_scopes(tenant=tenant)[-1]
    async with audited(request, caller, "budget.set", target=scope, tenant=tenant) as note:
        note.details.update({"period": period, "limit": money_text(given.limit)})
        visible_tenant(caller, tenant)
        _set_tenant_budgets(caller)
        await platform_of(request).keys.tenant(tenant)  # 404: create the tenant first
        previous = await _set_limit(request, scope, period, given.limit, caller)
        note.details["previous"] = money_text(previous.amount) if previous else None
    return await _budget(request, scope)


@router.delete(
    "/budgets/tenants/{tenant}/{period}",
    response_model=BudgetView,
    responses=documented(403, 404),
)
async def remove_tenant_budget(
    tenant: str, period: Period, request: Request, caller: Caller
) -> BudgetView:
    """Remove a tenant's stored limit for a period (operator keys): the default applies again."""
    scope = budget_scopes(tenant=tenant)[-1]
    async with audited(request, caller, "budget.remove", target=scope, tenant=tenant) as note:
        note.details["period"] = period
        visible_tenant(caller, tenant)
        _set_tenant_budgets(caller)
        previous = await _ledger(request).remove_limit(scope, period)
        if previous is None:
            raise NotFound(f"no {period} budget is stored for {scope}", field="period")
        note.details["previous"] = money_text(previous.amount)
    return await _budget(request, scope)


@router.get("/budgets/keys/{key_id}", response_model=BudgetView, responses=documented(403, 404))
async def key_budget(key_id: str, request: Request, caller: Caller) -> BudgetView:
    """Return a key's budgets (a member key: only its own)."""
    if not caller.is_admin and key_id != caller.key_id:
        raise Forbidden("a member key may read only its own budget")
    await visible_key(request, caller, key_id)
    return await _budget(request, budget_scopes(key_id=key_id)[-1])


@router.put(
    "/budgets/keys/{key_id}/{period}",
    response_model=BudgetView,
    responses=documented(403, 404),
)
async def set_key_budget(
    key_id: str, period: Period, given: BudgetLimitInput, request: Request, caller: Caller
) -> BudgetView:
    """Store a key's limit for a period (operator keys; admin keys: of their tenant's keys)."""
    scope = budget_scopes(key_id=key_id)[-1]
    async with audited(request, caller, "budget.set", target=scope) as note:
        note.details.update({"period": period, "limit": money_text(given.limit)})
        key = await _managed_key(request, caller, key_id)
        note.tenant = key.tenant
        may_manage(caller, key)
        previous = await _set_limit(request, scope, period, given.limit, caller)
        note.details["previous"] = money_text(previous.amount) if previous else None
    return await _budget(request, scope)


@router.delete(
    "/budgets/keys/{key_id}/{period}",
    response_model=BudgetView,
    responses=documented(403, 404),
)
async def remove_key_budget(
    key_id: str, period: Period, request: Request, caller: Caller
) -> BudgetView:
    """Remove a key's stored limit for a period: the default applies again."""
    scope = budget_scopes(key_id=key_id)[-1]
    async with audited(request, caller, "budget.remove", target=scope) as note:
        note.details["period"] = period
        key = await _managed_key(request, caller, key_id)
        note.tenant = key.tenant
        may_manage(caller, key)
        previous = await _ledger(request).remove_limit(scope, period)
        if previous is None:
            raise NotFound(f"no {period} budget is stored for {scope}", field="period")
        note.details["previous"] = money_text(previous.amount)
    return await _budget(request, scope)


def _ledger(request: Request) -> BudgetLedger:
    return platform_of(request).metered.budgets


async def _set_limit(
    request: Request, scope: str, period: Period, limit: Decimal, caller: Principal
) -> StoredBudget | None:
    # A budget that had no limit is seeded from the usage rows: this process's queued ones
    # are written first, so the calls it just answered are counted.
    metered = platform_of(request).metered
    await metered.flush()
    return await metered.budgets.set_limit(scope, period, limit, by=caller.key_id)


async def _budget(request: Request, scope: str) -> BudgetView:
    await platform_of(request).metered.flush()  # this process's calls are read back
    ledger = _ledger(request)
    states = {state.period: state for state in await ledger.states(scope)}
    limits = ledger.limits
    periods = {
        period: BudgetPeriod.of(state, limits.source(scope, period))
        for period, state in states.items()
    }
    alerts = await ledger.current_alerts(scope)
    return BudgetView(
        scope=scope,
        daily=periods["daily"],
        weekly=periods["weekly"],
        monthly=periods["monthly"],
        alerts=[BudgetAlertView.of(alert) for alert in alerts],
    )


async def _managed_key(request: Request, caller: Principal, key_id: str) -> ApiKey:
    if not caller.is_admin:
        raise Forbidden("budgets are set with an admin or operator key")
    return await visible_key(request, caller, key_id)


def _set_tenant_budgets(caller: Principal) -> None:
    if not caller.is_operator:
        raise Forbidden("a tenant's budgets are set with an operator key")
