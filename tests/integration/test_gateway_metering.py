"""The gateway's metering, driven by the official ``openai`` client: cache, budgets and usage.

The priced model ``cheap`` is the fake model server's OpenAI side, with tiny prices from a
models file, so every answer's cost is its tokens times those prices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from spine.platform.metering.budgets import GLOBAL
from spine.platform.router import Requirements
from support.fake_models import FakeModelServer, Rule, ToolCall
from support.live_platform import RunningPlatform, running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

CHEAP, LOCAL = "cheap", "llama3.2"
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.001"), Decimal("0.002")
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def cost_of(usage: CompletionUsage | None) -> Decimal:
    assert usage is not None
    return INPUT_PRICE * usage.prompt_tokens + OUTPUT_PRICE * usage.completion_tokens


@contextlib.asynccontextmanager
async def gateway(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path, **overrides: Any
) -> AsyncIterator[RunningPlatform]:
    """A platform whose models file prices ``cheap`` (the fake server's OpenAI side)."""
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        f"  - name: {CHEAP}\n"
        "    provider: openai-compatible\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: {models.openai_url}\n"
        f'    input_price: "{INPUT_PRICE}"\n'
        f'    output_price: "{OUTPUT_PRICE}"\n'
        "    context_window: 8192\n"
        "    quality: 0.9\n"
    )
    async with running_platform(
        services, pg_url, models, models_file=models_file, **overrides
    ) as running:
        yield running


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> AsyncIterator[RunningPlatform]:
    # A budget far from spent: every call still reserves and settles.
    async with gateway(services, pg_url, models, tmp_path, budget_daily="1000") as running:
        yield running


def client_of(spine: RunningPlatform, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=key or spine.key, max_retries=0)


async def test_a_repeated_request_is_a_free_cache_hit(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    async with client_of(spine) as client:
        first = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("cache me"), temperature=0
        )
        answer = first.parse()
        assert first.headers["x-spine-cache"] == "miss"
        assert answer.usage is not None
        assert Decimal(first.headers["x-spine-cost"]) == cost_of(answer.usage) > 0
        assert models.count() == 1

        again = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("cache me"), temperature=0
        )
        assert again.headers["x-spine-cache"] == "hit"
        assert Decimal(again.headers["x-spine-cost"]) == 0
        assert again.headers["x-spine-model"] == CHEAP
        assert again.parse().choices[0].message.content == answer.choices[0].message.content
        assert models.count() == 1  # no model call for the hit


async def test_a_changed_parameter_misses_and_the_bypass_headers_skip_the_cache(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    async with client_of(spine) as client:
        await client.chat.completions.create(model=CHEAP, messages=ask("vary"), temperature=0)
        changed = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("vary"), temperature=0.5
        )
        assert changed.headers["x-spine-cache"] == "miss"
        assert models.count() == 2
        other_model = await client.chat.completions.with_raw_response.create(
            model=LOCAL, messages=ask("vary"), temperature=0
        )
        assert other_model.headers["x-spine-cache"] == "miss"
        assert models.count() == 3

        for header in ({"Cache-Control": "no-cache"}, {"X-Spine-Cache": "bypass"}):
            bypassed = await client.chat.completions.with_raw_response.create(
                model=CHEAP, messages=ask("vary"), temperature=0, extra_headers=header
            )
            assert bypassed.headers["x-spine-cache"] == "bypass"
            assert Decimal(bypassed.headers["x-spine-cost"]) > 0
        assert models.count() == 5

        hit = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("vary"), temperature=0
        )
        assert hit.headers["x-spine-cache"] == "hit"
        assert models.count() == 5


async def test_errors_are_never_cached(spine: RunningPlatform, models: FakeModelServer) -> None:
    rule = models.add(Rule(status=500, times=1))
    async with client_of(spine) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=CHEAP, messages=ask("flaky"))
        assert rule.exhausted
        raw = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("flaky")
        )
    assert raw.headers["x-spine-cache"] == "miss"
    assert raw.parse().choices[0].message.content == "echo: flaky"


async def test_one_tenant_never_gets_another_tenants_cached_answer(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    globex = await spine.new_key("globex")
    async with client_of(spine) as acme, client_of(spine, globex) as other:
        await acme.chat.completions.create(model=CHEAP, messages=ask("secret plan"))
        theirs = await other.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("secret plan")
        )
        assert theirs.headers["x-spine-cache"] == "miss"
        assert models.count() == 2
        mine = await acme.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("secret plan")
        )
        assert mine.headers["x-spine-cache"] == "hit"

    # Each key sees its own tenant's usage; a tenant's admin (acme's, here) sees no other
    # tenant's; only an operator key reads across tenants.
    own = (
        await spine.client.get(
            "/v1/usage", params={"tenant": "globex"}, headers={"Authorization": f"Bearer {globex}"}
        )
    ).json()
    assert own["total"]["calls"] == 1
    refused = await spine.client.get(
        "/v1/usage", params={"tenant": "acme"}, headers={"Authorization": f"Bearer {globex}"}
    )
    assert refused.status_code == 404
    for tenant in ("globex", "*"):
        admin_asks = await spine.client.get("/v1/usage", params={"tenant": tenant})
        assert admin_asks.status_code == 404, tenant
    operator = {"Authorization": f"Bearer {await spine.new_key('ops', role='operator')}"}
    everyone = (
        await spine.client.get(
            "/v1/usage", params={"tenant": "*", "group_by": "tenant"}, headers=operator
        )
    ).json()
    assert {row["tenant"]: row["calls"] for row in everyone["data"]} == {"acme": 2, "globex": 1}


async def test_an_exhausted_budget_is_a_429_naming_budget_spend_and_reset(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    async with (
        gateway(services, pg_url, models, tmp_path, budget_daily="0.05") as spine,
        client_of(spine) as client,
    ):
        costs: list[Decimal] = []
        with pytest.raises(openai.RateLimitError) as caught:
            for i in range(50):
                raw = await client.chat.completions.with_raw_response.create(
                    model=CHEAP, messages=ask(f"question {i}"), max_tokens=5
                )
                costs.append(Decimal(raw.headers["x-spine-cost"]))
        assert 1 <= len(costs) < 50
        assert sum(costs) <= Decimal("0.05")
        assert models.count() == len(costs)  # the refused call reached no model

        error = caught.value
        assert error.status_code == 429
        assert error.code == "budget_exceeded"
        body: dict[str, Any] = error.body  # type: ignore[assignment]
        assert (body["scope"], body["budget"]) == ("global", "0.05")
        assert Decimal(body["spent"]) == sum(costs)
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
        assert datetime.fromisoformat(body["resets_at"]).date() == tomorrow
        assert "0.05" in error.message
        assert body["resets_at"] in error.message
        assert error.response.headers["x-should-retry"] == "false"
        assert int(error.response.headers["retry-after"]) > 0

        # A cached answer and a local model cost nothing, so the spent budget lets them through.
        hit = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("question 0"), max_tokens=5
        )
        assert hit.headers["x-spine-cache"] == "hit"
        local = await client.chat.completions.with_raw_response.create(
            model=LOCAL, messages=ask("still free")
        )
        assert local.headers["x-spine-cost"] == "0"
        # Left to local_first, whose plan starts with a free model and falls back to the priced
        # one, the call is not refused: it is narrowed to the free models.
        auto = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=ask("free if local"),
            extra_headers={"X-Spine-Strategy": "local_first"},
        )
        assert (auto.headers["x-spine-provider"], auto.headers["x-spine-cost"]) == ("ollama", "0")
        refused = await spine.client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": ask("pricey"), "spine_strategy": "quality"},
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"

        usage = (await spine.client.get("/v1/usage")).json()["total"]
        assert Decimal(usage["cost"]) == sum(costs)
        # ... and the two refusals, the hit and the two local calls
        assert usage["calls"] == len(costs) + 5
        assert (usage["errors"], usage["cache_hits"]) == (2, 1)


async def test_concurrent_calls_never_overspend_through_the_gateway(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    # Each call reserves the most its prompt can take (a token per byte, and the template's)
    # and max_tokens=5 answer tokens; the budget admits four such reservations, and all twenty
    # calls are in flight together (the model answers after a second), so exactly four pass.
    messages = [ask(f"race {i:02d}") for i in range(20)]
    prompt_tokens = Requirements.of(
        [dict(m) for m in messages[0]], {"max_tokens": 5}
    ).prompt_ceiling
    reservation = INPUT_PRICE * prompt_tokens + OUTPUT_PRICE * 5
    budget = 4 * reservation + reservation / 2
    models.add(Rule(latency=1.0))
    async with (
        gateway(services, pg_url, models, tmp_path, budget_daily=str(budget)) as spine,
        client_of(spine) as client,
    ):
        outcomes = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model=CHEAP, messages=m, max_tokens=5
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        assert (len(answered), len(refused)) == (4, 16), outcomes
        assert models.count() == 4
        spent = sum(Decimal(raw.headers["x-spine-cost"]) for raw in answered)
        usage = (await spine.client.get("/v1/usage")).json()["total"]
        assert Decimal(usage["cost"]) == spent <= budget
        assert (usage["calls"], usage["errors"]) == (20, 16)


async def test_usage_totals_equal_the_sum_of_the_calls_made(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    spent, input_tokens, output_tokens = Decimal(0), 0, 0
    async with client_of(spine) as client:
        for text, model in (("one", CHEAP), ("two two", CHEAP), ("one", CHEAP), ("x", LOCAL)):
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=ask(text)
            )
            spent += Decimal(raw.headers["x-spine-cost"])
            if raw.headers["x-spine-cache"] != "hit":
                usage = raw.parse().usage
                assert usage is not None
                input_tokens += usage.prompt_tokens
                output_tokens += usage.completion_tokens

        stream = await client.chat.completions.create(
            model=CHEAP,
            messages=ask("streamed words here"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        streamed = chunks[-1].usage
        assert streamed is not None
        spent += cost_of(streamed)
        input_tokens += streamed.prompt_tokens
        output_tokens += streamed.completion_tokens

        # A server that sends no usage in streams (llama-cpp-python's, the local model's): the
        # client's usage chunk tells the ledger's estimate, never zeros.
        models.add(Rule(stream_usage=False, reply="four words of answer", times=1))
        stream = await client.chat.completions.create(
            model=CHEAP,
            messages=ask("no usage from this server"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        estimated = chunks[-1].usage
        assert estimated is not None
        assert estimated.prompt_tokens > 0
        assert estimated.completion_tokens == math.ceil(len("four words of answer") / 4)
        spent += cost_of(estimated)
        input_tokens += estimated.prompt_tokens
        output_tokens += estimated.completion_tokens

        models.add(Rule(status=500, times=1))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=CHEAP, messages=ask("fails"))

    body = (await spine.client.get("/v1/usage", params={"group_by": "model"})).json()
    total = body["total"]
    assert Decimal(total["cost"]) == spent > 0
    assert (total["input_tokens"], total["output_tokens"]) == (input_tokens, output_tokens)
    assert (total["calls"], total["cache_hits"], total["errors"]) == (7, 1, 1)
    by_model = {row["model"]: row for row in body["data"]}
    assert by_model[LOCAL]["cost"] == "0"
    assert by_model[CHEAP]["calls"] == 6

    by_day = (await spine.client.get("/v1/usage", params={"group_by": "day,provider"})).json()
    today = datetime.now(UTC).date().isoformat()
    assert {(r["day"], r["provider"]) for r in by_day["data"]} == {
        (today, "openai-compatible"),
        (today, "ollama"),
    }
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    before = (await spine.client.get("/v1/usage", params={"until": yesterday})).json()
    assert before["data"] == []
    bad = await spine.client.get("/v1/usage", params={"group_by": "colour"})
    assert bad.status_code == 400


async def test_a_stream_is_recorded_when_it_ends_and_cached_only_when_complete(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    async with client_of(spine) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("stream me please"), stream=True
        )
        assert raw.headers["x-spine-cache"] == "miss"
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        assert text == "echo: stream me please"

        # The complete stream was cached: replayed without a model call, as a stream or not.
        again = await client.chat.completions.with_raw_response.create(
            model=CHEAP,
            messages=ask("stream me please"),
            stream=True,
            stream_options={"include_usage": True},
        )
        assert (again.headers["x-spine-cache"], again.headers["x-spine-cost"]) == ("hit", "0")
        chunks = [c async for c in again.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 4
        plain = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("stream me please")
        )
        assert plain.headers["x-spine-cache"] == "hit"
        assert plain.parse().choices[0].message.content == text
        assert models.count() == 1

        # A stream cut after its first tokens is recorded as a failure, with what it used,
        # and not cached: the same request then goes to the model again.
        models.add(
            Rule(model="gpt-4o-mini", disconnect_after=2, reply="one two three four", times=1)
        )
        stream = await client.chat.completions.create(
            model=CHEAP, messages=ask("cut short"), stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        retried = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=ask("cut short"), stream=True
        )
        assert retried.headers["x-spine-cache"] == "miss"
        assert (
            "".join([c.choices[0].delta.content or "" async for c in retried.parse() if c.choices])
            == "echo: cut short"
        )
        assert models.count() == 3

    rows = (await spine.client.get("/v1/usage", params={"group_by": "model"})).json()["data"]
    (row,) = rows
    assert (row["model"], row["calls"], row["errors"], row["cache_hits"]) == (CHEAP, 5, 1, 2)
    assert row["input_tokens"] > 0
    assert row["output_tokens"] >= 4 + 2 + 3
    assert Decimal(row["cost"]) > 0


async def test_streamed_tool_calls_are_cached_whole(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    models.add(
        Rule(
            containing="weather",
            tool_calls=[ToolCall(name="get_weather", arguments={"city": "Oslo"})],
        )
    )
    messages = ask("weather in Oslo?")
    async with client_of(spine) as client:
        for expected in ("miss", "hit"):
            raw = await client.chat.completions.with_raw_response.create(
                model=CHEAP, messages=messages, tools=[WEATHER_TOOL], stream=True
            )
            assert raw.headers["x-spine-cache"] == expected
            name, arguments, finish = "", "", None
            async for c in raw.parse():
                for part in c.choices[0].delta.tool_calls or []:
                    name += (part.function and part.function.name) or ""
                    arguments += (part.function and part.function.arguments) or ""
                finish = c.choices[0].finish_reason or finish
            assert (name, json.loads(arguments), finish) == (
                "get_weather",
                {"city": "Oslo"},
                "tool_calls",
            )
        answer = await client.chat.completions.create(
            model=CHEAP, messages=messages, tools=[WEATHER_TOOL]
        )
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert models.count() == 1


async def test_a_stream_whose_client_left_before_its_first_byte_is_settled(
    spine: RunningPlatform, models: FakeModelServer
) -> None:
    # The client gives up while the model is still thinking: the stream opens after it left.
    models.add(Rule(model="gpt-4o-mini", latency=1.0, times=1))
    with pytest.raises(httpx.ReadTimeout):
        async with spine.client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": CHEAP, "messages": ask("too slow for me"), "stream": True},
            timeout=0.3,
        ) as response:
            await response.aread()
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # the call goes on after the client left; it is recorded when it ends
        await asyncio.sleep(0.1)
        rows = (await spine.client.get("/v1/usage", params={"group_by": "model"})).json()["data"]
        if rows:
            break
    assert [(r["model"], r["calls"], r["errors"]) for r in rows] == [(CHEAP, 1, 1)]
    state = await spine.platform.metered.budgets.state(GLOBAL)
    assert state.reserved == 0, "the abandoned stream's reservation was never released"


@contextlib.contextmanager
def usage_rows_held(spine: RunningPlatform, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hold every usage row at the ledger's door until the event given is set."""
    usage = spine.platform.metered.usage
    gate = asyncio.Event()
    submit = usage.submit

    async def held(record: Any) -> None:
        await gate.wait()
        await submit(record)

    monkeypatch.setattr(usage, "submit", held)
    try:
        yield gate
    finally:
        gate.set()


async def test_an_answer_goes_back_before_its_books_and_usage_reads_them(
    spine: RunningPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    metered = spine.platform.metered
    with usage_rows_held(spine, monkeypatch) as gate:
        async with client_of(spine) as client:
            raw = await asyncio.wait_for(
                client.chat.completions.with_raw_response.create(
                    model=CHEAP, messages=ask("books after the answer")
                ),
                10,
            )
        cost = Decimal(raw.headers["x-spine-cost"])
        assert cost == cost_of(raw.parse().usage) > 0, "the answer is priced before its books"
        reading = asyncio.create_task(spine.client.get("/v1/usage"))
        await asyncio.sleep(0.3)
        assert not reading.done(), "usage was read before this process's books were written"
        gate.set()
        total = (await asyncio.wait_for(reading, 10)).json()["total"]
    assert (total["calls"], Decimal(total["cost"])) == (1, cost)
    state = await metered.budgets.state(GLOBAL)
    assert (state.spent, state.reserved) == (cost, Decimal(0))
    # Its features, which the learner scores it by, were extracted with its books.
    [call], _ = await metered.usage.calls_page(tenant=None)
    assert call.decision is not None and call.decision["features"]["indices"]


async def test_the_same_request_sent_again_at_once_hits_the_cache_while_books_wait(
    spine: RunningPlatform, models: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache is written ahead of the books: a slow settlement or usage ledger never lets a
    # caller's immediate repeat pay for a second model call, and a hit's row is written behind
    # its answer too.
    budgets = spine.platform.metered.budgets
    settle_later = budgets.settle_later

    with usage_rows_held(spine, monkeypatch) as gate:

        async def held(reservation: Any, cost: Any) -> None:
            await gate.wait()
            await settle_later(reservation, cost)

        monkeypatch.setattr(budgets, "settle_later", held)
        async with client_of(spine) as client:
            for expected in ("miss", "hit"):
                raw = await asyncio.wait_for(
                    client.chat.completions.with_raw_response.create(
                        model=CHEAP, messages=ask("again at once"), temperature=0
                    ),
                    10,
                )
                assert raw.headers["x-spine-cache"] == expected
        gate.set()
        usage = (await spine.client.get("/v1/usage")).json()["total"]
    assert models.count() == 1
    assert (usage["calls"], usage["cache_hits"]) == (2, 1)


async def test_callers_write_their_own_books_once_too_many_are_behind(
    spine: RunningPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spine.platform.metering.metered.BOOKS_BEHIND", 2)
    with usage_rows_held(spine, monkeypatch) as gate:
        async with client_of(spine) as client:
            calls = [
                asyncio.create_task(
                    client.chat.completions.create(model=CHEAP, messages=ask(f"call {n}"))
                )
                for n in range(5)
            ]
            await asyncio.wait(calls, timeout=1.5)
            answered = sum(call.done() for call in calls)
            assert answered == 2, f"{answered} answers went back with more than 2 books behind"
            gate.set()
            await asyncio.wait_for(asyncio.gather(*calls), 10)
    total = (await spine.client.get("/v1/usage")).json()["total"]
    assert total["calls"] == 5
