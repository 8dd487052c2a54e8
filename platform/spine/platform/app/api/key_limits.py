"""A key's rate limits over HTTP: ``GET`` and ``PUT /v1/keys/{key_id}/limits``.

A key's own requests and tokens per minute replace the ``GENAI_LIMITS__KEY_*`` defaults for it
(``null``: back to the default; ``0``: no limit of its own); its tenant's limits hold beside
them. Every API process applies a change within ``GENAI_API__KEY_CACHE_SECONDS`` (5 s by
default), and at once the process that made it.

Who may: an operator, for any key; an admin, for its own tenant's keys (an operator's key is
managed with an operator key: 403); a member reads its own key's limits only. Another tenant's
key is not found (404). Each change is in the audit log (``key.limits``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from spine.platform.app.api.audit import audited
from spine.platform.app.api.auth import Caller, rate_limits_of
from spine.platform.app.api.errors import documented
from spine.platform.app.api.permissions import may_manage, visible_key
from spine.platform.errors import Forbidden
from spine.platform.keys import ApiKey
from spine.platform.limits import KeyLimits, RateLimits

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["admin"])

MAX_PER_MINUTE = 2_000_000_000
"""The largest limit a key may be given (it is stored as a 32-bit integer)."""


class KeyLimitsInput(BaseModel):
    """The body of ``PUT /v1/keys/{key_id}/limits``: the key's own limits per minute."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(
        None, ge=0, le=MAX_PER_MINUTE, description="null: the default; 0: no limit of its own."
    )
    tokens_per_minute: int | None = Field(
        None, ge=0, le=MAX_PER_MINUTE, description="null: the default; 0: no limit of its own."
    )


class PerMinute(BaseModel):
    """Limits per minute; null: none."""

    requests_per_minute: int | None
    tokens_per_minute: int | None


class KeyLimitsView(BaseModel):
    """A key's own limits, the ones that hold for it, and its tenant's."""

    key_id: str
    tenant: str
    own: PerMinute = Field(description="Set for this key (null: the setting's default).")
    effective: PerMinute = Field(description="What the key is held to (null: no limit).")
    tenant_limits: PerMinute = Field(description="What the key's tenant as a whole is held to.")


@router.get("/keys/{key_id}/limits", response_model=KeyLimitsView, responses=documented(403))
async def get_key_limits(key_id: str, request: Request, caller: Caller) -> KeyLimitsView:
    """Return a key's rate limits (a member key: only its own)."""
    if not caller.is_admin and key_id != caller.key_id:
        raise Forbidden("a member key may read only its own limits")
    key = await visible_key(request, caller, key_id)
    limits = rate_limits_of(request)
    return await _view(limits, key, await limits.keys.get(key_id))


@router.put("/keys/{key_id}/limits", response_model=KeyLimitsView, responses=documented(403))
async def set_key_limits(
    key_id: str, given: KeyLimitsInput, request: Request, caller: Caller
) -> KeyLimitsView:
    """Set a key's own requests and tokens per minute (admin keys: of their own tenant)."""
    details = given.model_dump()
    async with audited(request, caller, "key.limits", target=key_id, details=details) as note:
        if not caller.is_admin:
            raise Forbidden("limits are set with an admin or operator key")
        key = await visible_key(request, caller, key_id)
        note.tenant = key.tenant
        may_manage(caller, key)
        limits = rate_limits_of(request)
        own = await limits.keys.set(
            key_id,
            KeyLimits(
                requests_per_minute=given.requests_per_minute,
                tokens_per_minute=given.tokens_per_minute,
            ),
        )
    return await _view(limits, key, own)


async def _view(limits: RateLimits, key: ApiKey, own: KeyLimits) -> KeyLimitsView:
    effective = await limits.policy.key_scope(key.id)
    tenant = limits.policy.tenant_scope(key.tenant)
    return KeyLimitsView(
        key_id=key.id,
        tenant=key.tenant,
        own=PerMinute(
            requests_per_minute=own.requests_per_minute, tokens_per_minute=own.tokens_per_minute
        ),
        effective=PerMinute(
            requests_per_minute=effective.requests_per_minute,
            tokens_per_minute=effective.tokens_per_minute,
        ),
        tenant_limits=PerMinute(
            requests_per_minute=tenant.requests_per_minute,
            tokens_per_minute=tenant.tokens_per_minute,
        ),
    )
