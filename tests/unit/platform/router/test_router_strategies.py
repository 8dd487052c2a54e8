"""Each routing strategy orders candidates as the specification says, deterministically."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest

from spine.platform.errors import BadRequest
from spine.platform.learning import Observation, RoutingWeights
from spine.platform.router import (
    STRATEGIES,
    CallKind,
    ModelSpec,
    Requirements,
    RoutingContext,
    cost_optimized,
    local_first,
    order_candidates,
    quality,
    speed,
)


class Health:
    """A health view scripted per test."""

    def __init__(self, down: Iterable[str] = (), latency: dict[str, float] | None = None) -> None:
        self.down = set(down)
        self.latency = latency or {}

    def available(self, model: str, kind: CallKind = "chat") -> bool:
        return model not in self.down

    def latency_ms(self, model: str) -> float | None:
        return self.latency.get(model)


def spec(name: str, provider: str = "openai", **fields: Any) -> ModelSpec:
    if provider == "ollama":
        fields.setdefault("tags", {"local"})
        fields.setdefault("input_price", 0)
        fields.setdefault("output_price", 0)
    return ModelSpec(name=name, provider=provider, model=name, **fields)


LLAMA = spec("llama", "ollama", quality=0.5)
QWEN = spec("qwen", "ollama", quality=0.6)
MINI = spec("mini", "openai", quality=0.7, input_price="0.00000015", output_price="0.0000006")
GPT4 = spec("gpt4", "openai", quality=0.9, input_price="0.0000025", output_price="0.00001")
CLAUDE = spec("claude", "anthropic", quality=0.9, input_price="0.000003", output_price="0.000015")
MYSTERY = spec("mystery", "groq", quality=0.95)  # price unknown
ALL = [GPT4, MYSTERY, LLAMA, CLAUDE, MINI, QWEN]


def names(specs: list[ModelSpec]) -> list[str]:
    return [s.name for s in specs]


def ctx(**fields: Any) -> RoutingContext:
    fields.setdefault("health", Health())
    return RoutingContext(**fields)


def test_local_first_puts_local_models_best_first_then_hosted_by_preference() -> None:
    order = local_first(ALL, ctx(preference=["anthropic", "openai"]))
    assert names(order) == ["qwen", "llama", "claude", "gpt4", "mini", "mystery"]


def test_local_first_keeps_a_toy_model_for_last() -> None:
    toy = spec(
        "smollm2", "local", quality=0.1, tags={"local", "toy"}, input_price=0, output_price=0
    )
    order = local_first([toy, *ALL], ctx(preference=["local", "openai"]))
    assert names(order)[-1] == "smollm2"
    assert names(order)[0] == "qwen"
    assert names(local_first([toy], ctx())) == ["smollm2"]


def test_a_configured_default_model_comes_before_a_discovered_twin() -> None:
    twin = spec("alpha", "ollama", quality=0.5)
    order = local_first([twin, LLAMA], ctx(defaults=frozenset({"llama"})))
    assert names(order) == ["llama", "alpha"]


def test_local_first_moves_an_unhealthy_local_model_after_the_cloud() -> None:
    order = local_first(ALL, ctx(health=Health(down={"qwen"}), preference=["openai"]))
    assert names(order) == ["llama", "gpt4", "mini", "mystery", "claude", "qwen"]
    order = local_first(ALL, ctx(health=Health(down={"qwen", "llama"}), preference=["openai"]))
    assert names(order)[:2] == ["gpt4", "mini"]
    assert names(order)[-2:] == ["qwen", "llama"]


def test_cost_optimized_takes_the_cheapest_with_unknown_prices_last() -> None:
    req = Requirements(prompt_tokens=1000, max_tokens=500)
    order = cost_optimized(ALL, ctx(requirements=req))
    # Both local models cost 0: the better one first. mini < gpt4 < claude; mystery unknown.
    assert names(order) == ["qwen", "llama", "mini", "gpt4", "claude", "mystery"]


def test_cost_optimized_weighs_the_request_shape() -> None:
    cheap_in = spec("cheap-in", input_price="0.000001", output_price="0.00002")
    cheap_out = spec("cheap-out", input_price="0.00001", output_price="0.000002")
    long_prompt = Requirements(prompt_tokens=10_000, max_tokens=10)
    long_answer = Requirements(prompt_tokens=10, max_tokens=10_000)
    both = [cheap_in, cheap_out]
    assert names(cost_optimized(both, ctx(requirements=long_prompt)))[0] == "cheap-in"
    assert names(cost_optimized(both, ctx(requirements=long_answer)))[0] == "cheap-out"


def test_quality_takes_the_best_regardless_of_cost_and_breaks_ties_by_cost() -> None:
    order = quality(ALL, ctx(requirements=Requirements(prompt_tokens=100, max_tokens=100)))
    # gpt4 and claude tie at 0.9: gpt4 is cheaper.
    assert names(order) == ["mystery", "gpt4", "claude", "mini", "qwen", "llama"]


def test_speed_tries_unmeasured_models_first_then_the_lowest_moving_average() -> None:
    health = Health(latency={"gpt4": 300.0, "llama": 80.0, "mini": 120.0})
    order = speed(ALL, ctx(health=health, preference=["openai"]))
    # Never measured: tried first (by preference, then name), so a faster one is found.
    assert names(order)[:3] == ["claude", "mystery", "qwen"]
    assert names(order)[3:] == ["llama", "mini", "gpt4"]


def test_quality_uses_learned_estimates_where_there_are_enough() -> None:
    weights = RoutingWeights()
    features = weights.space.extract("a question")
    for _ in range(25):  # more than min_observations
        weights.observe(Observation(model="mini", features=features, quality=1.0))
        weights.observe(Observation(model="gpt4", features=features, quality=0.0))
    order = quality([GPT4, MINI], ctx(weights=weights))
    assert names(order) == ["mini", "gpt4"]  # configured: gpt4 0.9 above mini


def test_speed_skips_past_a_fast_but_unavailable_model() -> None:
    health = Health(down={"llama"}, latency={"gpt4": 300.0, "llama": 80.0})
    assert names(speed([LLAMA, GPT4], ctx(health=health))) == ["gpt4", "llama"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_is_deterministic_whatever_the_input_order(strategy: str) -> None:
    twins = [spec(f"twin-{c}", quality=0.5) for c in "dbca"]
    context = ctx()
    first = order_candidates(strategy, [*twins, *ALL], context)
    second = order_candidates(strategy, list(reversed([*twins, *ALL])), context)
    assert names(first) == names(second)
    assert [n for n in names(first) if n.startswith("twin")] == [
        "twin-a",
        "twin-b",
        "twin-c",
        "twin-d",
    ]


def test_an_unknown_strategy_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="unknown routing strategy 'fastest'") as caught:
        order_candidates("fastest", ALL, ctx())
    assert caught.value.field == "strategy"


def test_the_four_strategies_of_the_specification_exist() -> None:
    assert set(STRATEGIES) == {"local_first", "cost_optimized", "quality", "speed"}
    assert Decimal(0) == LLAMA.estimated_cost(Requirements(prompt_tokens=5, max_tokens=5))
