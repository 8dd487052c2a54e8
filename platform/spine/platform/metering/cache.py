"""The exact-match response cache for model calls: Redis when configured, in-process otherwise.

A :class:`CacheKey` is the SHA-256 of the canonical JSON (sorted keys, no whitespace) of the
tenant, the resolved model, every generation parameter passed and the messages, so a changed
parameter misses and one tenant never reads another's entry. Parameters whose value is None
count as not passed (providers treat them alike), and ``timeout`` is left out: it does not
change the answer.

Both caches hold the answer as JSON of the :class:`~spine.platform.models.Completion` fields, so a
hit is a fresh object the caller may change, flagged ``cache_hit=True``. The caller decides
what is worth storing (only successful, complete answers); :meth:`ResponseCache.put` still
refuses an answer that is itself a hit or is flagged ``partial``.

A cache never fails a call: :class:`RedisResponseCache` turns every Redis error into a miss (or
an unstored answer) and a WARNING, then leaves Redis alone for a cooldown instead of paying a
connection timeout on every request.

In front of Redis, :class:`NearResponseCache` keeps each process's last-used answers for a few
seconds: a repeated call is answered without a round trip to Redis.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from spine.platform.errors import ConfigurationError
from spine.platform.models import Completion
from spine.platform.router.health import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Clock,
    MonotonicClock,
    Permit,
)
from spine.platform.settings import Settings
from spine.platform.write_behind import WriteBehind

__all__ = [
    "KEY_PREFIX",
    "CacheKey",
    "MemoryResponseCache",
    "NearResponseCache",
    "RedisResponseCache",
    "ResponseCache",
    "response_cache",
]

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "spine:cache:"
# Bump when the key's recipe changes, so old entries are never read under a new meaning.
_KEY_VERSION: Final = 1
# Parameters that change how a call is made, not what it answers.
_NOT_IN_KEY: Final = frozenset({"timeout"})
_DEFAULT_TTL: Final = 3600
# The near tier holds small answers only: its memory stays bounded by its entries.
_NEAR_MAX_ENTRIES: Final = 1000
_NEAR_MAX_BYTES: Final = 32 * 1024
# Answers waiting for their Redis write (of any size): past this, a put writes its own.
_MAX_WAITING_WRITES: Final = 256

_COMPLETION: Final = TypeAdapter(Completion)


@dataclass(slots=True, kw_only=True, frozen=True)
class CacheKey:
    """Where one model call's answer is cached; ``tenant`` and ``model`` are kept for logs."""

    tenant: str
    model: str
    digest: str

    @classmethod
    def of(
        cls,
        *,
        tenant: str,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
    ) -> CacheKey:
        """Derive the key of a call to ``model`` (the resolved name) for ``tenant``.

        Raises:
            TypeError: A message or parameter has no canonical JSON form; such a call is
                not cacheable.
        """
        generation = {
            name: value
            for name, value in params.items()
            if value is not None and name not in _NOT_IN_KEY
        }
        document = {
            "v": _KEY_VERSION,
            "tenant": tenant,
            "model": model,
            "params": generation,
            "messages": list(messages),
        }
        canonical = json.dumps(
            document,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_canonical,
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return cls(tenant=tenant, model=model, digest=digest)


def _canonical(value: Any) -> Any:
    # json.dumps calls this for what it cannot write itself. Anything without one unambiguous
    # JSON form is refused: a repr() could make two different requests share an answer.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, type) and issubclass(value, BaseModel):
        # LiteLLM takes a pydantic class as response_format; its schema is what matters.
        return {"json_schema": value.model_json_schema()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"a {type(value).__name__} has no canonical JSON form; not cacheable")


class ResponseCache(Protocol):
    """Answers to earlier, identical model calls."""

    async def get(self, key: CacheKey) -> Completion | None:
        """Return the cached answer flagged ``cache_hit=True``, or None on a miss."""
        ...

    async def put(self, key: CacheKey, completion: Completion, ttl: int | None = None) -> bool:
        """Store an answer for ``ttl`` seconds (the cache's default when None).

        Returns whether it was stored; a hit or a partial answer never is.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _refusal(completion: Completion) -> str | None:
    if completion.cache_hit:
        # Storing a hit again would keep an answer alive past its TTL.
        return "it is a cache hit"
    # Streams may flag an answer cut short; no such flag exists on Completion yet.
    if getattr(completion, "partial", False):
        return "it is partial"
    return None


def _storable(key: CacheKey, completion: Completion) -> bytes | None:
    """Encode an answer worth storing; None (logged) when it is refused or cannot be written."""
    why = _refusal(completion)
    if why is not None:
        logger.debug("answer of %s not cached: %s", key.model, why)
        return None
    return _encode(completion)


def _encode(completion: Completion) -> bytes | None:
    try:
        return _COMPLETION.dump_json(completion, exclude={"cache_hit", "cost"})
    except PydanticSerializationError as exc:
        logger.warning("answer of %s not cached: %s", completion.model, exc)
        return None


def _decode(data: bytes | str, key: CacheKey) -> Completion | None:
    try:
        completion = _COMPLETION.validate_json(data)
    except ValidationError:
        # Written by another version of Completion: treat as a miss; the next put replaces it.
        logger.warning("unreadable cache entry for %s ignored", key.model)
        return None
    completion.cache_hit = True
    return completion


def _checked_ttl(ttl: int) -> int:
    if ttl < 1:
        raise ValueError(f"ttl must be at least 1 second, got {ttl}")
    return ttl


class MemoryResponseCache:
    """An in-process cache: a least-recently-used map of answers, each with an expiry time.

    For Tier 1 without Redis; each process has its own. ``cachetools`` is not a dependency, and
    an ``OrderedDict`` gives the LRU order in a few lines.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl: int = _DEFAULT_TTL,
        clock: Clock | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._ttl = _checked_ttl(ttl)
        self._clock = clock or MonotonicClock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: CacheKey) -> Completion | None:
        """Return the cached answer flagged ``cache_hit=True``, or None on a miss."""
        entry = self._entries.get(key.digest)
        if entry is None:
            return None
        expires_at, data = entry
        if self._clock.now() >= expires_at:
            del self._entries[key.digest]
            return None
        self._entries.move_to_end(key.digest)
        return _decode(data, key)

    async def put(self, key: CacheKey, completion: Completion, ttl: int | None = None) -> bool:
        """Store an answer for ``ttl`` seconds, evicting the least recently used past the bound."""
        ttl = self._ttl if ttl is None else _checked_ttl(ttl)
        data = _storable(key, completion)
        if data is None:
            return False
        self.keep(key, data, ttl)
        return True

    def keep(self, key: CacheKey, data: bytes, seconds: float) -> None:
        """Hold an encoded answer for ``seconds``, evicting the least recently used past the bound."""
        self._entries[key.digest] = (self._clock.now() + seconds, data)
        self._entries.move_to_end(key.digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        """Drop every entry."""
        self._entries.clear()


class RedisResponseCache:
    """A cache in Redis shared by every process: ``SET spine:cache:<sha256> <json> EX <ttl>``.

    Redis errors never reach the caller: a failed ``get`` is a miss, a failed ``put`` stores
    nothing, each with a WARNING. After a failure Redis is left alone for ``cooldown`` seconds
    (then one call probes it), so a Redis that is down costs nothing per request.
    """

    def __init__(
        self,
        client: Redis,
        *,
        ttl: int = _DEFAULT_TTL,
        prefix: str = KEY_PREFIX,
        cooldown: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._ttl = _checked_ttl(ttl)
        self._prefix = prefix
        self._breaker = CircuitBreaker(
            policy=BreakerPolicy(failure_threshold=1, cooldown=cooldown),
            clock=clock or MonotonicClock(),
        )

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5, **options: Any) -> RedisResponseCache:
        """Connect lazily to the Redis at ``url``; ``timeout`` bounds connects and commands.

        ``options`` go to the constructor (``ttl``, ``prefix``, ``cooldown``, ``clock``).
        """
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # redis-py retries 10 times with backoff by default; a cache should rather miss.
            # One immediate retry covers a pooled connection that went stale.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, **options)

    def redis_key(self, key: CacheKey) -> str:
        """Return the Redis key an answer is stored under."""
        return self._prefix + key.digest

    @property
    def ttl(self) -> int:
        """How long an answer is stored when :meth:`put` is given no ``ttl``."""
        return self._ttl

    async def get(self, key: CacheKey) -> Completion | None:
        """Return the cached answer flagged ``cache_hit=True``, or None on a miss or error."""
        data = await self.read(key)
        return None if data is None else _decode(data, key)

    async def read(self, key: CacheKey) -> bytes | None:
        """Return the stored answer as written, or None on a miss or error."""
        permit = self._breaker.acquire()
        if permit is None:
            return None
        try:
            data = await self._client.get(self.redis_key(key))
        except (RedisError, OSError) as exc:
            self._failed(permit, "read", exc)
            return None
        except BaseException:
            self._breaker.abandoned(permit)
            raise
        self._breaker.succeeded(permit)
        logger.debug("cache %s for %s", "miss" if data is None else "hit", key.model)
        # Bytes: the client is not told to decode responses.
        return data.encode() if isinstance(data, str) else data

    async def put(self, key: CacheKey, completion: Completion, ttl: int | None = None) -> bool:
        """Store an answer for ``ttl`` seconds; False when refused or Redis failed."""
        ttl = self._ttl if ttl is None else _checked_ttl(ttl)
        data = _storable(key, completion)
        return data is not None and await self.write_many([(key, data, ttl)])

    async def write_many(self, entries: Sequence[tuple[CacheKey, bytes, int]]) -> bool:
        """Store encoded answers, each for its ``ttl`` seconds, in one round trip; False when
        Redis failed."""
        permit = self._breaker.acquire()
        if permit is None:
            return False
        try:
            if len(entries) == 1:
                key, data, ttl = entries[0]
                await self._client.set(self.redis_key(key), data, ex=ttl)
            else:
                pipe = self._client.pipeline(transaction=False)
                for key, data, ttl in entries:
                    pipe.set(self.redis_key(key), data, ex=ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(permit, "write", exc)
            return False
        except BaseException:
            self._breaker.abandoned(permit)
            raise
        self._breaker.succeeded(permit)
        return True

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

    def _failed(self, permit: Permit, action: str, exc: BaseException) -> None:
        was_open = self._breaker.state is BreakerState.OPEN
        self._breaker.failed(permit)
        # One warning per outage: calls already under way when Redis went fail quietly.
        level = logging.DEBUG if was_open else logging.WARNING
        logger.log(
            level,
            "response cache: Redis %s failed (%s: %s); serving without the cache for %.0f s",
            action,
            type(exc).__name__,
            exc,
            self._breaker.policy.cooldown,
        )


class NearResponseCache:
    """Redis behind a small in-process tier holding this process's last-used answers.

    A repeated call is answered from the process, without a round trip to Redis (~0.1 ms of
    CPU and as much waiting per hit). An entry never changes once written (its key is the whole
    request), so a copy is as good as Redis's while it lives; a copy lives ``near_seconds`` at
    most, and never longer than the TTL it was stored with, so an answer may be served up to
    ``near_seconds`` after it expired in Redis, no longer. Only answers up to 32 KiB are copied,
    1,000 at most (least recently used go first).

    A new answer is copied here at once and written to Redis behind the call (the writes of
    20 ms in one pipeline), so the caller does not wait for Redis; another process asking in
    those milliseconds misses. Past 256 waiting writes, :meth:`put` writes its own.
    """

    def __init__(
        self,
        far: RedisResponseCache,
        *,
        near_seconds: float,
        max_entries: int = _NEAR_MAX_ENTRIES,
        clock: Clock | None = None,
    ) -> None:
        if near_seconds <= 0:
            raise ValueError(f"near_seconds must be above 0, got {near_seconds}")
        self.far = far
        self._near = MemoryResponseCache(max_entries=max_entries, clock=clock)
        self._near_seconds = near_seconds
        self._writes: WriteBehind[tuple[CacheKey, bytes, int]] = WriteBehind(
            self._write_batch, what="cached answers", max_queued=_MAX_WAITING_WRITES
        )

    def __len__(self) -> int:
        return len(self._near)

    async def get(self, key: CacheKey) -> Completion | None:
        """Return the cached answer flagged ``cache_hit=True``, or None on a miss or error."""
        hit = await self._near.get(key)
        if hit is not None:
            return hit
        data = await self.far.read(key)
        if data is None:
            return None
        completion = _decode(data, key)
        if completion is not None:
            self._copy(key, data, self._near_seconds)
        return completion

    async def put(self, key: CacheKey, completion: Completion, ttl: int | None = None) -> bool:
        """Keep a copy of an answer here and write it to Redis behind the call, for ``ttl``
        seconds; False when it is refused (a failed Redis write is logged, not returned)."""
        ttl = self.far.ttl if ttl is None else _checked_ttl(ttl)
        data = _storable(key, completion)
        if data is None:
            return False
        self._copy(key, data, min(ttl, self._near_seconds))
        await self._writes.submit((key, data, ttl))
        return True

    async def flush(self) -> None:
        """Write to Redis what is waiting to be written."""
        await self._writes.flush()

    async def close(self) -> None:
        """Write what waits, drop the copies and close Redis's connections."""
        await self._writes.close()
        await self._near.close()
        await self.far.close()

    async def _write_batch(self, entries: list[tuple[CacheKey, bytes, int]]) -> None:
        # Never raises: a failed write is a WARNING (once per outage) and is not retried;
        # an answer missing from the cache costs one model call.
        await self.far.write_many(entries)

    def _copy(self, key: CacheKey, data: bytes, seconds: float) -> None:
        if len(data) <= _NEAR_MAX_BYTES:
            self._near.keep(key, data, seconds)


def response_cache(settings: Settings, *, clock: Clock | None = None) -> ResponseCache | None:
    """Build the configured cache: Redis (with its near tier unless ``near_seconds`` is 0)
    when ``GENAI_REDIS_URL`` is set, else in-process.

    Returns None when ``GENAI_CACHE__ENABLED`` is false.
    """
    config = settings.cache
    if not config.enabled:
        return None
    if settings.redis_url is not None:
        try:
            far = RedisResponseCache.from_url(
                settings.redis_url, ttl=config.ttl_seconds, prefix=config.prefix, clock=clock
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"GENAI_REDIS_URL is not a Redis URL: {exc}", field="GENAI_REDIS_URL"
            ) from None
        if config.near_seconds == 0:
            return far
        return NearResponseCache(far, near_seconds=config.near_seconds, clock=clock)
    return MemoryResponseCache(max_entries=config.max_entries, ttl=config.ttl_seconds, clock=clock)
