"""Which limits hold for a caller: the settings' defaults, a tenant's own, and a key's own.

A key is limited twice, as itself (``key:<id>``) and as part of its tenant (``tenant:<name>``);
both must allow a call. For each scope and measure (requests or tokens per minute) the value is
the scope's own when it has one, else the setting's default; 0 means no limit, so a key given
0 is unlimited even where the default limits keys (its tenant's limit still holds).

A key's own limits are stored with the key (``api_keys.requests_per_minute`` and
``tokens_per_minute``; NULL: the default) and read through :class:`KeyLimitStore`, which
trusts what it read for ``cache_seconds`` (``GENAI_API__KEY_CACHE_SECONDS``, 5 s by default),
as the key store trusts a verified key: a change made by another process holds everywhere
within that time, and at once in the process that made it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.keys import Principal
from spine.platform.schema import ApiKeyRow
from spine.platform.settings import LimitSettings

__all__ = ["KeyLimitStore", "KeyLimits", "LimitPolicy", "ScopeLimits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyLimits:
    """A key's own limits per minute; None: the settings' default, 0: no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeLimits:
    """The limits one scope (``key:<id>`` or ``tenant:<name>``) is held to; None: no limit."""

    scope: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def limited(self) -> bool:
        """Tell whether any limit holds for this scope."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class KeyLimitStore:
    """Reads and writes the limits stored with each key, trusting a read for a few seconds."""

    def __init__(self, db: Database, *, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[KeyLimits, float]] = {}

    async def get(self, key_id: str) -> KeyLimits:
        """Return a key's own limits (cached for ``cache_seconds``).

        Raises:
            NotFound: No key has this id.
        """
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        query = sa.select(ApiKeyRow.requests_per_minute, ApiKeyRow.tokens_per_minute).where(
            ApiKeyRow.id == key_id
        )
        async with self._db.session() as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"no key {key_id!r}", field="key_id")
        limits = KeyLimits(requests_per_minute=row[0], tokens_per_minute=row[1])
        if self._cache_seconds > 0:
            self._cache[key_id] = (limits, time.monotonic() + self._cache_seconds)
        return limits

    async def set(self, key_id: str, limits: KeyLimits) -> KeyLimits:
        """Store a key's own limits (None: back to the default); other processes follow soon.

        Raises:
            NotFound: No key has this id.
        """
        statement = (
            sa.update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id)
            .values(
                requests_per_minute=limits.requests_per_minute,
                tokens_per_minute=limits.tokens_per_minute,
            )
        )
        async with self._db.session() as session, session.begin():
            updated = await session.execute(statement)
        if not updated.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no key {key_id!r}", field="key_id")
        self._cache.pop(key_id, None)
        return limits


class LimitPolicy:
    """Resolves the scopes and limits a caller is held to, from settings and stored limits."""

    def __init__(self, settings: LimitSettings, keys: KeyLimitStore) -> None:
        self._settings = settings
        self._keys = keys

    @property
    def keys(self) -> KeyLimitStore:
        """The store of the keys' own limits."""
        return self._keys

    async def scopes(self, caller: Principal) -> list[ScopeLimits]:
        """Return the limited scopes of a call: the key's first, then its tenant's."""
        scopes = [await self.key_scope(caller.key_id), self.tenant_scope(caller.tenant)]
        return [scope for scope in scopes if scope.limited]

    async def key_scope(self, key_id: str) -> ScopeLimits:
        """Return the limits of one key: its own where set, else the settings' defaults."""
        settings = self._settings
        try:
            own = await self._keys.get(key_id) if key_id else KeyLimits()
        except NotFound:  # a key deleted meanwhile: the defaults
            own = KeyLimits()
        return ScopeLimits(
            scope=f"key:{key_id}",
            requests_per_minute=_limit(own.requests_per_minute, settings.key_requests_per_minute),
            tokens_per_minute=_limit(own.tokens_per_minute, settings.key_tokens_per_minute),
        )

    def tenant_scope(self, tenant: str) -> ScopeLimits:
        """Return the limits of one tenant: its own in ``GENAI_LIMITS__TENANTS``, else defaults."""
        settings = self._settings
        own = settings.tenants.get(tenant)
        return ScopeLimits(
            scope=f"tenant:{tenant}",
            requests_per_minute=_limit(
                own.requests_per_minute if own else None, settings.tenant_requests_per_minute
            ),
            tokens_per_minute=_limit(
                own.tokens_per_minute if own else None, settings.tenant_tokens_per_minute
            ),
        )


def _limit(own: int | None, default: int) -> int | None:
    value = default if own is None else own
    return value or None
