"""The rate limits of one process: who is limited how (:class:`LimitPolicy`) and the counts
(:class:`RateLimiter`), behind the two calls the gateway makes per model call.

A gateway call takes these steps:

1. :meth:`RateLimits.admit` resolves the caller's scopes (its key's limits, then its tenant's),
   counts the request in each, and refuses (``RateLimited``, 429) when a scope's requests or
   tokens for the minute are used up; nothing is counted for a caller without limits;
2. the call runs;
3. :meth:`RateLimits.settle` counts the tokens the model reported (a cache hit used none);
4. the answer carries :meth:`~spine.platform.limits.Admission.headers`.
"""

from __future__ import annotations

from spine.platform.db import Database
from spine.platform.keys import Principal
from spine.platform.limits.limiter import Admission, RateLimiter
from spine.platform.limits.policy import KeyLimitStore, LimitPolicy
from spine.platform.settings import Settings

__all__ = ["RateLimits"]


class RateLimits:
    """Admits and settles model calls within their key's and tenant's limits."""

    def __init__(self, policy: LimitPolicy, limiter: RateLimiter) -> None:
        self.policy = policy
        self.limiter = limiter

    @classmethod
    def build(cls, settings: Settings, db: Database) -> RateLimits:
        """Build them from the settings: counts in ``GENAI_REDIS_URL``'s Redis when it is set."""
        keys = KeyLimitStore(db, cache_seconds=settings.api.key_cache_seconds)
        limiter = RateLimiter.build(settings.limits, redis_url=settings.redis_url)
        return cls(LimitPolicy(settings.limits, keys), limiter)

    @property
    def keys(self) -> KeyLimitStore:
        """The limits stored with each key."""
        return self.policy.keys

    async def admit(self, caller: Principal) -> Admission:
        """Count one call of ``caller``; raise ``RateLimited`` when a limit is reached."""
        return await self.limiter.admit(await self.policy.scopes(caller))

    async def settle(self, admission: Admission, tokens: int) -> None:
        """Count the tokens an admitted call used."""
        await self.limiter.settle(admission, tokens)

    async def close(self) -> None:
        """Close the connections to Redis."""
        await self.limiter.close()
