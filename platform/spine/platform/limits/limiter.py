"""Requests and tokens per minute, counted in Redis so every API process sees the same counts.

The counting is the ``limits`` library's (async Redis storage through redis-py, its Lua scripts):

- **requests**: a moving window (the last 60 s, exactly). :meth:`RateLimiter.admit` adds the
  call to each scope's window atomically, or refuses it without adding it, so N processes
  together admit exactly the limit. A key is checked before its tenant; a call refused by the
  tenant's window has already taken its place in the key's.
- **tokens**: counted *after* the call, from the usage the model reported, in a fixed window of
  one minute that opens with its first count. :meth:`RateLimiter.admit` refuses a call once the
  window is used up (checked before any request is counted, so such a call takes no request);
  :meth:`RateLimiter.settle` adds what a call used. No estimate is made
  before the call, so nothing is reserved and nothing needs correcting; the price is that calls
  admitted together may run over the limit by what they use, and the next ones wait for the
  window to reset (as LiteLLM's proxy counts TPM).

Refusals raise :class:`~spine.platform.errors.RateLimited` with ``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers (:mod:`.headers`); admissions carry the same headers for the answer.

Without ``GENAI_REDIS_URL`` the windows live in the process (each API process counts alone). If
Redis fails or is slow (``GENAI_LIMITS__REDIS_TIMEOUT``), calls are **not refused** for it: the
limits are skipped (fail open), with a WARNING once per outage and the
``spine_rate_limit_unenforced_total`` counter, and Redis is left alone for a cooldown so a dead
server costs no timeout per call. Rate limits keep a shared quota fair; refusing every call
because the counter is down would turn a Redis outage into a platform outage, while budgets,
the limit on money, are kept in the database and still hold.

The moving window stamps entries with each process's clock: hosts must keep time (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from spine.platform.errors import ConfigurationError, RateLimited
from spine.platform.limits.headers import Measure, Window, go_duration, rate_headers, retry_after
from spine.platform.limits.policy import ScopeLimits
from spine.platform.settings import LimitSettings
from spine.platform.telemetry.metrics import REGISTRY

__all__ = ["Admission", "RateLimiter"]

logger = logging.getLogger(__name__)

_STORE_ERRORS = (StorageError, RedisError, OSError, TimeoutError)
_COOLDOWN = 5.0

_REFUSED = Counter(
    "spine_rate_limited_total",
    "Calls refused with 429 by a rate limit, by what ran out.",
    ["measure"],
    registry=REGISTRY,
)
_UNENFORCED = Counter(
    "spine_rate_limit_unenforced_total",
    "Calls let through unchecked because the rate-limit store (Redis) failed or was resting.",
    registry=REGISTRY,
)


@dataclass(slots=True, kw_only=True)
class Admission:
    """A call let through: the scopes it counts against and where their windows stand.

    ``enforced`` is False when nothing limits the caller or the store failed (fail open).
    """

    scopes: list[ScopeLimits] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    enforced: bool = False

    def headers(self) -> dict[str, str]:
        """Return the ``x-ratelimit-*`` headers for the answer (none when unlimited)."""
        return rate_headers(self.windows)


class RateLimiter:
    """Admits calls within their scopes' windows and counts the tokens they used."""

    def __init__(
        self,
        storage: Storage,
        *,
        shared: bool,
        cooldown: float = _COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], object] | None = None,
    ) -> None:
        self._storage = storage
        self._requests = MovingWindowRateLimiter(storage)
        self._tokens = FixedWindowRateLimiter(storage)
        self._cooldown = cooldown
        self._clock = clock
        self._resting_until = 0.0
        self._close = close
        self.shared = shared
        """Whether the counts are shared by every process (Redis) or this process's own."""

    @classmethod
    def build(cls, settings: LimitSettings, *, redis_url: str | None) -> RateLimiter:
        """Count in the Redis at ``redis_url``, or in this process when it is None."""
        if redis_url is None:
            return cls(MemoryStorage(), shared=False)
        try:
            pool = BlockingConnectionPool.from_url(
                redis_url,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
                timeout=settings.redis_timeout,  # waiting for a pooled connection
                max_connections=64,
                # A limit should rather be skipped than make the call wait; one immediate
                # retry covers a pooled connection that went stale.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"GENAI_REDIS_URL is not a Redis URL: {exc}", field="GENAI_REDIS_URL"
            ) from exc
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=settings.prefix,
            wrap_exceptions=True,
            connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py
        )
        return cls(storage, shared=True, close=pool.aclose)

    async def admit(self, scopes: Sequence[ScopeLimits]) -> Admission:
        """Count one call against each scope's request window; refuse it if any is full.

        Raises:
            RateLimited: A scope's requests or tokens for this minute are used up.
        """
        scopes = [scope for scope in scopes if scope.limited]
        if not scopes:
            return Admission()
        if self._resting():
            return Admission(scopes=scopes)
        try:
            # Token windows first, all at once: reading them changes nothing, so a call refused
            # for tokens takes no place in a request window.
            windows = list(
                await asyncio.gather(
                    *(self._token_window(s) for s in scopes if s.tokens_per_minute is not None)
                )
            )
            for window in windows:
                if window.remaining <= 0:
                    raise _refusal(window, windows)
            for scope in scopes:
                if scope.requests_per_minute is not None:
                    item = _item("requests", scope.requests_per_minute)
                    allowed = await self._requests.hit(item, scope.scope)
                    stats = await self._requests.get_window_stats(item, scope.scope)
                    window = _window("requests", scope.scope, item, stats)
                    if not allowed:
                        raise _refusal(window, windows)
                    windows.append(window)
        except _STORE_ERRORS as exc:
            self._failed("admit", exc)
            return Admission(scopes=scopes)
        return Admission(scopes=scopes, windows=windows, enforced=True)

    async def settle(self, admission: Admission, tokens: int) -> None:
        """Count the tokens an admitted call used against each scope's token window."""
        limited = [s for s in admission.scopes if s.tokens_per_minute is not None]
        if not admission.enforced or tokens <= 0 or not limited or self._resting():
            return
        try:
            for scope in limited:
                assert scope.tokens_per_minute is not None
                await self._tokens.hit(
                    _item("tokens", scope.tokens_per_minute), scope.scope, cost=tokens
                )
                fresh = await self._token_window(scope)
                admission.windows = [
                    fresh if (w.measure, w.scope) == ("tokens", scope.scope) else w
                    for w in admission.windows
                ]
        except _STORE_ERRORS as exc:
            self._failed("settle", exc)

    async def _token_window(self, scope: ScopeLimits) -> Window:
        assert scope.tokens_per_minute is not None
        item = _item("tokens", scope.tokens_per_minute)
        stats = await self._tokens.get_window_stats(item, scope.scope)
        return _window("tokens", scope.scope, item, stats)

    async def close(self) -> None:
        """Close the connections to Redis."""
        if self._close is not None:
            with contextlib.suppress(Exception):
                closing = self._close()
                if hasattr(closing, "__await__"):
                    await closing

    def _resting(self) -> bool:
        if self._clock() < self._resting_until:
            _UNENFORCED.inc()
            return True
        return False

    def _failed(self, what: str, exc: BaseException) -> None:
        _UNENFORCED.inc()
        if self._clock() >= self._resting_until:
            # One warning per outage: calls under way when Redis went fail quietly.
            logger.warning(
                "rate limits: Redis %s failed (%s: %s); calls go unlimited for %.0f s",
                what,
                type(exc).__name__,
                exc,
                self._cooldown,
            )
        self._resting_until = self._clock() + self._cooldown


def _item(measure: Measure, per_minute: int) -> RateLimitItem:
    return RateLimitItemPerMinute(per_minute, namespace=measure)


def _window(measure: Measure, scope: str, item: RateLimitItem, stats: WindowStats) -> Window:
    remaining = max(int(stats.remaining), 0)
    # An untouched window has nothing to wait for.
    reset_in = 0.0 if remaining >= item.amount else max(stats.reset_time - time.time(), 0.0)
    return Window(
        measure=measure, scope=scope, limit=item.amount, remaining=remaining, reset_in=reset_in
    )


def _refusal(window: Window, admitted: list[Window]) -> RateLimited:
    _REFUSED.labels(window.measure).inc()
    wait = max(window.reset_in, 0.001)
    headers = rate_headers([*admitted, window])
    headers["Retry-After"] = retry_after(wait)
    return RateLimited(
        f"rate limit reached for {window.scope} on {window.measure} per minute: limit "
        f"{window.limit}; try again in {go_duration(wait)}",
        headers=headers,
        scope=window.scope,
        limit_type=window.measure,
        limit=window.limit,
        retry_after=int(headers["Retry-After"]),
    )
