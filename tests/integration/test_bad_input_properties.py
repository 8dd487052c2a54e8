"""Property: whatever JSON reaches the main write endpoints, the answer is never a 5xx.

Hypothesis builds bodies for ``POST /v1/tasks``, ``/v1/events``, ``/v1/documents``,
``/v1/chat/completions`` and ``/v1/search``: arbitrary JSON values, and bodies shaped like the
real ones whose values are arbitrary — any Unicode (lone surrogates and NUL included), numbers
of any size (``1e400``, ``NaN``, integers of hundreds of digits), nesting, and datetimes at the
edges of the calendar with the widest offsets. Derandomized and bounded, so every run sends the
same few hundred requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.databases import create_database
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

EXAMPLES = 60

# Any code point, lone surrogates included (Hypothesis leaves them out by default).
characters = st.characters(codec=None, exclude_categories=())
text = st.text(characters, max_size=12) | st.sampled_from(["", "\x00", "\ud800", "a\udfffb"])
numbers = (
    st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
)
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
moments = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.builds(timezone, offsets),
).map(datetime.isoformat) | st.sampled_from(
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-01-01T00:00:00"]
)


def shaped(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Bodies like the real ones, with arbitrary values; and arbitrary JSON now and then."""
    return st.fixed_dictionaries(required, optional=optional) | json_values


BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/v1/tasks": shaped(
        {"agent": st.just("chat") | text, "input": st.builds(dict, prompt=text) | json_values},
        {
            "metadata": json_objects | json_values,
            "priority": st.sampled_from(["high", "low"]) | json_values,
            "deadline": moments | json_values,
        },
    ),
    "/v1/events": shaped(
        {"specversion": st.just("1.0"), "id": text, "source": text, "type": text},
        {"time": moments, "data": json_values, "subject": text, "tenantx": scalars},
    ),
    "/v1/documents": shaped(
        {"text": text},
        {"metadata": json_objects | json_values, "source": text, "format": text},
    ),
    "/v1/chat/completions": shaped(
        {
            "model": st.just("auto") | text,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "system"]) | text, "content": text}
                )
                | json_values,
                min_size=1,
                max_size=2,
            ),
        },
        {"temperature": numbers, "max_tokens": numbers, "stop": json_values, "user": text},
    ),
    "/v1/search": shaped(
        {"query": text},
        {"filter": json_objects | json_values, "k": numbers},
    ),
}


@pytest.fixture(scope="module")
async def spine(services: Any, fake_models: FakeModelServer) -> AsyncIterator[RunningPlatform]:
    database = create_database(services.database_url)
    async with running_platform(services, database, fake_models, workers=0) as running:
        yield running


def post_everything(url: str, key: str) -> list[str]:
    """Post generated bodies to each endpoint; return the 5xx answers met."""
    found: list[str] = []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for path, bodies in BODIES.items():
            # A failing example is recorded in `found` (as Hypothesis shrank it); go on.
            with contextlib.suppress(AssertionError):
                poster(client, path, bodies, found)()
    return found


def poster(
    client: httpx.Client, path: str, bodies: st.SearchStrategy[Any], found: list[str]
) -> Callable[[], None]:
    """Return a Hypothesis test posting ``bodies`` to ``path``."""

    @given(body=bodies)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def post(body: Any) -> None:
        # ASCII escapes, as a JSON client sends a lone surrogate; NaN as JSON readers take it.
        raw = json.dumps(body, allow_nan=True).encode()
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        if response.status_code >= 500:
            found.append(f"{path} {response.status_code} {raw[:300]!r} {response.text}")
        assert response.status_code < 500
        if response.status_code >= 400:
            assert isinstance(response.json()["error"]["message"], str)

    return post


async def test_no_json_body_makes_the_write_endpoints_answer_5xx(spine: RunningPlatform) -> None:
    found = await asyncio.to_thread(post_everything, spine.url, spine.key)
    assert not found, "\n".join(found[-10:])
