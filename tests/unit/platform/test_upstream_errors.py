"""How both upstream adapters translate a provider's "the input does not fit" into one error."""

from __future__ import annotations

import os

import pytest
from litellm import exceptions as litellm_errors

from spine.platform.errors import ContextWindowExceeded, TransientFailure
from spine.platform.models import ProviderTarget
from spine.platform.models.litellm_upstream import LiteLLMUpstream
from spine.platform.models.litellm_upstream import _translate as litellm_translate
from spine.platform.models.openai_upstream import UpstreamStatusError
from spine.platform.models.openai_upstream import _translate as openai_translate
from spine.platform.models.values import ChatRequest
from spine.platform.settings import load_settings
from support.fake_models import FakeModelServer, Rule

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
TARGET = ProviderTarget(provider="ollama", model="nomic-embed-text", kwargs={})
OLLAMA_SAYS = "the input length exceeds the context length"


def test_an_ollama_500_saying_the_input_is_too_long_is_the_callers_input_not_an_outage() -> None:
    error = litellm_errors.InternalServerError(
        message=OLLAMA_SAYS, llm_provider="ollama", model="nomic-embed-text"
    )
    translated = litellm_translate(error, TARGET, load_settings(_env_file=None))
    assert isinstance(translated, ContextWindowExceeded)
    assert not translated.retryable


def test_a_plain_500_is_still_an_outage() -> None:
    error = litellm_errors.InternalServerError(
        message="model runner crashed", llm_provider="ollama", model="nomic-embed-text"
    )
    translated = litellm_translate(error, TARGET, load_settings(_env_file=None))
    assert isinstance(translated, TransientFailure)


@pytest.mark.parametrize("status", [400, 500])
def test_the_openai_protocol_path_agrees_whatever_the_status(status: int) -> None:
    error = UpstreamStatusError(status, f'Error code: {status} - {{"error": "{OLLAMA_SAYS}"}}')
    target = ProviderTarget(provider="openai-compatible", model="m", kwargs={})
    translated = openai_translate(error, target, load_settings(_env_file=None))
    assert isinstance(translated, ContextWindowExceeded)


async def test_a_litellm_providers_429_keeps_the_wait_it_asked_for(
    models: FakeModelServer,
) -> None:
    # Groq goes through LiteLLM (OpenAI's protocol at its own address): its 429's Retry-After
    # was dropped, so the gateway said nothing and a task's retry came back within the limit.
    models.add(Rule(status=429, retry_after=7))
    target = ProviderTarget(
        provider="groq",
        model="llama3.2",
        kwargs={"api_base": f"{models.url}/v1", "api_key": "gsk-test"},
    )
    upstream = LiteLLMUpstream(load_settings(_env_file=None))
    with pytest.raises(TransientFailure) as failed:
        await upstream.call(target, ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    assert failed.value.details["cause"] == "RateLimitError"
    assert failed.value.details["retry_after"] == 7.0
