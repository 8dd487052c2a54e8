"""Fixtures shared by the integration tests of the OpenAI-compatible routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai import AsyncOpenAI

from support.live_platform import RunningPlatform


@pytest.fixture
async def client(spine: RunningPlatform) -> AsyncIterator[AsyncOpenAI]:
    """The official client on the module's ``spine``, with its admin key and no retries (a
    module whose ``client`` is something else defines its own)."""
    async with AsyncOpenAI(base_url=f"{spine.url}/v1", api_key=spine.key, max_retries=0) as c:
        yield c
