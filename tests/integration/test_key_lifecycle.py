"""Keys with an expiry, rotation, tenants, and the append-only audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spine.platform.audit import AuditLog
from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, NotFound, Unauthorized
from spine.platform.keys import KeyStore, parse_lifetime
from spine.platform.schema import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(db: Database) -> KeyStore:
    return KeyStore(db, cache_seconds=0)


async def test_an_expired_key_is_refused_and_the_cache_never_outlives_the_expiry(
    db: Database,
) -> None:
    keys = KeyStore(db, cache_seconds=3600)
    past = await keys.create(tenant="acme", expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Unauthorized, match="expired") as refused:
        await keys.verify(past.secret)
    assert refused.value.field == "Authorization"
    later = await keys.create(tenant="acme", expires_at=utcnow() + timedelta(days=1))
    assert (await keys.verify(later.secret)).tenant == "acme"
    assert later.key.usable(utcnow()) and not later.key.usable(utcnow() + timedelta(days=2))
    # A key verified just before its expiry is not trusted from the cache after it.
    soon = await keys.create(tenant="acme", expires_at=utcnow() + timedelta(milliseconds=300))
    assert (await keys.verify(soon.secret)).key_id == soon.key.id
    await asyncio.sleep(0.4)
    with pytest.raises(Unauthorized, match="expired"):
        await keys.verify(soon.secret)


async def test_rotation_issues_a_successor_and_revokes_the_old_key(keys: KeyStore) -> None:
    old = await keys.create(tenant="acme", role="admin", name="ci")
    new = await keys.rotate(old.key.id)
    assert new.key.id != old.key.id and new.secret != old.secret
    assert (new.key.tenant, new.key.role, new.key.name) == ("acme", "admin", "ci")
    assert new.key.rotated_from == old.key.id
    with pytest.raises(Unauthorized):
        await keys.verify(old.secret)
    assert (await keys.verify(new.secret)).key_id == new.key.id
    assert (await keys.get(old.key.id)).revoked_at is not None
    with pytest.raises(Conflict):
        await keys.rotate(old.key.id)
    with pytest.raises(NotFound):
        await keys.rotate("nosuchkey")


async def test_the_last_usable_operator_key_is_revoked_only_when_asked(keys: KeyStore) -> None:
    first = await keys.create(tenant="ops", role="operator")
    with pytest.raises(Conflict, match="last usable operator key") as refused:
        await keys.revoke(first.key.id)
    assert refused.value.field == "key_id"
    assert (await keys.verify(first.secret)).key_id == first.key.id  # nothing changed
    # Keys of other roles, and operator keys that cannot be used, are no reason to refuse.
    member = await keys.create(tenant="ops")
    assert (await keys.revoke(member.key.id)).revoked_at is not None
    await keys.create(tenant="ops", role="operator", expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Conflict):
        await keys.revoke(first.key.id)
    second = await keys.create(tenant="ops", role="operator")
    assert (await keys.revoke(first.key.id)).revoked_at is not None
    with pytest.raises(Conflict):
        await keys.revoke(second.key.id)
    # Rotating the last one keeps an operator; the CLI (the way back) may revoke the last.
    third = await keys.rotate(second.key.id)
    assert (await keys.revoke(third.key.id, keep_an_operator=False)).revoked_at is not None
    with pytest.raises(Unauthorized):
        await keys.verify(third.secret)


async def test_two_revocations_of_the_last_two_operator_keys_leave_one(
    keys: KeyStore, db: Database
) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite takes one writer at a time: there is no race to lose")
    for _ in range(5):
        pair = [await keys.create(tenant="ops", role="operator") for _ in range(2)]
        outcomes = await asyncio.gather(
            *(keys.revoke(k.key.id) for k in pair), return_exceptions=True
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["ApiKey", "Conflict"], outcomes
        survivor = next(k for k, o in zip(pair, outcomes, strict=True) if isinstance(o, Conflict))
        assert (await keys.verify(survivor.secret)).key_id == survivor.key.id
        # None left: the next round's pair are the last two.
        await keys.revoke(survivor.key.id, keep_an_operator=False)


async def test_rotation_keeps_the_expiry_unless_given_and_refuses_a_successor_born_expired(
    keys: KeyStore,
) -> None:
    until = utcnow() + timedelta(days=3)
    kept = await keys.rotate((await keys.create(tenant="acme", expires_at=until)).key.id)
    assert kept.key.expires_at == until
    longer = await keys.rotate(kept.key.id, expires_at=until + timedelta(days=1))
    assert longer.key.expires_at == until + timedelta(days=1)
    expired = await keys.create(tenant="acme", expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Conflict) as refused:
        await keys.rotate(expired.key.id)
    assert refused.value.field == "expires_in"
    assert (await keys.rotate(expired.key.id, expires_at=until)).key.expires_at == until


async def test_tenants_are_registered_by_their_first_key_and_listed_in_pages(
    keys: KeyStore,
) -> None:
    await keys.create(tenant="acme")
    await keys.create(tenant="acme")
    await keys.create_tenant("globex")
    with pytest.raises(Conflict):
        await keys.create_tenant("acme")
    assert (await keys.tenant("globex")).name == "globex"
    with pytest.raises(NotFound) as missing:
        await keys.tenant("initech")
    assert missing.value.field == "tenant"
    first = await keys.tenants_page(limit=1)
    assert first.next_cursor is not None
    second = await keys.tenants_page(limit=1, cursor=first.next_cursor)
    assert second.next_cursor is None
    assert {t.name for t in first.tenants + second.tenants} == {"acme", "globex"}


async def test_key_pages_follow_their_cursor_newest_first(keys: KeyStore) -> None:
    made = [(await keys.create(tenant="acme", name=str(i))).key.id for i in range(5)]
    await keys.create(tenant="globex")
    await keys.revoke(made[0])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await keys.list_page(tenant="acme", limit=2, cursor=cursor)
        seen += [k.id for k in page.keys]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(made) and len(seen) == 5
    active = await keys.list_page(tenant="acme", include_revoked=False, limit=10)
    assert made[0] not in {k.id for k in active.keys} and len(active.keys) == 4
    with pytest.raises(BadRequest) as bad:
        await keys.list_page(cursor="not-a-cursor")
    assert bad.value.field == "cursor"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600", 3600), (" 2w ", 1209600)],
)
def test_lifetimes_are_read_with_their_unit(text: str, seconds: int) -> None:
    assert parse_lifetime(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0d", "soon", "-1d", "1y", "3661d", "1.5h", "1e9"])
def test_a_bad_lifetime_names_its_field(text: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_lifetime(text, field="--expires-in")
    assert refused.value.field == "--expires-in"


@given(st.text(max_size=12))
def test_any_lifetime_text_is_a_positive_bounded_duration_or_a_bad_request(text: str) -> None:
    try:
        lifetime = parse_lifetime(text)
    except BadRequest as exc:
        refused = exc
        assert refused.field == "expires_in"
    else:
        assert timedelta(0) < lifetime <= timedelta(days=3660)


# -- the audit log ------------------------------------------------------------------------------


async def test_the_database_refuses_to_update_or_delete_audit_rows(db: Database) -> None:
    log = AuditLog(db)
    entry = await log.record(
        "key.create", tenant="acme", target="k1", key_id="op", address="127.0.0.1"
    )
    for statement in (
        "UPDATE audit_log SET outcome = 'denied'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with db.transaction() as conn:
                await conn.execute(sa.text(statement))
    if not db.is_sqlite:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with db.transaction() as conn:
                await conn.execute(sa.text("TRUNCATE audit_log"))
    page = await log.page()
    assert [(e.id, e.outcome) for e in page.data] == [(entry.id, "ok")]


async def test_audit_rows_are_filtered_and_checked(db: Database) -> None:
    log = AuditLog(db)
    await log.record("key.create", tenant="acme", target="k1", key_id="a", address=None)
    await log.record("key.revoke", tenant="acme", target="k1", key_id="b", address=None)
    await log.record("key.create", tenant="globex", target="k2", key_id="a", address=None)
    assert len((await log.page(action="key.create")).data) == 2
    assert [e.target for e in (await log.page(tenant="globex")).data] == ["k2"]
    assert [e.action for e in (await log.page(key_id="b")).data] == ["key.revoke"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await log.page(since=future)).data == []
    assert len((await log.page(until=future)).data) == 3
    with pytest.raises(ValueError, match="unknown audit action"):
        await log.record("key.delete", tenant="acme", target="k", key_id=None, address=None)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@given(limit=st.integers(min_value=1, max_value=7))
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_audit_pages_cover_every_row_once_newest_first(db: Database, limit: int) -> None:
    log = AuditLog(db)
    if not (await log.page(limit=1)).data:
        for i in range(9):
            await log.record(
                "graph.query", tenant="acme", target=f"q{i}", key_id=None, address=None
            )
    everything = (await log.page(limit=500)).data
    seen = []
    cursor: str | None = None
    while True:
        page = await log.page(limit=limit, cursor=cursor)
        assert len(page.data) <= limit
        seen += page.data
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [e.id for e in seen] == [e.id for e in everything]
    assert all(a.at >= b.at for a, b in itertools.pairwise(seen))
