"""The admin API: tenants and keys over HTTP; every change is in the audit log.

Budgets are in :mod:`spine.platform.app.api.budgets`, a key's rate limits in
:mod:`spine.platform.app.api.key_limits`; who may do what is the same everywhere
(:mod:`spine.platform.app.api.permissions`).

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

"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.app.api.permissions import administer, may_manage, visible_key, visible_tenant
from spine.platform.errors import BadRequest, Forbidden
from spine.platform.inputs import StoredMoment, StoredText
from spine.platform.keys import (
    MAX_LIFETIME,
    TENANT_NAME,
    ApiKey,
    IssuedKey,
    Role,
    parse_lifetime,
)
from spine.platform.schema import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["admin"])


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
    visible_tenant(caller, name)
    tenant = await platform_of(request).keys.tenant(name)
    return TenantView(name=tenant.name, created_at=tenant.created_at)


# -- keys --------------------------------------------------------------------------------------


@router.post("/keys", status_code=201, response_model=IssuedKeyView, responses=documented(403, 404))
async def create_key(given: KeyInput, request: Request, caller: Caller) -> IssuedKeyView:
    """Issue a key (admin keys: of their own tenant, not an operator's); the secret shows once."""
    tenant = given.tenant if given.tenant is not None else caller.tenant
    details = {"role": given.role, "name": given.name}
    async with audited(request, caller, "key.create", tenant=tenant, details=details) as note:
        visible_tenant(caller, tenant)
        administer(caller)
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
    administer(caller)
    if tenant is not None:
        visible_tenant(caller, tenant)
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
    return KeyView.of(await visible_key(request, caller, key_id))


@router.post("/keys/{key_id}/revoke", response_model=KeyView, responses=documented(403, 409))
async def revoke_key(key_id: str, request: Request, caller: Caller) -> KeyView:
    """Revoke a key; every API process refuses it within the key cache time (5 s).

    The last usable operator key is not revoked here (409): issue another first.
    """
    async with audited(request, caller, "key.revoke", target=key_id) as note:
        administer(caller)
        key = await visible_key(request, caller, key_id)
        note.tenant = key.tenant
        may_manage(caller, key)
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
        administer(caller)
        key = await visible_key(request, caller, key_id)
        note.tenant = key.tenant
        may_manage(caller, key)
        expires_at = body.moment() if body is not None else None
        issued = await platform_of(request).keys.rotate(key_id, expires_at=expires_at)
        platform_of(request).metered.budgets.reload_limits()  # the new key's, carried over
        note.details["new_key"] = issued.key.id
    return IssuedKeyView.issued(issued)


# -- budgets -----------------------------------------------------------------------------------
