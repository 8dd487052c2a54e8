"""API keys, the tenants they belong to, and their roles.

Roles: a ``member`` uses its tenant's API; an ``admin`` also administers its own tenant (its
graph queries, its usage) and nothing beyond it; an ``operator`` runs the whole platform and may
read across tenants (the first key ``spine up`` prints is one). A tenant admin asking for another
tenant's data is answered as if it did not exist (404), like any other cross-tenant read.

A key reads ``spn_<id>_<secret>``. Only the SHA-256 of the secret is stored (the secret is 256
random bits, so a slow hash adds nothing); the id finds the row and the hashes are compared in
constant time. Verified keys are trusted for a few seconds so a request costs no extra query;
revocation therefore takes effect within ``GENAI_API__KEY_CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import NotFound, Unauthorized
from spine.platform.schema import ApiKeyRow, utcnow

__all__ = ["ROLES", "ApiKey", "IssuedKey", "KeyStore", "Principal", "Role"]

Role = Literal["operator", "admin", "member"]
ROLES: tuple[Role, ...] = ("operator", "admin", "member")
_PREFIX = "spn"


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

    async def create(self, *, tenant: str, role: Role = "member", name: str = "") -> IssuedKey:
        """Issue a new random key for a tenant."""
        if not tenant or len(tenant) > 128:
            raise ValueError("tenant must be 1-128 characters")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            tenant=tenant,
            name=name,
            role=role,
            secret_hash=_digest(secret),
            created_at=utcnow(),
        )
        async with self._db.session() as session, session.begin():
            session.add(row)
        return IssuedKey(key=_view(row), secret=f"{_PREFIX}_{key_id}_{secret}")

    async def verify(self, presented: str) -> Principal:
        """Return the principal of a valid key, or raise :class:`Unauthorized`."""
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
        principal = Principal(key_id=row.id, tenant=row.tenant, role=row.role)  # type: ignore[arg-type]
        if self._cache_seconds > 0:
            self._cache[cache_key] = (principal, time.monotonic() + self._cache_seconds)
        return principal

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key; it stops working within the cache time."""
        async with self._db.session() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}", field="key_id")
            row.revoked_at = row.revoked_at or utcnow()
        self._cache.clear()
        return _view(row)

    async def list_keys(self, *, tenant: str | None = None) -> list[ApiKey]:
        """List keys, optionally of one tenant."""
        query = sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant is not None:
            query = query.where(ApiKeyRow.tenant == tenant)
        async with self._db.session() as session:
            return [_view(r) for r in (await session.execute(query)).scalars()]

    async def any_exist(self) -> bool:
        """Tell whether any key was ever issued (a fresh data dir has none)."""
        async with self._db.session() as session:
            return (await session.execute(sa.select(ApiKeyRow.id).limit(1))).first() is not None


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
    )
