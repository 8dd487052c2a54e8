"""``spine budgets show|set|remove``: budgets straight on the database (no running API needed).

A stored limit wins over the settings; every process enforces it within
``GENAI_BUDGETS__STORED_SECONDS``. Changes are in the audit log, as ``/v1/budgets`` records them.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from spine.platform.app.cli._administering import Admin, administer, when
from spine.platform.app.cli._shared import add_literal_row, console, literal
from spine.platform.errors import ConfigurationError, NotFound

if TYPE_CHECKING:
    from spine.platform.metering.budget_periods import Period
    from spine.platform.metering.budgets import BudgetLedger

__all__ = ["budgets_app"]

budgets_app = typer.Typer(
    help="Read and set budgets (daily, weekly, monthly; per tenant and per key).",
    no_args_is_help=True,
)

TENANT_BUDGET = typer.Option(help="A tenant's budget.")
KEY_BUDGET = typer.Option(help="A key's budget (by its id).")
PERIOD = typer.Option(help="daily, weekly (from Monday) or monthly; UTC.")


@budgets_app.command("show")
def budgets_show(
    tenant: Annotated[str | None, TENANT_BUDGET] = None,
    key: Annotated[str | None, KEY_BUDGET] = None,
) -> None:
    """Show a tenant's or a key's budgets in their current periods, and the thresholds reached."""
    from spine.platform.schema import money_text  # with SQLAlchemy: not for every `spine` run

    scope = _budget_scope(tenant, key)

    async def go(admin: Admin) -> Any:
        ledger = _budget_ledger(admin)
        try:
            states = await ledger.states(scope)
            return states, ledger.limits, await ledger.current_alerts(scope)
        finally:
            await ledger.close()

    states, limits, alerts = administer(go)
    table = Table("scope", "period", "limit", "from", "spent", "reserved", "remaining", "resets")
    for state in states:
        remaining = state.remaining
        add_literal_row(
            table,
            scope,
            state.period,
            "unlimited" if state.limit is None else money_text(state.limit),
            limits.source(scope, state.period) or "",
            money_text(state.spent),
            money_text(state.reserved),
            "" if remaining is None else money_text(remaining),
            when(state.resets_at),
        )
    console.print(table)
    for alert in alerts:
        console.print(
            literal(
                f"{alert.period} budget reached {alert.threshold}% at {when(alert.reached_at)} "
                f"({money_text(alert.spent)} of {money_text(alert.limit)})"
            )
        )


@budgets_app.command("set")
def budgets_set(
    amount: Annotated[str, typer.Argument(help="The limit in USD, e.g. 25.00.")],
    tenant: Annotated[str | None, TENANT_BUDGET] = None,
    key: Annotated[str | None, KEY_BUDGET] = None,
    period: Annotated[str, PERIOD] = "daily",
) -> None:
    """Store a budget's limit; it wins over the settings, and every process enforces it within
    GENAI_BUDGETS__STORED_SECONDS."""
    from spine.platform.schema import money_text  # with SQLAlchemy: not for every `spine` run

    scope = _budget_scope(tenant, key)
    chosen = _period(period)
    limit = _limit(amount)

    async def go(admin: Admin) -> None:
        owner = await _budget_owner(admin, tenant, key)
        ledger = _budget_ledger(admin)
        previous = await ledger.set_limit(scope, chosen, limit, by=None)
        await admin.audit_change(
            "budget.set",
            tenant=owner,
            target=scope,
            details={
                "period": chosen,
                "limit": money_text(limit),
                "previous": money_text(previous.amount) if previous else None,
            },
        )

    administer(go)
    console.print(literal(f"the {chosen} budget of {scope} is {money_text(limit)}"))


@budgets_app.command("remove")
def budgets_remove(
    tenant: Annotated[str | None, TENANT_BUDGET] = None,
    key: Annotated[str | None, KEY_BUDGET] = None,
    period: Annotated[str, PERIOD] = "daily",
) -> None:
    """Remove a stored limit: the settings' default (or none) applies again."""
    from spine.platform.schema import money_text  # with SQLAlchemy: not for every `spine` run

    scope = _budget_scope(tenant, key)
    chosen = _period(period)

    async def go(admin: Admin) -> None:
        owner = await _budget_owner(admin, tenant, key)
        previous = await _budget_ledger(admin).remove_limit(scope, chosen)
        if previous is None:
            raise NotFound(f"no {chosen} budget is stored for {scope}", field="--period")
        await admin.audit_change(
            "budget.remove",
            tenant=owner,
            target=scope,
            details={"period": chosen, "previous": money_text(previous.amount)},
        )

    administer(go)
    console.print(literal(f"the stored {chosen} budget of {scope} is removed"))


def _budget_scope(tenant: str | None, key: str | None) -> str:
    if (tenant is None) == (key is None):
        raise ConfigurationError("give --tenant or --key", field="--tenant")
    return f"tenant:{tenant}" if tenant is not None else f"key:{key}"


def _budget_ledger(admin: Admin) -> BudgetLedger:
    from spine.platform.metering.budgets import BudgetLedger, BudgetLimits

    return BudgetLedger(admin.db, BudgetLimits.from_settings(admin.settings), stored_seconds=0)


async def _budget_owner(admin: Admin, tenant: str | None, key: str | None) -> str:
    """Return the tenant a budget belongs to; NotFound when the tenant or key does not exist."""
    if tenant is not None:
        return (await admin.keys.tenant(tenant)).name
    assert key is not None
    return (await admin.keys.get(key)).tenant


def _period(value: str) -> Period:
    from spine.platform.metering.budget_periods import PERIODS

    for period in PERIODS:
        if period == value:
            return period
    raise ConfigurationError(
        f"--period must be one of {', '.join(PERIODS)}, not {value!r}", field="--period"
    )


def _limit(value: str) -> Decimal:
    from spine.platform.metering.budget_limits import MAX_LIMIT

    try:
        amount = Decimal(value)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or not 0 <= amount <= MAX_LIMIT or amount != round(amount, 8):
        raise ConfigurationError(
            f"the limit must be an amount from 0 to {MAX_LIMIT} with at most 8 decimals, "
            f"not {value!r}",
            field="amount",
        )
    return amount
