"""LiteLLM's facts come from a child process; the API and worker import neither LiteLLM nor
the other libraries only some processes need."""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest

from spine.platform.models import litellm_facts
from spine.platform.models.litellm_facts import answer
from spine.platform.router.catalog import ModelCatalog
from spine.platform.router.specs import ModelSpec
from support.imports import loaded_by

# An Ollama model no other test calls: a call registers its price in this process's LiteLLM.
PAIRS = [("openai", "gpt-4o-mini"), ("ollama", "codellama"), ("anthropic", "no-such-model")]


async def test_the_child_answers_what_litellm_answers_in_process() -> None:
    from_child = await litellm_facts._ask_child(PAIRS)
    assert from_child == {pair: answer(*pair) for pair in PAIRS}
    mini = from_child[("openai", "gpt-4o-mini")]
    assert mini.facts is not None and mini.facts["max_input_tokens"] == 128_000
    assert mini.params is not None and {"temperature", "tools", "user"} <= mini.params
    assert from_child[("anthropic", "no-such-model")].facts is None


async def test_a_child_that_fails_leaves_the_pairs_unknown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert await litellm_facts._ask_child(PAIRS) == {}
    assert "LiteLLM's model facts are unknown" in caplog.text


async def test_the_catalog_fills_in_from_the_answers() -> None:
    catalog = ModelCatalog()
    catalog.add(ModelSpec(name="mini", provider="openai", model="gpt-4o-mini"))
    catalog.add(
        ModelSpec(
            name="priced",
            provider="openai",
            model="x",
            input_price=1,
            output_price=1,
            context_window=8,
            supported_params=frozenset({"n"}),
        )
    )
    assert catalog.unknown_facts() == [("openai", "gpt-4o-mini")]
    known = await litellm_facts.ask_litellm(catalog.unknown_facts())
    catalog.fill_unknown(known.facts)
    catalog.fill_supported_params(known.params)
    mini = catalog.get("mini")
    assert mini is not None and mini.input_price == Decimal("1.5E-7")
    assert mini.supported_params is not None and "temperature" in mini.supported_params
    assert catalog.unknown_facts() == []


def test_the_api_and_the_worker_import_no_litellm_openai_neo4j_or_alembic() -> None:
    processes = [
        "spine.platform.app.cli",
        "spine.platform.app.api",
        "spine.platform.app.wiring",
        "spine.agents.worker",
    ]
    assert loaded_by(processes, {"litellm", "openai", "neo4j", "alembic"}) == []
