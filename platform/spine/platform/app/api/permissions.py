"""Who may do what in the admin routes (tenants, keys, budgets, key limits): one place.

Follows the roles of :mod:`spine.platform.keys`. Another tenant, and any key of it, is answered
as not found (404), exactly as if it did not exist; a role that may not act gets 403.
"""

from __future__ import annotations

from fastapi import Request

from spine.platform.app.api.auth import platform_of
from spine.platform.errors import Forbidden, NotFound
from spine.platform.keys import ApiKey, Principal

__all__ = ["administer", "may_manage", "visible_key", "visible_tenant"]


def administer(caller: Principal) -> None:
    """Refuse a member key (403): keys are administered with an admin or operator key."""
    if not caller.is_admin:
        raise Forbidden("keys are administered with an admin or operator key")


def visible_tenant(caller: Principal, tenant: str) -> None:
    """Answer 404 for a tenant the caller may not read."""
    if not caller.may_read_tenant(tenant):
        raise NotFound(f"no tenant {tenant!r}", field="tenant")


async def visible_key(request: Request, caller: Principal, key_id: str) -> ApiKey:
    """Return the key, or 404 if it does not exist or belongs to a tenant the caller can't read."""
    try:
        key: ApiKey | None = await platform_of(request).keys.get(key_id)
    except NotFound:
        key = None
    if key is None or not caller.may_read_tenant(key.tenant):
        # Another tenant's key is answered exactly as a key that does not exist.
        raise NotFound(f"no key {key_id!r}", field="key_id")
    return key


def may_manage(caller: Principal, key: ApiKey) -> None:
    """Refuse (403) changing an operator's key with anything but an operator key."""
    if key.role == "operator" and not caller.is_operator:
        raise Forbidden("an operator key is managed with an operator key", field="key_id")
