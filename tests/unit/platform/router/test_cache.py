"""The response cache's key and the in-process cache (TTL on an injected clock, LRU bound)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from spine.platform.errors import ConfigurationError
from spine.platform.metering.cache import (
    CacheKey,
    MemoryResponseCache,
    NearResponseCache,
    RedisResponseCache,
    response_cache,
)
from spine.platform.models import Attempt, Completion
from spine.platform.settings import load_settings

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello"},
]
PARAMS: dict[str, Any] = {
    "temperature": 0.2,
    "max_tokens": 64,
    "top_p": 0.9,
    "stop": ["\n\n"],
    "seed": 7,
    "tools": [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
}


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def key(
    *,
    tenant: str = "acme",
    model: str = "llama3.2",
    messages: list[dict[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
) -> CacheKey:
    return CacheKey.of(
        tenant=tenant,
        model=model,
        messages=MESSAGES if messages is None else messages,
        params=PARAMS if params is None else params,
    )


def answer(text: str = "hi there", **fields: Any) -> Completion:
    return Completion(
        text=text,
        model="llama3.2",
        provider="ollama",
        input_tokens=12,
        output_tokens=3,
        latency_ms=41.5,
        **fields,
    )


class TestCacheKey:
    def test_is_a_sha256_and_the_same_for_the_same_call(self) -> None:
        first, second = key(), key()
        assert first == second
        assert len(first.digest) == 64
        assert int(first.digest, 16) >= 0
        assert (first.tenant, first.model) == ("acme", "llama3.2")

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("temperature", 0.3),
            ("max_tokens", 65),
            ("top_p", 1.0),
            ("stop", ["\n"]),
            ("seed", 8),
            ("tools", []),
            ("tool_choice", "required"),
            ("response_format", {"type": "text"}),
            ("presence_penalty", 0.5),  # a parameter the first call did not pass at all
        ],
    )
    def test_a_changed_parameter_changes_it(self, name: str, value: Any) -> None:
        assert key(params={**PARAMS, name: value}) != key()

    def test_a_dropped_parameter_changes_it(self) -> None:
        params = {k: v for k, v in PARAMS.items() if k != "seed"}
        assert key(params=params) != key()

    def test_a_changed_message_changes_it(self) -> None:
        changed = [MESSAGES[0], {"role": "user", "content": "hello!"}]
        assert key(messages=changed) != key()
        assert key(messages=[*MESSAGES, {"role": "assistant", "content": "hi"}]) != key()
        assert key(messages=list(reversed(MESSAGES))) != key()

    def test_the_model_and_the_tenant_change_it(self) -> None:
        assert key(model="gpt-4o-mini") != key()
        assert key(tenant="globex").digest != key().digest

    def test_dict_order_does_not_change_it(self) -> None:
        reordered_params = dict(reversed(list(PARAMS.items())))
        reordered_params["tools"] = [
            {
                "function": {"parameters": {"properties": {}, "type": "object"}, "name": "lookup"},
                "type": "function",
            }
        ]
        reordered_messages = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
        assert key(params=reordered_params, messages=reordered_messages) == key()

    def test_none_counts_as_not_passed_and_timeout_is_left_out(self) -> None:
        assert key(params={**PARAMS, "logprobs": None, "timeout": 5}) == key()

    def test_fields_cannot_leak_across_parts(self) -> None:
        # Canonical JSON keeps parts apart where concatenated strings would not.
        assert key(tenant="a", model="bc") != key(tenant="ab", model="c")

    def test_pydantic_values_are_keyed_by_their_content(self) -> None:
        class Answer(BaseModel):
            city: str

        class Other(BaseModel):
            country: str

        as_class = key(params={"response_format": Answer})
        assert as_class == key(params={"response_format": Answer})
        assert as_class != key(params={"response_format": Other})
        assert key(params={"budget": Decimal("1.5")}) != key(params={"budget": Decimal("2")})

    def test_a_value_without_canonical_json_is_not_cacheable(self) -> None:
        with pytest.raises(TypeError, match="not cacheable"):
            key(params={"callback": object()})


class TestMemoryResponseCache:
    async def test_round_trip_marks_the_hit(self) -> None:
        cache = MemoryResponseCache()
        stored = answer(
            strategy="local_first",
            fallback_path=[Attempt(model="llama3.2", provider="ollama")],
            raw={"finish_reason": "stop"},
        )
        assert await cache.get(key()) is None
        assert await cache.put(key(), stored)
        hit = await cache.get(key())
        assert hit is not None
        assert hit.cache_hit is True
        assert hit.text == "hi there"
        assert (hit.input_tokens, hit.output_tokens) == (12, 3)
        assert hit.fallback_path == stored.fallback_path
        assert hit.raw == {"finish_reason": "stop"}
        assert stored.cache_hit is False

    async def test_a_hit_is_a_copy_the_caller_may_change(self) -> None:
        cache = MemoryResponseCache()
        await cache.put(key(), answer())
        first = await cache.get(key())
        assert first is not None
        first.text = "changed"
        second = await cache.get(key())
        assert second is not None and second.text == "hi there"

    async def test_other_keys_miss(self) -> None:
        cache = MemoryResponseCache()
        await cache.put(key(), answer())
        assert await cache.get(key(tenant="globex")) is None
        assert await cache.get(key(params={**PARAMS, "temperature": 1.0})) is None

    async def test_entries_expire_after_their_ttl(self) -> None:
        clock = FakeClock()
        cache = MemoryResponseCache(ttl=60, clock=clock)
        await cache.put(key(), answer())
        await cache.put(key(model="short"), answer(), ttl=5)
        clock.advance(4.9)
        assert await cache.get(key(model="short")) is not None
        clock.advance(0.1)
        assert await cache.get(key(model="short")) is None
        assert await cache.get(key()) is not None
        clock.advance(55)
        assert await cache.get(key()) is None
        assert len(cache) == 0

    async def test_a_put_renews_the_ttl(self) -> None:
        clock = FakeClock()
        cache = MemoryResponseCache(ttl=10, clock=clock)
        await cache.put(key(), answer("old"))
        clock.advance(8)
        await cache.put(key(), answer("new"))
        clock.advance(8)
        hit = await cache.get(key())
        assert hit is not None and hit.text == "new"

    async def test_the_least_recently_used_entry_goes_past_the_bound(self) -> None:
        cache = MemoryResponseCache(max_entries=2)
        first, second, third = key(model="a"), key(model="b"), key(model="c")
        await cache.put(first, answer("a"))
        await cache.put(second, answer("b"))
        assert await cache.get(first) is not None  # first is now the most recent
        await cache.put(third, answer("c"))
        assert len(cache) == 2
        assert await cache.get(second) is None
        assert await cache.get(first) is not None
        assert await cache.get(third) is not None

    async def test_a_hit_is_never_stored_again(self) -> None:
        cache = MemoryResponseCache()
        await cache.put(key(), answer())
        hit = await cache.get(key())
        assert hit is not None
        assert await cache.put(key(model="other"), hit) is False
        assert await cache.get(key(model="other")) is None

    async def test_a_partial_answer_is_refused(self) -> None:
        class PartialCompletion(Completion):
            partial: bool = True

        cache = MemoryResponseCache()
        partial = PartialCompletion(text="hal", model="llama3.2", provider="ollama")
        assert await cache.put(key(), partial) is False
        assert await cache.get(key()) is None

    async def test_an_answer_that_cannot_be_written_is_not_stored(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        cache = MemoryResponseCache()
        with caplog.at_level(logging.WARNING):
            assert await cache.put(key(), answer(raw={"response": object()})) is False
        assert await cache.get(key()) is None
        assert "not cached" in caplog.text

    async def test_bad_bounds_are_refused(self) -> None:
        with pytest.raises(ValueError, match="max_entries"):
            MemoryResponseCache(max_entries=0)
        with pytest.raises(ValueError, match="ttl"):
            await MemoryResponseCache().put(key(), answer(), ttl=0)


class TestResponseCacheFactory:
    async def test_memory_without_redis(self) -> None:
        settings = load_settings(_env_file=None, cache={"max_entries": 1, "ttl_seconds": 30})
        cache = response_cache(settings)
        assert isinstance(cache, MemoryResponseCache)
        await cache.put(key(model="a"), answer())
        await cache.put(key(model="b"), answer())
        assert len(cache) == 1

    async def test_redis_behind_a_near_tier_when_its_url_is_set(self) -> None:
        settings = load_settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")
        cache = response_cache(settings)
        assert isinstance(cache, NearResponseCache)
        assert isinstance(cache.far, RedisResponseCache)
        await cache.close()

    async def test_redis_alone_when_the_near_tier_is_off(self) -> None:
        settings = load_settings(
            _env_file=None, redis_url="redis://127.0.0.1:1/0", cache={"near_seconds": 0}
        )
        cache = response_cache(settings)
        assert isinstance(cache, RedisResponseCache)
        await cache.close()

    def test_none_when_disabled(self) -> None:
        settings = load_settings(_env_file=None, cache={"enabled": False})
        assert response_cache(settings) is None

    def test_a_bad_redis_url_names_the_setting(self) -> None:
        settings = load_settings(_env_file=None, redis_url="http://127.0.0.1:6379")
        with pytest.raises(ConfigurationError) as caught:
            response_cache(settings)
        assert caught.value.field == "GENAI_REDIS_URL"

    def test_settings_read_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GENAI_CACHE__TTL_SECONDS", "120")
        monkeypatch.setenv("GENAI_CACHE__ENABLED", "false")
        settings = load_settings(_env_file=None)
        assert settings.cache.ttl_seconds == 120
        assert settings.cache.enabled is False
        assert settings.cache.max_entries == 10_000
        assert settings.cache.near_seconds == 10.0

    @pytest.mark.parametrize("value", ["-1", "soon", "3601"])
    def test_a_bad_near_seconds_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("GENAI_CACHE__NEAR_SECONDS", value)
        with pytest.raises(ConfigurationError) as caught:
            load_settings(_env_file=None)
        assert caught.value.field == "GENAI_CACHE__NEAR_SECONDS"
        assert repr(value) in caught.value.message
