"""Which limits hold for a caller: a key's own (stored with it), its tenant's, the defaults."""

from __future__ import annotations

import pytest

from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.keys import KeyStore, Principal
from spine.platform.limits import KeyLimits, KeyLimitStore, LimitPolicy, ScopeLimits
from spine.platform.settings import LimitSettings, TenantLimits

pytestmark = pytest.mark.integration


async def _principal(db: Database, tenant: str = "acme") -> Principal:
    issued = await KeyStore(db).create(tenant=tenant)
    return Principal(key_id=issued.key.id, tenant=tenant, role="member")


async def test_nothing_is_limited_by_default(db: Database) -> None:
    caller = await _principal(db)
    policy = LimitPolicy(LimitSettings(), KeyLimitStore(db))
    assert await policy.scopes(caller) == []


async def test_a_keys_own_limits_replace_the_defaults_and_zero_lifts_them(db: Database) -> None:
    caller = await _principal(db)
    store = KeyLimitStore(db, cache_seconds=0)
    settings = LimitSettings(
        key_requests_per_minute=60,
        key_tokens_per_minute=1000,
        tenant_tokens_per_minute=5000,
        tenants={"acme": TenantLimits(requests_per_minute=600)},
    )
    policy = LimitPolicy(settings, store)
    key_scope = f"key:{caller.key_id}"
    assert await policy.scopes(caller) == [
        ScopeLimits(scope=key_scope, requests_per_minute=60, tokens_per_minute=1000),
        ScopeLimits(scope="tenant:acme", requests_per_minute=600, tokens_per_minute=5000),
    ]
    await store.set(caller.key_id, KeyLimits(requests_per_minute=10, tokens_per_minute=0))
    assert await store.get(caller.key_id) == KeyLimits(requests_per_minute=10, tokens_per_minute=0)
    scopes = await policy.scopes(caller)
    assert scopes[0] == ScopeLimits(scope=key_scope, requests_per_minute=10)
    await store.set(caller.key_id, KeyLimits())  # back to the defaults
    assert (await policy.scopes(caller))[0].requests_per_minute == 60


async def test_a_read_is_trusted_for_the_cache_time_in_other_processes(db: Database) -> None:
    caller = await _principal(db)
    here, elsewhere = KeyLimitStore(db, cache_seconds=60), KeyLimitStore(db, cache_seconds=60)
    assert await elsewhere.get(caller.key_id) == KeyLimits()
    await here.set(caller.key_id, KeyLimits(requests_per_minute=5))
    assert (await here.get(caller.key_id)).requests_per_minute == 5  # at once where it was set
    assert (await elsewhere.get(caller.key_id)).requests_per_minute is None  # until its cache ends
    fresh = KeyLimitStore(db, cache_seconds=60)
    assert (await fresh.get(caller.key_id)).requests_per_minute == 5


async def test_an_unknown_key_is_not_found(db: Database) -> None:
    store = KeyLimitStore(db)
    with pytest.raises(NotFound):
        await store.get("nope")
    with pytest.raises(NotFound):
        await store.set("nope", KeyLimits(requests_per_minute=1))
