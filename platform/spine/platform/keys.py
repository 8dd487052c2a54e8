"""API keys, the tenants they belong to, and their roles.

Roles: a ``member`` uses its tenant's API; an ``admin`` also administers its own tenant (its
graph queries, its usage) and nothing beyond it; an ``operator`` runs the whole platform and may
read across tenants (the first key ``spine up`` prints is one). A tenant admin asking for another
tenant's data is answered as if it did not exist (404), like any other cross-tenant read.

A key reads ``spn_<id>_<secret>``. Only the SHA-256 of the secret is stored (the secret is 256
random bits, so a slow hash adds nothing); the id finds the row and the hashes are compared in
constant time. Verified keys are trusted for a few seconds so a request costs no extra query;
a revocation or rotation made by another process therefore takes effect there within
``GENAI_API__KEY_CACHE_SECONDS`` (5 s by default), and at once in the process that made it. A
key may carry an expiry: from then on it is refused, cached or not.

Rotating a key issues a new key (new id, new secret) with the old one's tenant, role, name,
rate limits and stored budget limits (with what it spent in the current periods), and revokes
the old one in the same transaction; the new key's ``rotated_from`` names the old.

A tenant is a row of its own (:class:`Tenant`): it exists before its first key and after its
last one is revoked, and the admin API issues keys only for a tenant that exists, so a typo
cannot mint an empty tenant. :meth:`KeyStore.create` registers a tenant it has not seen (the
CLI and ``spine up`` issue keys straight away).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from spine.platform.cursors import decode_cursor, encode_cursor
from spine.platform.db import Database
from spine.platform.errors import BadRequest, Conflict, NotFound, Unauthorized
from spine.platform.inputs import text_problem
from spine.platform.schema import (
    ApiKeyRow,
    BudgetLimitRow,
    BudgetSpendRow,
    TenantRow,
    utcnow,
)

__all__ = [
    "MAX_LIFETIME",
    "ROLES",
    "TENANT_NAME",
    "ApiKey",
    "IssuedKey",
    "KeyPage",
    "KeyStore",
    "Principal",
    "Role",
    "Tenant",
    "TenantPage",
    "check_new_tenant",
    "parse_lifetime",
]

Role = Literal["operator", "admin", "member"]
ROLES: tuple[Role, ...] = ("operator", "admin", "member")
_PREFIX = "spn"
TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A new tenant's name: ``*`` (every tenant, where tenants are read) and spaces are not one."""
_TENANT_NAME = re.compile(TENANT_NAME)
MAX_LIFETIME = timedelta(days=3660)
"""The longest expiry a key may be given (about ten years)."""
_LIFETIME = re.compile(r"^\s*(\d{1,7})\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is calling: the key and its tenant."""

    key_id: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """Tell whether the key may administer its own tenant (an operator may too)."""
        return self.role in ("admin", "operator")

    @property
    def is_operator(self) -> bool:
        """Tell whether the key runs the whole platform and may read across tenants."""
        return self.role == "operator"

    def may_read_tenant(self, tenant: str) -> bool:
        """Tell whether this key may read ``tenant``'s data."""
        return tenant == self.tenant or self.is_operator


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    tenant: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    rotated_from: str | None = None

    def usable(self, now: datetime) -> bool:
        """Tell whether the key is neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPage:
    """A page of keys, newest first; ``next_cursor`` continues it."""

    keys: list[ApiKey]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tenant:
    """A tenant the platform knows."""

    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantPage:
    """A page of tenants, newest first; ``next_cursor`` continues it."""

    tenants: list[Tenant]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedKey:
    """A key just created; ``secret`` is shown once and never stored."""

    key: ApiKey
    secret: str


class KeyStore:
    """Creates, verifies, lists and revokes API keys."""

    def __init__(self, db: Database, *, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def create(
        self,
        *,
        tenant: str,
        role: Role = "member",
        name: str = "",
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """Issue a new random key for a tenant, registering the tenant if it is new.

        Args:
            tenant: The tenant the key belongs to (1-128 characters).
            role: ``member``, ``admin`` or ``operator``.
            name: A label.
            expires_at: When the key stops working; None: never.
        """
        _check_tenant(tenant)
        row, presented = _new_row(tenant=tenant, role=role, name=name, expires_at=expires_at)
        async with self._db.session() as session, session.begin():
            if await session.get(TenantRow, tenant) is None:
                check_new_tenant(tenant, field="tenant")
            await self._register(session, tenant)
            session.add(row)
        return IssuedKey(key=_view(row), secret=presented)

    async def verify(self, presented: str) -> Principal:
        """Return the principal of a valid key, or raise :class:`Unauthorized`.

        A key is trusted from the cache for ``cache_seconds``, never past its expiry.
        """
        cache_key = hashlib.sha256(presented.encode()).hexdigest()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise Unauthorized("malformed API key", field="Authorization")
        _, key_id, secret = parts
        async with self._db.session() as session:
            row = await session.get(ApiKeyRow, key_id)
        expected = row.secret_hash if row is not None else _digest("")
        matches = hmac.compare_digest(expected, _digest(secret))
        if row is None or not matches or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key", field="Authorization")
        now = utcnow()
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthorized("expired API key", field="Authorization")
        principal = Principal(key_id=row.id, tenant=row.tenant, role=row.role)  # type: ignore[arg-type]
        trust = self._cache_seconds
        if row.expires_at is not None:
            trust = min(trust, (row.expires_at - now).total_seconds())
        if trust > 0:
            self._cache[cache_key] = (principal, time.monotonic() + trust)
        return principal

    async def get(self, key_id: str) -> ApiKey:
        """Return one key.

        Raises:
            NotFound: No key has this id.
        """
        async with self._db.session() as session:
            row = await session.get(ApiKeyRow, key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}", field="key_id")
        return _view(row)

    async def revoke(self, key_id: str, *, keep_an_operator: bool = True) -> ApiKey:
        """Revoke a key; it stops working within the cache time (at once in this process).

        Args:
            keep_an_operator: Refuse to revoke the last usable operator key (the HTTP API: it
                would leave no key that can administer the platform). The CLI, which works on
                the database itself and can issue another key, passes False.

        Raises:
            NotFound: No key has this id.
            Conflict: The key is the last usable operator key, and ``keep_an_operator``.
        """
        async with self._db.session() as session, session.begin():
            if keep_an_operator:
                await self._keep_an_operator(session, key_id)
            row = await session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}", field="key_id")
            row.revoked_at = row.revoked_at or utcnow()
        self._cache.clear()
        return _view(row)

    @staticmethod
    async def _keep_an_operator(session: AsyncSession, key_id: str) -> None:
        """Refuse (409) to revoke ``key_id`` if it is the last usable operator key.

        The usable operator keys are locked in id order first, so two revocations of the last
        two wait for each other (the second then sees the first's) instead of both passing.
        """
        now = utcnow()
        usable = (
            sa.select(ApiKeyRow.id)
            .where(
                ApiKeyRow.role == "operator",
                ApiKeyRow.revoked_at.is_(None),
                sa.or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now),
            )
            .order_by(ApiKeyRow.id)
            .with_for_update()
        )
        operators = list((await session.execute(usable)).scalars())
        if operators == [key_id]:
            raise Conflict(
                f"key {key_id!r} is the last usable operator key: issue another operator key "
                "first (or revoke it with 'spine keys revoke' on the server)",
                field="key_id",
            )

    async def rotate(self, key_id: str, *, expires_at: datetime | None = None) -> IssuedKey:
        """Issue a new key of the same tenant, role and name, and revoke the old one.

        Args:
            key_id: The key to replace.
            expires_at: The new key's expiry; None: the old key's.

        Raises:
            NotFound: No key has this id.
            Conflict: The key is revoked already, or the new key would be expired at once.
        """
        async with self._db.session() as session, session.begin():
            old = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if old is None:
                raise NotFound(f"no key {key_id!r}", field="key_id")
            if old.revoked_at is not None:
                raise Conflict(f"key {key_id!r} is revoked; issue a new one", field="key_id")
            now = utcnow()
            expiry = expires_at if expires_at is not None else old.expires_at
            if expiry is not None and expiry <= now:
                raise Conflict(
                    f"key {key_id!r} has expired: give the new key an expiry", field="expires_in"
                )
            row, presented = _new_row(
                tenant=old.tenant,
                role=old.role,  # type: ignore[arg-type]
                name=old.name,
                expires_at=expiry,
                rotated_from=old.id,
            )
            # The successor keeps the key's own rate limits (spine.platform.limits).
            row.requests_per_minute = old.requests_per_minute
            row.tokens_per_minute = old.tokens_per_minute
            session.add(row)
            await _carry_budgets(session, old.id, row.id, now)
            old.revoked_at = now
        self._cache.clear()
        return IssuedKey(key=_view(row), secret=presented)

    async def list_keys(self, *, tenant: str | None = None) -> list[ApiKey]:
        """List keys, optionally of one tenant, oldest first."""
        query = sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant is not None:
            query = query.where(ApiKeyRow.tenant == tenant)
        async with self._db.session() as session:
            return [_view(r) for r in (await session.execute(query)).scalars()]

    async def list_page(
        self,
        *,
        tenant: str | None = None,
        include_revoked: bool = True,
        limit: int = 50,
        cursor: str | None = None,
    ) -> KeyPage:
        """List keys (of one tenant, or all), newest first, ``limit`` at a time."""
        query = sa.select(ApiKeyRow)
        if tenant is not None:
            query = query.where(ApiKeyRow.tenant == tenant)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        rows = await self._page(query, ApiKeyRow.created_at, ApiKeyRow.id, limit, cursor)
        following = (
            encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id)
            if len(rows) > limit
            else None
        )
        return KeyPage(keys=[_view(r) for r in rows[:limit]], next_cursor=following)

    async def any_exist(self) -> bool:
        """Tell whether any key was ever issued (a fresh data dir has none)."""
        async with self._db.session() as session:
            return (await session.execute(sa.select(ApiKeyRow.id).limit(1))).first() is not None

    # -- tenants ------------------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        """Register a tenant.

        Raises:
            Conflict: The tenant exists already.
        """
        check_new_tenant(name, field="name")
        async with self._db.session() as session, session.begin():
            if await session.get(TenantRow, name) is not None:
                raise Conflict(f"tenant {name!r} exists already", field="name")
            row = TenantRow(name=name, created_at=utcnow())
            session.add(row)
        return Tenant(name=row.name, created_at=row.created_at)

    async def tenant(self, name: str) -> Tenant:
        """Return one tenant.

        Raises:
            NotFound: No tenant has this name.
        """
        async with self._db.session() as session:
            row = await session.get(TenantRow, name)
        if row is None:
            raise NotFound(f"no tenant {name!r}", field="tenant")
        return Tenant(name=row.name, created_at=row.created_at)

    async def tenants_page(self, *, limit: int = 50, cursor: str | None = None) -> TenantPage:
        """List tenants, newest first, ``limit`` at a time."""
        rows = await self._page(
            sa.select(TenantRow), TenantRow.created_at, TenantRow.name, limit, cursor
        )
        following = (
            encode_cursor(rows[limit - 1].created_at, rows[limit - 1].name)
            if len(rows) > limit
            else None
        )
        tenants = [Tenant(name=r.name, created_at=r.created_at) for r in rows[:limit]]
        return TenantPage(tenants=tenants, next_cursor=following)

    async def _register(self, session: AsyncSession, tenant: str) -> None:
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        statement = insert(TenantRow).values(name=tenant, created_at=utcnow())
        await session.execute(statement.on_conflict_do_nothing())

    async def _page(
        self,
        query: sa.Select[_Row],
        when: sa.orm.InstrumentedAttribute[datetime],
        ident: sa.orm.InstrumentedAttribute[str],
        limit: int,
        cursor: str | None,
    ) -> list[_Row]:
        # Keyset pages, newest first; one row more than asked tells whether a page follows.
        if cursor is not None:
            after, last = decode_cursor(cursor)
            query = query.where(sa.or_(when < after, sa.and_(when == after, ident < last)))
        query = query.order_by(when.desc(), ident.desc()).limit(limit + 1)
        async with self._db.session() as session:
            return list((await session.execute(query)).scalars())


_Row = TypeVar("_Row", ApiKeyRow, TenantRow)


def parse_lifetime(text: str, *, field: str = "expires_in") -> timedelta:
    """Read a key's lifetime: a number of seconds, or one with a unit (``90m``, ``12h``, ``30d``).

    Raises:
        BadRequest: The text is not a lifetime, is zero, or is over :data:`MAX_LIFETIME`.
    """
    match = _LIFETIME.match(text)
    if match is None:
        raise BadRequest(
            f"{field} must be a number with an optional unit s, m, h, d or w (like 30d), "
            f"not {text[:40]!r}",
            field=field,
        )
    lifetime = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise BadRequest(f"{field} must be above zero and at most 3660d", field=field)
    return lifetime


def _check_tenant(tenant: str) -> None:
    if not tenant or len(tenant) > 128 or text_problem(tenant):
        raise BadRequest("tenant must be 1-128 storable characters", field="tenant")


def check_new_tenant(name: str, *, field: str) -> None:
    """Refuse a name a new tenant may not have (``*`` means every tenant where tenants are read)."""
    if not _TENANT_NAME.fullmatch(name):
        raise BadRequest(
            f"a tenant name is 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, not {name!r}",
            field=field,
        )


def _new_row(
    *,
    tenant: str,
    role: Role,
    name: str,
    expires_at: datetime | None,
    rotated_from: str | None = None,
) -> tuple[ApiKeyRow, str]:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=key_id,
        tenant=tenant,
        name=name,
        role=role,
        secret_hash=_digest(secret),
        created_at=utcnow(),
        revoked_at=None,
        expires_at=expires_at,
        rotated_from=rotated_from,
    )
    return row, f"{_PREFIX}_{key_id}_{secret}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _view(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        role=row.role,  # type: ignore[arg-type]
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
        rotated_from=row.rotated_from,
    )


async def _carry_budgets(session: AsyncSession, old_id: str, new_id: str, now: datetime) -> None:
    """Give a rotated key's successor its stored budget limits and this period's spend.

    The same caller spends on: the successor starts where the old key stands in its current
    days, weeks and months (its reservations in flight settle on the old key).
    """
    old_scope, new_scope = f"key:{old_id}", f"key:{new_id}"
    limits: sa.Table = BudgetLimitRow.__table__  # type: ignore[assignment]
    await session.execute(
        sa.insert(limits).from_select(
            ["scope", "period", "amount", "updated_at", "updated_by"],
            sa.select(
                sa.literal(new_scope),
                limits.c.period,
                limits.c.amount,
                limits.c.updated_at,
                limits.c.updated_by,
            ).where(limits.c.scope == old_scope),
        )
    )
    today = now.date()
    since = min(today.replace(day=1), today - timedelta(days=today.weekday()))
    spend: sa.Table = BudgetSpendRow.__table__  # type: ignore[assignment]
    await session.execute(
        sa.insert(spend).from_select(
            ["scope", "period", "day", "spent", "reserved"],
            sa.select(
                sa.literal(new_scope),
                spend.c.period,
                spend.c.day,
                spend.c.spent,
                sa.literal(Decimal(0), spend.c.reserved.type),
            ).where(spend.c.scope == old_scope, spend.c.day >= since),
        )
    )
