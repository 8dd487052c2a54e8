"""The rate limiter against the session's real Redis: shared windows, refusals, fail open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from spine.platform.errors import RateLimited
from spine.platform.limits import RateLimiter, ScopeLimits
from spine.platform.settings import LimitSettings
from spine.platform.telemetry.metrics import REGISTRY
from support.ports import free_port
from support.servers import BackingServices

pytestmark = pytest.mark.integration


def _settings() -> LimitSettings:
    # Tests share one Redis: each counts under its own prefix.
    return LimitSettings(prefix=f"spine:test-limits:{uuid.uuid4().hex}", redis_timeout=2.0)


@pytest.fixture
async def limiters(services: BackingServices) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters on one Redis and one prefix: two API processes, as far as Redis can tell."""
    settings = _settings()
    first = RateLimiter.build(settings, redis_url=services.redis_url)
    second = RateLimiter.build(settings, redis_url=services.redis_url)
    yield first, second
    await first.close()
    await second.close()


def key(key_id: str, *, rpm: int | None = None, tpm: int | None = None) -> ScopeLimits:
    return ScopeLimits(scope=f"key:{key_id}", requests_per_minute=rpm, tokens_per_minute=tpm)


def tenant(name: str, *, rpm: int | None = None, tpm: int | None = None) -> ScopeLimits:
    return ScopeLimits(scope=f"tenant:{name}", requests_per_minute=rpm, tokens_per_minute=tpm)


async def test_two_limiters_on_one_redis_admit_exactly_the_limit_together(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    admitted, refused = 0, []
    for n in range(9):
        try:
            await limiters[n % 2].admit([key("k1", rpm=5)])
            admitted += 1
        except RateLimited as exc:
            refused.append(exc)
    assert admitted == 5
    assert len(refused) == 4
    first = refused[0]
    assert first.details["scope"] == "key:k1"
    assert first.details["limit_type"] == "requests"
    assert 1 <= int(first.headers["Retry-After"]) <= 60
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert limiters[0].shared


async def test_concurrent_calls_never_get_past_the_limit(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    async def one(n: int) -> bool:
        try:
            await limiters[n % 2].admit([key("k2", rpm=7)])
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one(n) for n in range(20)))
    assert sum(results) == 7


async def test_an_admission_counts_down_in_its_headers(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first = await limiters[0].admit([key("k3", rpm=3)])
    second = await limiters[1].admit([key("k3", rpm=3)])
    assert first.enforced
    assert first.headers()["x-ratelimit-remaining-requests"] == "2"
    assert second.headers()["x-ratelimit-remaining-requests"] == "1"
    assert second.headers()["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in second.headers()


async def test_a_tenant_limit_holds_across_its_keys(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    await limiters[0].admit([key("a1", rpm=10), tenant("t1", rpm=2)])
    await limiters[1].admit([key("a2", rpm=10), tenant("t1", rpm=2)])
    with pytest.raises(RateLimited) as refused:
        await limiters[0].admit([key("a3", rpm=10), tenant("t1", rpm=2)])
    assert refused.value.details["scope"] == "tenant:t1"
    # The headers describe the scope with the least left: the tenant's.
    assert refused.value.headers["x-ratelimit-limit-requests"] == "2"


async def test_tokens_are_counted_after_the_call_and_refuse_the_next(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    scopes = [key("k4", tpm=100)]
    admission = await limiters[0].admit(scopes)
    assert admission.headers()["x-ratelimit-remaining-tokens"] == "100"
    assert admission.headers()["x-ratelimit-reset-tokens"] == "0s"
    await limiters[0].settle(admission, 60)
    assert admission.headers()["x-ratelimit-remaining-tokens"] == "40"
    running = await limiters[1].admit(scopes)  # 40 left: admitted, and it uses 70
    await limiters[1].settle(running, 70)
    with pytest.raises(RateLimited) as refused:
        await limiters[0].admit(scopes)
    assert refused.value.details["limit_type"] == "tokens"
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60


async def test_a_caller_without_limits_is_not_counted(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    admission = await limiters[0].admit([key("k5"), tenant("t5")])
    assert not admission.enforced
    assert admission.headers() == {}


async def test_without_redis_each_process_counts_alone() -> None:
    limiter = RateLimiter.build(_settings(), redis_url=None)
    assert not limiter.shared
    await limiter.admit([key("k6", rpm=1)])
    with pytest.raises(RateLimited):
        await limiter.admit([key("k6", rpm=1)])


async def test_a_redis_that_is_down_lets_calls_through_and_counts_them() -> None:
    def unenforced() -> float:
        return REGISTRY.get_sample_value("spine_rate_limit_unenforced_total") or 0.0

    settings = _settings().model_copy(update={"redis_timeout": 0.5})
    limiter = RateLimiter.build(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    before = unenforced()
    try:
        for _ in range(3):  # the first fails on Redis, the next skip it while it rests
            admission = await limiter.admit([key("k7", rpm=1)])
            assert not admission.enforced
            assert admission.headers() == {}
            await limiter.settle(admission, 10)
    finally:
        await limiter.close()
    assert unenforced() == before + 3


async def test_a_call_refused_for_tokens_takes_no_request(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    scopes = [key("k8", rpm=2, tpm=10)]
    admission = await limiters[0].admit(scopes)
    await limiters[0].settle(admission, 25)
    with pytest.raises(RateLimited) as refused:
        await limiters[1].admit(scopes)
    assert refused.value.details["limit_type"] == "tokens"
    # One request of two was taken (the first call's): one is left.
    left = await limiters[1].admit([key("k8", rpm=2)])
    assert left.headers()["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited):
        await limiters[0].admit([key("k8", rpm=2)])
