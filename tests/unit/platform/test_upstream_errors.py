"""How both upstream adapters translate a provider's "the input does not fit" into one error."""

from __future__ import annotations

import os

import httpx2 as httpx
import openai
import pytest
from litellm import exceptions as litellm_errors

from spine.platform.errors import ContextWindowExceeded, TransientFailure
from spine.platform.models import ProviderTarget
from spine.platform.models.litellm_upstream import _translate as litellm_translate
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
def test_the_sdk_path_agrees_whatever_the_status(status: int) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/embeddings")
    response = httpx.Response(status, request=request, json={"error": {"message": OLLAMA_SAYS}})
    kind = openai.BadRequestError if status == 400 else openai.InternalServerError
    error = kind(OLLAMA_SAYS, response=response, body=None)
    target = ProviderTarget(provider="openai-compatible", model="m", kwargs={})
    translated = openai_translate(error, target, load_settings(_env_file=None))
    assert isinstance(translated, ContextWindowExceeded)
