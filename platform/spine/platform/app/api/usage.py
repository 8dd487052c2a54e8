"""``GET /v1/usage``: what the caller's tenant spent on model calls, grouped as asked.

``group_by`` takes ``day``, ``model``, ``tenant`` and ``provider``, repeated
(``?group_by=day&group_by=model``) or comma-separated; ``since`` and ``until`` (ISO dates or
times, UTC when no offset is given) bound the calls to ``[since, until)``. A key sees its own
tenant; an operator key may pass ``tenant=<name>`` for another tenant, or ``tenant=*`` for all.
Amounts are decimal strings (USD), exact.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request

from spine.platform.app.api.auth import Caller, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.errors import BadRequest, NotFound
from spine.platform.inputs import check_moment
from spine.platform.metering.usage import Grouping, UsageRow
from spine.platform.schema import money_text

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["usage"])

ALL_TENANTS = "*"


@router.get("/usage", responses=documented(404))
async def usage(
    request: Request,
    caller: Caller,
    group_by: Annotated[list[str] | None, Query()] = None,
    since: str | None = None,
    until: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Sum the model calls of the caller's tenant (or, for an operator, of ``tenant``, ``*``: all)."""
    if tenant is not None and not caller.may_read_tenant(tenant):
        # As for another tenant's tasks: not told apart from nothing at all. A tenant's admin
        # administers that tenant only; reading across tenants is the operator's.
        raise NotFound(f"no tenant {tenant!r} for this key", field="tenant")
    every = tenant == ALL_TENANTS and caller.is_operator  # a tenant once named "*" is just one
    chosen = caller.tenant if tenant is None else (None if every else tenant)
    groups = [part.strip() for value in group_by or [] for part in value.split(",")]
    metered = platform_of(request).metered
    await metered.flush()  # this process's calls are read back, their books written
    rows = await metered.usage.summary(
        tenant=chosen,
        group_by=cast("list[Grouping]", [g for g in groups if g]),
        since=_moment(since, "since"),
        until=_moment(until, "until"),
    )
    return {
        "object": "list",
        "tenant": tenant if tenant is not None else caller.tenant,
        "group_by": [g for g in groups if g],
        "data": [_row(row) for row in rows],
        "total": _total(rows),
    }


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise BadRequest(
                f"{name} must be an ISO date or time, got {value!r}", field=name
            ) from None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return check_moment(moment, field=name).astimezone(UTC)


def _row(row: UsageRow) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if row.day is not None:
        body["day"] = row.day.isoformat()
    for name in ("model", "tenant", "provider"):
        value = getattr(row, name)
        if value is not None:
            body[name] = value
    body.update(
        calls=row.calls,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost=money_text(row.cost),
        cache_hits=row.cache_hits,
        errors=row.errors,
    )
    return body


def _total(rows: list[UsageRow]) -> dict[str, Any]:
    return {
        "calls": sum(r.calls for r in rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cost": money_text(sum((r.cost for r in rows), Decimal(0))),
        "cache_hits": sum(r.cache_hits for r in rows),
        "errors": sum(r.errors for r in rows),
    }
