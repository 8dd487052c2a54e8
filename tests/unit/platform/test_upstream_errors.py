"""How both upstream adapters translate a provider's "the input does not fit" into one error."""

from __future__ import annotations

import os

import pytest
from litellm import exceptions as litellm_errors

from spine.platform.errors import ContextWindowExceeded, TransientFailure
from spine.platform.models import ProviderTarget
from spine.platform.models.litellm_upstream import _translate as litellm_translate
from spine.platform.models.openai_upstream import UpstreamStatusError
from spine.platform.models.openai_upstream import _translate as openai_translate
from spine.platform.settings import load_settings

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
