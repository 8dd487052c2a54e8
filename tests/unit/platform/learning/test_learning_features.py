"""Request features are stable, sparse, normalised, and carry no text."""

from __future__ import annotations

import math
from typing import Any

from spine.platform.learning import MAX_CHARS, FeatureSpace, SparseFeatures, prompt_text

PROMPT = "Natalia sold clips to 48 of her friends in April, and then half as many in May?"


def test_the_same_request_gives_the_same_vector_in_any_process() -> None:
    space = FeatureSpace()
    first = space.extract(PROMPT, category="math", tenant="acme")
    again = FeatureSpace().extract(PROMPT, category="math", tenant="acme")
    assert first == again
    assert first.space == space.id
    assert list(first.indices) == sorted(set(first.indices))
    assert all(0 <= i < space.dims for i in first.indices)
    # The zlib hash is stable: a fixed prompt lands on fixed buckets.
    assert first.indices[:3] == again.indices[:3]


def test_the_text_block_is_unit_length_and_the_bias_is_one() -> None:
    space = FeatureSpace()
    features = space.extract(PROMPT)
    text = [
        v for i, v in zip(features.indices, features.values, strict=True) if i < space.text_dims
    ]
    assert math.isclose(math.sqrt(sum(v * v for v in text)), 1.0, abs_tol=1e-3)
    values = dict(zip(features.indices, features.values, strict=True))
    assert values[space.bias] == 1.0


def test_category_and_tenant_land_in_their_blocks() -> None:
    space = FeatureSpace()
    blocks = space.blocks()
    plain = set(space.extract(PROMPT).indices)
    tagged = set(space.extract(PROMPT, category="math", tenant="acme").indices)
    added = tagged - plain
    assert any(blocks["category"].start <= i < blocks["category"].stop for i in added)
    assert any(blocks["tenant"].start <= i < blocks["tenant"].stop for i in added)
    other = set(space.extract(PROMPT, category="writing").indices) - plain
    assert other != {i for i in added if i < blocks["tenant"].start}


def test_an_event_carries_indices_and_values_only() -> None:
    features = FeatureSpace().extract(PROMPT, category="math")
    dumped = features.model_dump_json()
    assert "Natalia" not in dumped and "math" not in dumped
    assert SparseFeatures.model_validate_json(dumped) == features


def test_a_long_prompt_is_read_up_to_the_cap() -> None:
    space = FeatureSpace()
    head = "word " * (MAX_CHARS // 5)
    a = space.extract(head + "alpha " * 500)
    b = space.extract(head + "omega " * 900)
    text_a = [(i, v) for i, v in zip(a.indices, a.values, strict=True) if i < space.text_dims]
    text_b = [(i, v) for i, v in zip(b.indices, b.values, strict=True) if i < space.text_dims]
    assert text_a == text_b
    assert a != b  # the length still counts


def test_prompt_text_takes_the_last_user_message_or_all_of_them() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert prompt_text(messages) == "second"
    assert prompt_text(messages, whole=True) == "first\n\nsecond"
    assert prompt_text([{"role": "assistant", "content": "x"}]) == ""
