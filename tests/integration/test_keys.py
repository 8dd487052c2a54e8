"""API keys on SQLite and PostgreSQL: shown once, stored hashed, verified, revoked, cached."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import BadRequest, NotFound, Unauthorized
from spine.platform.keys import KeyStore

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(db: Database) -> KeyStore:
    return KeyStore(db, cache_seconds=0)


async def test_create_shows_the_secret_once_and_stores_only_its_hash(
    keys: KeyStore, db: Database
) -> None:
    issued = await keys.create(tenant="acme", name="ci", role="admin")
    prefix, key_id, secret = issued.secret.split("_", 2)
    assert prefix == "spn"
    assert key_id == issued.key.id
    assert len(secret) >= 40
    assert (issued.key.tenant, issued.key.name, issued.key.role) == ("acme", "ci", "admin")
    assert issued.key.revoked_at is None
    assert not hasattr(issued.key, "secret")

    async with db.session() as session:
        rows = (await session.execute(sa.text("SELECT * FROM api_keys"))).mappings().all()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0].values())
    assert secret not in stored
    assert issued.secret not in stored
    assert rows[0]["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()

    listed = await keys.list_keys()
    assert [k.id for k in listed] == [key_id]
    assert secret not in repr(listed)

    other = await keys.create(tenant="acme")
    assert other.secret != issued.secret
    assert other.key.id != issued.key.id


async def test_verify_returns_the_principal(keys: KeyStore) -> None:
    admin = await keys.create(tenant="acme", role="admin")
    member = await keys.create(tenant="globex")
    who = await keys.verify(admin.secret)
    assert (who.key_id, who.tenant, who.role, who.is_admin) == (admin.key.id, "acme", "admin", True)
    who = await keys.verify(member.secret)
    assert (who.tenant, who.role, who.is_admin) == ("globex", "member", False)


async def test_wrong_malformed_and_unknown_keys_are_unauthorized(keys: KeyStore) -> None:
    issued = await keys.create(tenant="acme")
    _, key_id, secret = issued.secret.split("_", 2)
    cases = {
        "wrong secret": f"spn_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",
        "empty secret": f"spn_{key_id}_",
        "unknown id": f"spn_ffffffffffff_{secret}",
        "other prefix": f"sk_{key_id}_{secret}",
        "no separators": "justsomegarbage",
        "two parts": f"spn_{key_id}",
        "empty": "",
    }
    for case, presented in cases.items():
        with pytest.raises(Unauthorized) as refused:
            await keys.verify(presented)
        assert refused.value.field == "Authorization", case
        assert refused.value.status_code == 401
        assert secret not in refused.value.message, case
    assert (await keys.verify(issued.secret)).tenant == "acme"


async def test_revoked_key_is_refused_at_once_without_a_cache(keys: KeyStore) -> None:
    issued = await keys.create(tenant="acme")
    keep = await keys.create(tenant="acme")
    await keys.verify(issued.secret)
    revoked = await keys.revoke(issued.key.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthorized):
        await keys.verify(issued.secret)
    assert (await keys.verify(keep.secret)).key_id == keep.key.id
    # Revoking again keeps the first revocation time.
    assert (await keys.revoke(issued.key.id)).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await keys.revoke("nosuchkey")


async def test_with_a_cache_revocation_elsewhere_takes_effect_after_the_cache_time(
    db: Database,
) -> None:
    api = KeyStore(db, cache_seconds=0.5)  # the API process, trusting keys for a while
    admin = KeyStore(db, cache_seconds=0)  # `spine keys revoke` in another process
    issued = await admin.create(tenant="acme")
    assert (await api.verify(issued.secret)).tenant == "acme"
    await admin.revoke(issued.key.id)
    assert (await api.verify(issued.secret)).tenant == "acme"  # still trusted from the cache
    await asyncio.sleep(0.6)
    with pytest.raises(Unauthorized):
        await api.verify(issued.secret)


async def test_revoking_through_the_caching_store_takes_effect_at_once(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=60)
    issued = await keys.create(tenant="acme")
    await keys.verify(issued.secret)
    await keys.revoke(issued.key.id)
    with pytest.raises(Unauthorized):
        await keys.verify(issued.secret)


async def test_the_cache_never_trusts_a_wrong_secret(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=60)
    issued = await keys.create(tenant="acme")
    await keys.verify(issued.secret)
    with pytest.raises(Unauthorized):
        await keys.verify(issued.secret + "x")


async def test_keys_are_listed_per_tenant_oldest_first(keys: KeyStore) -> None:
    assert await keys.any_exist() is False
    a1 = await keys.create(tenant="acme", name="one")
    g1 = await keys.create(tenant="globex")
    a2 = await keys.create(tenant="acme", name="two")
    await keys.revoke(a1.key.id)
    assert await keys.any_exist() is True

    everything = await keys.list_keys()
    assert [k.id for k in everything] == [a1.key.id, g1.key.id, a2.key.id]
    assert {k.tenant for k in everything} == {"acme", "globex"}
    acme = await keys.list_keys(tenant="acme")
    assert [(k.name, k.revoked_at is not None) for k in acme] == [("one", True), ("two", False)]
    assert [k.id for k in await keys.list_keys(tenant="globex")] == [g1.key.id]
    assert await keys.list_keys(tenant="nobody") == []
    for key in everything:
        assert key.created_at.tzinfo is not None
        assert key.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("tenant", ["", "x" * 129])
async def test_a_tenant_name_must_be_1_to_128_characters(keys: KeyStore, tenant: str) -> None:
    with pytest.raises(BadRequest, match="tenant"):
        await keys.create(tenant=tenant)
