"""The Redis response cache against the real Redis of the session fixtures, and against none."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from spine.platform.metering.cache import (
    KEY_PREFIX,
    CacheKey,
    NearResponseCache,
    RedisResponseCache,
)
from spine.platform.models import Attempt, Completion
from support.ports import free_port

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "what is the capital of France?"}]
PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16, "seed": 1}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def key(tenant: str, **params: Any) -> CacheKey:
    return CacheKey.of(
        tenant=tenant, model="llama3.2", messages=MESSAGES, params={**PARAMS, **params}
    )


def answer(text: str = "Paris.") -> Completion:
    return Completion(
        text=text,
        model="llama3.2",
        provider="ollama",
        input_tokens=14,
        output_tokens=2,
        latency_ms=80.0,
        strategy="local_first",
        fallback_path=[
            Attempt(model="gpt-4o-mini", provider="openai", error="Timeout"),
            Attempt(model="llama3.2", provider="ollama"),
        ],
        finish_reason="stop",
    )


@pytest.fixture
async def redis(services: Any) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def cache(services: Any) -> AsyncIterator[RedisResponseCache]:
    cache = RedisResponseCache.from_url(services.redis_url, ttl=120)
    yield cache
    await cache.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_round_trip(cache: RedisResponseCache, redis: Redis) -> None:
    acme = tenant()
    assert await cache.get(key(acme)) is None
    assert await cache.put(key(acme), answer())
    hit = await cache.get(key(acme))
    assert hit is not None
    assert hit.cache_hit is True
    expected = answer()
    expected.cache_hit = True
    assert hit == expected
    stored = await redis.get(KEY_PREFIX + key(acme).digest)
    assert stored is not None
    assert json.loads(stored)["text"] == "Paris."
    assert "cache_hit" not in json.loads(stored)


async def test_a_changed_parameter_misses(cache: RedisResponseCache) -> None:
    acme = tenant()
    await cache.put(key(acme), answer())
    assert await cache.get(key(acme, temperature=0.7)) is None
    assert await cache.get(key(acme, max_tokens=17)) is None
    assert await cache.get(key(acme)) is not None


async def test_the_ttl_is_set_on_the_key(cache: RedisResponseCache, redis: Redis) -> None:
    acme = tenant()
    await cache.put(key(acme), answer())
    await cache.put(key(acme, seed=2), answer(), ttl=30)
    assert 110 < await redis.ttl(cache.redis_key(key(acme))) <= 120
    assert 20 < await redis.ttl(cache.redis_key(key(acme, seed=2))) <= 30


async def test_tenant_a_never_reads_tenant_b(cache: RedisResponseCache) -> None:
    a, b = tenant(), tenant()
    await cache.put(key(a), answer("for A"))
    assert await cache.get(key(b)) is None
    await cache.put(key(b), answer("for B"))
    hit_a, hit_b = await cache.get(key(a)), await cache.get(key(b))
    assert hit_a is not None and hit_a.text == "for A"
    assert hit_b is not None and hit_b.text == "for B"


async def test_a_hit_is_not_stored_again(cache: RedisResponseCache, redis: Redis) -> None:
    acme = tenant()
    await cache.put(key(acme), answer())
    hit = await cache.get(key(acme))
    assert hit is not None
    assert await cache.put(key(acme, seed=3), hit) is False
    assert await redis.exists(cache.redis_key(key(acme, seed=3))) == 0


async def test_an_unreadable_entry_is_a_miss(cache: RedisResponseCache, redis: Redis) -> None:
    acme = tenant()
    await redis.set(cache.redis_key(key(acme)), b'{"not": "a completion"}', ex=60)
    assert await cache.get(key(acme)) is None


async def test_redis_down_is_a_miss_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    cache = RedisResponseCache.from_url(
        f"redis://127.0.0.1:{free_port()}/0", cooldown=5.0, clock=clock
    )
    logger = "spine.platform.metering.cache"
    try:
        with caplog.at_level(logging.WARNING, logger=logger):
            assert await cache.get(key("acme")) is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "Redis read failed" in warnings[0].getMessage()

        # While it cools down, Redis is not asked again, and no warning floods the log.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=logger):
            assert await cache.put(key("acme"), answer()) is False
            assert await cache.get(key("acme")) is None
        assert caplog.records == []

        # After the cooldown one call probes it again.
        clock.t += 5.0
        with caplog.at_level(logging.WARNING, logger=logger):
            assert await cache.put(key("acme"), answer()) is False
        assert ["Redis write failed" in r.getMessage() for r in caplog.records] == [True]
    finally:
        await cache.close()


class CountingRedis(RedisResponseCache):
    """The real Redis cache, counting the reads and the writes (round trips) that reach it."""

    reads = 0
    writes = 0

    async def read(self, key: CacheKey) -> bytes | None:
        self.reads += 1
        return await super().read(key)

    async def write_many(self, entries: Sequence[tuple[CacheKey, bytes, int]]) -> bool:
        self.writes += 1
        return await super().write_many(entries)


@pytest.fixture
async def near(services: Any) -> AsyncIterator[tuple[NearResponseCache, CountingRedis, FakeClock]]:
    clock = FakeClock()
    far = CountingRedis(Redis.from_url(services.redis_url), ttl=120)
    cache = NearResponseCache(far, near_seconds=10, clock=clock)
    yield cache, far, clock
    await cache.close()


async def test_the_near_tier_answers_a_repeat_without_asking_redis(
    near: tuple[NearResponseCache, CountingRedis, FakeClock], redis: Redis
) -> None:
    cache, far, clock = near
    acme = tenant()
    assert await cache.put(key(acme), answer())
    await cache.flush()
    assert await redis.exists(far.redis_key(key(acme))) == 1  # stored in Redis too
    for _ in range(3):
        hit = await cache.get(key(acme))
        assert hit is not None and hit.cache_hit and hit.text == "Paris."
    assert far.reads == 0
    # A copy lives near_seconds; then Redis is asked again, and its answer copied again.
    clock.t += 10
    assert await cache.get(key(acme)) is not None
    assert await cache.get(key(acme)) is not None
    assert far.reads == 1


async def test_another_process_entry_is_read_from_redis_once_then_copied(
    near: tuple[NearResponseCache, CountingRedis, FakeClock], cache: RedisResponseCache
) -> None:
    mine, far, _ = near
    acme = tenant()
    assert await mine.get(key(acme)) is None  # a miss is not remembered
    assert await cache.put(key(acme), answer("from another process"))
    first, second = await mine.get(key(acme)), await mine.get(key(acme))
    assert first is not None and first.text == "from another process"
    assert second == first
    assert far.reads == 2
    assert len(mine) == 1


async def test_a_copy_never_outlives_a_shorter_ttl(
    near: tuple[NearResponseCache, CountingRedis, FakeClock],
) -> None:
    cache, far, clock = near
    acme = tenant()
    assert await cache.put(key(acme), answer(), ttl=3)
    await cache.flush()
    clock.t += 3
    assert await cache.get(key(acme)) is not None  # from Redis: its own TTL is real time
    assert far.reads == 1


async def test_answers_are_written_to_redis_behind_the_calls_in_few_round_trips(
    near: tuple[NearResponseCache, CountingRedis, FakeClock], cache: RedisResponseCache
) -> None:
    mine, far, _ = near
    acme = tenant()
    for n in range(50):
        assert await mine.put(key(acme, seed=n), answer(f"answer {n}"))
    assert far.writes == 0  # none waited for
    await mine.flush()
    assert 1 <= far.writes <= 2
    for n in range(50):  # another process reads them all from Redis
        hit = await cache.get(key(acme, seed=n))
        assert hit is not None and hit.text == f"answer {n}"


async def test_closing_writes_what_waits(services: Any, cache: RedisResponseCache) -> None:
    mine = NearResponseCache(RedisResponseCache.from_url(services.redis_url), near_seconds=10)
    acme = tenant()
    await mine.put(key(acme), answer("written at close"))
    await mine.close()
    hit = await cache.get(key(acme))
    assert hit is not None and hit.text == "written at close"


async def test_with_redis_down_the_copy_answers_and_the_failed_write_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    far = CountingRedis(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), cooldown=5.0)
    cache = NearResponseCache(far, near_seconds=10, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="spine.platform.metering.cache"):
            assert await cache.put(key("acme"), answer())
            hit = await cache.get(key("acme"))
            assert hit is not None and hit.text == "Paris."
            await cache.flush()
        assert ["Redis write failed" in r.getMessage() for r in caplog.records] == [True]
        clock.t += 10
        assert await cache.get(key("acme")) is None  # the copy expired; Redis is cooling down
    finally:
        await cache.close()


async def test_a_large_answer_is_not_copied(
    near: tuple[NearResponseCache, CountingRedis, FakeClock],
) -> None:
    cache, far, _ = near
    acme = tenant()
    assert await cache.put(key(acme), answer("x" * 40_000))
    await cache.flush()
    hit = await cache.get(key(acme))
    assert hit is not None and len(hit.text) == 40_000
    assert far.reads == 1
    assert len(cache) == 0
