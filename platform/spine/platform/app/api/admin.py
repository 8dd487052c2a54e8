"""The admin API: tenants, keys and budgets over HTTP; every change is in the audit log.

Who may do what follows the roles of :mod:`spine.platform.keys`:

- an **operator** key administers every tenant: creates tenants, issues keys of any role for
  any tenant that exists, lists, revokes and rotates any key, reads and sets any budget;
- an **admin** key administers its own tenant: issues member and admin keys there, lists,
  revokes and rotates that tenant's keys (not an operator's: 403), reads its budgets and sets
  the budgets of its keys (not of its tenant, nor of an operator's key: 403); another tenant,
  and any key of it, is not found (404), as if it did not exist;
- a **member** key reads its own tenant, its own key and their budgets; anything else is 403.

Changes take effect in every API process within ``GENAI_API__KEY_CACHE_SECONDS`` (5 s by
default: how long a process trusts a key it verified), and at once in the process that made
them. A key's expiry holds to the second, cached or not.

Budgets (``/v1/budgets/tenants/{tenant}``, ``/v1/budgets/keys/{key_id}``) are read with their
daily, weekly and monthly periods (limit and where it comes from, spent, reserved, remaining,
reset time) and the thresholds reached this period (``alerts``). ``PUT .../{period}`` stores a
limit, ``DELETE .../{period}`` removes it: a stored limit wins over the settings
(``GENAI_BUDGET_DAILY``, ``GENAI_BUDGETS__TENANTS``, ``GENAI_BUDGETS__KEYS``), and removing it
brings the settings' default back. Every API process and worker enforces a change within
``GENAI_BUDGETS__STORED_SECONDS`` (2 s by default), this one at once.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.errors import BadRequest, Forbidden, NotFound
from spine.platform.inputs import StoredMoment, StoredText
from spine.platform.keys import MAX_LIFETIME, ApiKey, IssuedKey, Principal, Role, parse_lifetime
from spine.platform.metering.budget_alerts import BudgetAlert
from spine.platform.metering.budget_limits import MAX_LIMIT, LimitSource
from spine.platform.metering.budget_periods import Period
from spine.platform.metering.budgets import BudgetLedger, BudgetState, budget_scopes
from spine.platform.schema import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["admin"])

TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


# -- models ------------------------------------------------------------------------------------


class TenantInput(BaseModel):
    """The body of ``POST /v1/tenants``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TENANT_NAME, description="Letters, digits, '.', '_' and '-'.")


class TenantView(BaseModel):
    """A tenant."""

    name: str
    created_at: datetime


class TenantList(BaseModel):
    """A page of tenants, newest first."""

    data: list[TenantView]
    next_cursor: str | None


class Expiry(BaseModel):
    """When a key stops working: ``expires_in`` (``30d``, ``12h``, ``90m``, seconds) or
    ``expires_at``; neither: never (on rotation: the old key's expiry)."""

    model_config = ConfigDict(extra="forbid")

    expires_in: str | None = Field(None, max_length=20, examples=["30d"])
    expires_at: StoredMoment | None = None

    def moment(self) -> datetime | None:
        """Return the expiry asked for, or raise :class:`BadRequest` naming the field."""
        now = utcnow()
        if self.expires_in is not None and self.expires_at is not None:
            raise BadRequest("give expires_in or expires_at, not both", field="expires_at")
        if self.expires_in is not None:
            return now + parse_lifetime(self.expires_in)
        if self.expires_at is not None:
            if self.expires_at <= now:
                raise BadRequest("expires_at must be in the future", field="expires_at")
            if self.expires_at - now > MAX_LIFETIME:
                raise BadRequest("expires_at must be within 3660 days", field="expires_at")
        return self.expires_at


class KeyInput(Expiry):
    """The body of ``POST /v1/keys``."""

    tenant: StoredText | None = Field(
        None, min_length=1, max_length=128, description="Default: the caller's tenant."
    )
    role: Role = "member"
    name: StoredText = Field("", max_length=200)


class KeyView(BaseModel):
    """A key, without its secret."""

    id: str
    tenant: str
    name: str
    role: Role
    state: Literal["active", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: str | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        """Describe a stored key."""
        state: Literal["active", "revoked", "expired"] = (
            "revoked"
            if key.revoked_at is not None
            else "active"
            if key.usable(utcnow())
            else "expired"
        )
        return cls(
            id=key.id,
            tenant=key.tenant,
            name=key.name,
            role=key.role,
            state=state,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            rotated_from=key.rotated_from,
        )


class IssuedKeyView(KeyView):
    """A key just issued: ``secret`` is shown this once, and never stored."""

    secret: str

    @classmethod
    def issued(cls, issued: IssuedKey) -> IssuedKeyView:
        """Describe a key just issued, with its secret."""
        return cls(**KeyView.of(issued.key).model_dump(), secret=issued.secret)


class KeyList(BaseModel):
    """A page of keys, newest first."""

    data: list[KeyView]
    next_cursor: str | None


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
            limit=_amount(state.limit) if state.limit is not None else None,
            source=source,
            spent=_amount(state.spent),
            reserved=_amount(state.reserved),
            remaining=_amount(remaining) if remaining is not None else None,
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
            limit=_amount(alert.limit),
            spent=_amount(alert.spent),
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


# -- tenants -----------------------------------------------------------------------------------


@router.post("/tenants", status_code=201, response_model=TenantView, responses=documented(403, 409))
async def create_tenant(given: TenantInput, request: Request, caller: Caller) -> TenantView:
    """Register a tenant (operator keys); its keys are issued with ``POST /v1/keys``."""
    # A refusal is recorded in the caller's tenant: the one asked for may not exist.
    recorded = given.name if caller.is_operator else caller.tenant
    async with audited(request, caller, "tenant.create", target=given.name, tenant=recorded):
        if not caller.is_operator:
            raise Forbidden("tenants are created with an operator key")
        tenant = await platform_of(request).keys.create_tenant(given.name)
    return TenantView(name=tenant.name, created_at=tenant.created_at)


@router.get("/tenants", response_model=TenantList)
async def list_tenants(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> TenantList:
    """List the tenants (an operator: all of them; any other key: its own)."""
    keys = platform_of(request).keys
    if not caller.is_operator:
        own = await keys.tenant(caller.tenant)
        return TenantList(
            data=[TenantView(name=own.name, created_at=own.created_at)], next_cursor=None
        )
    page = await keys.tenants_page(limit=limit, cursor=cursor)
    return TenantList(
        data=[TenantView(name=t.name, created_at=t.created_at) for t in page.tenants],
        next_cursor=page.next_cursor,
    )


@router.get("/tenants/{name}", response_model=TenantView, responses=documented(404))
async def get_tenant(name: str, request: Request, caller: Caller) -> TenantView:
    """Return one tenant (the caller's own, or any for an operator)."""
    _visible_tenant(caller, name)
    tenant = await platform_of(request).keys.tenant(name)
    return TenantView(name=tenant.name, created_at=tenant.created_at)


# -- keys --------------------------------------------------------------------------------------


@router.post("/keys", status_code=201, response_model=IssuedKeyView, responses=documented(403, 404))
async def create_key(given: KeyInput, request: Request, caller: Caller) -> IssuedKeyView:
    """Issue a key (admin keys: of their own tenant, not an operator's); the secret shows once."""
    tenant = given.tenant if given.tenant is not None else caller.tenant
    details = {"role": given.role, "name": given.name}
    async with audited(request, caller, "key.create", tenant=tenant, details=details) as note:
        _visible_tenant(caller, tenant)
        _administer(caller)
        if given.role == "operator" and not caller.is_operator:
            raise Forbidden("operator keys are issued with an operator key", field="role")
        expires_at = given.moment()
        keys = platform_of(request).keys
        await keys.tenant(tenant)  # 404 naming the field: create the tenant first
        issued = await keys.create(
            tenant=tenant, role=given.role, name=given.name, expires_at=expires_at
        )
        note.target = issued.key.id
        note.details["expires_at"] = expires_at.isoformat() if expires_at else None
    return IssuedKeyView.issued(issued)


@router.get("/keys", response_model=KeyList, responses=documented(403))
async def list_keys(
    request: Request,
    caller: Caller,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    include_revoked: bool = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> KeyList:
    """List keys, newest first (an operator: of ``tenant``, or all; an admin: its tenant's)."""
    _administer(caller)
    if tenant is not None:
        _visible_tenant(caller, tenant)
    scope = tenant if caller.is_operator else caller.tenant
    page = await platform_of(request).keys.list_page(
        tenant=scope, include_revoked=include_revoked, limit=limit, cursor=cursor
    )
    return KeyList(data=[KeyView.of(k) for k in page.keys], next_cursor=page.next_cursor)


@router.get("/keys/{key_id}", response_model=KeyView, responses=documented(403))
async def get_key(key_id: str, request: Request, caller: Caller) -> KeyView:
    """Return one key (a member key: only itself)."""
    if not caller.is_admin and key_id != caller.key_id:
        raise Forbidden("a member key may read only itself")
    return KeyView.of(await _visible_key(request, caller, key_id))


@router.post("/keys/{key_id}/revoke", response_model=KeyView, responses=documented(403))
async def revoke_key(key_id: str, request: Request, caller: Caller) -> KeyView:
    """Revoke a key; every API process refuses it within the key cache time (5 s)."""
    async with audited(request, caller, "key.revoke", target=key_id) as note:
        _administer(caller)
        key = await _visible_key(request, caller, key_id)
        note.tenant = key.tenant
        _may_manage(caller, key)
        revoked = await platform_of(request).keys.revoke(key_id)
    return KeyView.of(revoked)


@router.post(
    "/keys/{key_id}/rotate",
    status_code=201,
    response_model=IssuedKeyView,
    responses=documented(403, 409),
)
async def rotate_key(
    key_id: str, request: Request, caller: Caller, body: Expiry | None = None
) -> IssuedKeyView:
    """Issue a new secret for a key (a new key id, same tenant, role and name); revoke the old."""
    async with audited(request, caller, "key.rotate", target=key_id) as note:
        _administer(caller)
        key = await _visible_key(request, caller, key_id)
        note.tenant = key.tenant
        _may_manage(caller, key)
        expires_at = body.moment() if body is not None else None
        issued = await platform_of(request).keys.rotate(key_id, expires_at=expires_at)
        note.details["new_key"] = issued.key.id
    return IssuedKeyView.issued(issued)


# -- budgets -----------------------------------------------------------------------------------


@router.get("/budgets/tenants/{tenant}", response_model=BudgetView, responses=documented(404))
async def tenant_budget(tenant: str, request: Request, caller: Caller) -> BudgetView:
    """Return a tenant's budgets: its own for any key, any for an operator."""
    _visible_tenant(caller, tenant)
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
        note.details.update({"period": period, "limit": _amount(given.limit)})
        _visible_tenant(caller, tenant)
        _set_tenant_budgets(caller)
        await platform_of(request).keys.tenant(tenant)  # 404: create the tenant first
        previous = await _ledger(request).set_limit(scope, period, given.limit, by=caller.key_id)
        note.details["previous"] = _amount(previous.amount) if previous else None
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
        _visible_tenant(caller, tenant)
        _set_tenant_budgets(caller)
        previous = await _ledger(request).remove_limit(scope, period)
        if previous is None:
            raise NotFound(f"no {period} budget is stored for {scope}", field="period")
        note.details["previous"] = _amount(previous.amount)
    return await _budget(request, scope)


@router.get("/budgets/keys/{key_id}", response_model=BudgetView, responses=documented(403, 404))
async def key_budget(key_id: str, request: Request, caller: Caller) -> BudgetView:
    """Return a key's budgets (a member key: only its own)."""
    if not caller.is_admin and key_id != caller.key_id:
        raise Forbidden("a member key may read only its own budget")
    await _visible_key(request, caller, key_id)
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
        note.details.update({"period": period, "limit": _amount(given.limit)})
        key = await _managed_key(request, caller, key_id)
        note.tenant = key.tenant
        _may_manage(caller, key)
        previous = await _ledger(request).set_limit(scope, period, given.limit, by=caller.key_id)
        note.details["previous"] = _amount(previous.amount) if previous else None
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
        _may_manage(caller, key)
        previous = await _ledger(request).remove_limit(scope, period)
        if previous is None:
            raise NotFound(f"no {period} budget is stored for {scope}", field="period")
        note.details["previous"] = _amount(previous.amount)
    return await _budget(request, scope)


def _ledger(request: Request) -> BudgetLedger:
    return platform_of(request).metered.budgets


async def _budget(request: Request, scope: str) -> BudgetView:
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
    return await _visible_key(request, caller, key_id)


def _set_tenant_budgets(caller: Principal) -> None:
    if not caller.is_operator:
        raise Forbidden("a tenant's budgets are set with an operator key")


# -- who may ----------------------------------------------------------------------------------


def _administer(caller: Principal) -> None:
    if not caller.is_admin:
        raise Forbidden("keys are administered with an admin or operator key")


def _visible_tenant(caller: Principal, tenant: str) -> None:
    if not caller.may_read_tenant(tenant):
        raise NotFound(f"no tenant {tenant!r}", field="tenant")


async def _visible_key(request: Request, caller: Principal, key_id: str) -> ApiKey:
    try:
        key = await platform_of(request).keys.get(key_id)
    except NotFound:
        key = None
    if key is None or not caller.may_read_tenant(key.tenant):
        # Another tenant's key is answered exactly as a key that does not exist.
        raise NotFound(f"no key {key_id!r}", field="key_id")
    return key


def _may_manage(caller: Principal, key: ApiKey) -> None:
    if key.role == "operator" and not caller.is_operator:
        raise Forbidden("an operator key is managed with an operator key", field="key_id")


def _amount(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"
