"""``GET /v1/audit`` and what every route uses to write to the audit log.

Routes record an action with :func:`record` once it is done, or wrap it in :func:`audited`,
which also records a refusal by role (403) as ``denied``. The log itself, its actions and its
guarantees are :mod:`spine.platform.audit`'s.

An operator key reads every tenant's rows (``tenant`` narrows them); a tenant's admin key reads
its own tenant's (another ``tenant`` is not found, 404); a member key may not read the log (403).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.audit import AuditEntry, AuditLog, AuditPage
from spine.platform.errors import Forbidden, NotFound, SpineError
from spine.platform.inputs import check_moment
from spine.platform.keys import Principal

__all__ = ["AuditNote", "audited", "client_address", "record", "router"]

router = APIRouter(prefix="/v1", tags=["audit"])


def client_address(request: Request) -> str | None:
    """Return where the request came from: the peer, or the client a trusted proxy names.

    The server believes ``X-Forwarded-For`` only from ``GENAI_API__TRUSTED_PROXIES``
    (:mod:`.serving`), so the peer it reports is the client already.
    """
    return request.client.host if request.client is not None else None


def audit_log(request: Request) -> AuditLog:
    """Return the audit log of this app's database."""
    return AuditLog(platform_of(request).db)


async def record(
    request: Request,
    caller: Principal,
    action: str,
    *,
    target: str,
    tenant: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record an action the caller carried out (on its own tenant unless ``tenant`` says)."""
    return await audit_log(request).record(
        action,
        tenant=tenant if tenant is not None else caller.tenant,
        target=target,
        key_id=caller.key_id,
        address=client_address(request),
        details=details,
    )


@dataclass(slots=True, kw_only=True)
class AuditNote:
    """What :func:`audited` will record; the block may fill in what it learns."""

    target: str
    tenant: str
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def audited(
    request: Request,
    caller: Principal,
    action: str,
    *,
    target: str = "",
    tenant: str | None = None,
    details: dict[str, Any] | None = None,
) -> AsyncIterator[AuditNote]:
    """Record the action the block carries out, or its refusal by role (``denied``).

    A refusal is any 403 and any error the platform marks as one (``SpineError.refusal``: a
    query the graph guard refuses). Other failures (404, 409, 4xx for bad input, 503) record
    nothing: nothing was done.
    """
    note = AuditNote(
        target=target,
        tenant=tenant if tenant is not None else caller.tenant,
        details=dict(details or {}),
    )
    log = audit_log(request)
    try:
        yield note
    except (SpineError, HTTPException) as exc:
        if exc.status_code == 403 or (isinstance(exc, SpineError) and exc.refusal):
            reason = exc.message if isinstance(exc, SpineError) else str(exc.detail)
            await log.record(
                action,
                tenant=note.tenant,
                target=note.target,
                key_id=caller.key_id,
                address=client_address(request),
                outcome="denied",
                details={**note.details, "reason": reason},
            )
        raise
    await log.record(
        action,
        tenant=note.tenant,
        target=note.target,
        key_id=caller.key_id,
        address=client_address(request),
        details=note.details,
    )


@router.get("/audit", response_model=AuditPage, responses=documented(403, 404))
async def read_audit(
    request: Request,
    caller: Caller,
    action: Annotated[str | None, Query(max_length=64)] = None,
    key: Annotated[str | None, Query(max_length=32, description="The key that acted.")] = None,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> AuditPage:
    """List the audit log, newest first, in cursor pages; ``since`` <= time < ``until``."""
    if not caller.is_admin:
        raise Forbidden("the audit log is read with an operator or admin key")
    if caller.is_operator:
        scope = tenant
    elif tenant is None or tenant == caller.tenant:
        scope = caller.tenant
    else:
        raise NotFound(f"no tenant {tenant!r} for this key", field="tenant")
    return await audit_log(request).page(
        tenant=scope,
        action=action,
        key_id=key,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
        limit=limit,
        cursor=cursor,
    )


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return check_moment(moment, field=name).astimezone(UTC)
