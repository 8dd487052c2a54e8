"""The prompt's upper bound budgets reserve, beside the estimate the context checks use."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from spine.platform.router import ModelSpec, Requirements


def old_estimate(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    chars = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools or []))
    return math.ceil(chars / 4)


def test_the_bound_counts_a_token_per_byte_and_the_templates_tokens() -> None:
    messages = [{"role": "user", "content": "a " * 400}]
    needs = Requirements.of(messages, {"max_tokens": 1})
    # 800 bytes, "user", 8 tokens around the message, 8 opening the answer.
    assert needs.prompt_bound == needs.prompt_ceiling == 800 + 4 + 8 + 8
    assert needs.prompt_tokens == old_estimate(messages) < 400  # what the audit's call cost


def test_multibyte_text_is_bounded_by_its_bytes() -> None:
    for text in ("日本語のテキスト" * 50, "🙂" * 100, "naïve café " * 40):
        needs = Requirements.of([{"role": "user", "content": text}], {})
        assert needs.prompt_ceiling >= len(text.encode()) + 8 + 8
        assert needs.prompt_ceiling >= needs.prompt_tokens


def test_parts_tools_and_schemas_are_counted() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this"}]},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    plain = Requirements.of(messages, {})
    text_bytes = len("be brief") + len("what is this") + len("42")
    roles = len("system") + len("user") + len("assistant") + len("tool") + len("c1")
    assert plain.prompt_ceiling == 8 + 4 * 8 + text_bytes + roles + len(json.dumps(calls))

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    richer = Requirements.of(messages, {"tools": tools, "response_format": schema})
    added = 256 + len(json.dumps(tools)) + len(json.dumps(schema))
    assert richer.prompt_ceiling == plain.prompt_ceiling + added

    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    seen = Requirements.of([{"role": "user", "content": [image]}], {})
    assert seen.prompt_ceiling >= 2048


def test_the_context_check_still_uses_the_estimate() -> None:
    messages = [{"role": "user", "content": "a " * 400}]
    needs = Requirements.of(messages, {"max_tokens": 10})
    fits = ModelSpec(
        name="small",
        provider="openai",
        model="small",
        input_price=Decimal("0.001"),
        output_price=Decimal("0.002"),
        context_window=needs.prompt_tokens + 10,
    )
    assert needs.prompt_ceiling > fits.context_window  # type: ignore[operator]
    assert fits.refusal(needs) is None


def test_without_a_bound_the_estimate_is_reserved() -> None:
    assert Requirements(prompt_tokens=7).prompt_ceiling == 7
    assert Requirements.for_embedding(["a " * 100]).prompt_ceiling == 50
