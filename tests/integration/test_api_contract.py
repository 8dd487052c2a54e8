"""The API keeps its OpenAPI contract under generated requests, and never answers 5xx.

Schemathesis reads ``/openapi.json`` from a live API and, for every operation, sends requests
that fit the document (positive) and requests that break it (negative): wrong types, missing
fields, strings of any Unicode, numbers at the edges. Every answer must be below 500 and carry
a status the document lists for that operation. Bounded: a few examples per operation and mode,
derandomized, so a run takes the same requests and well under a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.databases import create_database
from support.fake_models import FakeModelServer
from support.knowledge import knowledge
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

EXAMPLES = 6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
async def spine(services: Any, fake_models: FakeModelServer) -> AsyncIterator[RunningPlatform]:
    database = create_database(services.database_url)
    async with running_platform(
        services, database, fake_models, workers=0, knowledge=knowledge()
    ) as running:
        yield running


def fuzz(url: str, key: str) -> list[str]:
    """Send generated requests to every operation; return the failures, one line each."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operations.append(result.ok())
    assert len(operations) > 30, "the document lists every operation"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: Any) -> None:
                response = case.call(base_url=url, headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                exercise()
            except Unsatisfiable:
                continue  # no request can break this operation's document (any string fits)
            except (Exception, BaseExceptionGroup) as exc:  # one line per operation and mode
                first = str(exc).strip().splitlines()[:12]
                failures.append(f"{operation.label} [{mode.value}]: " + " | ".join(first))
    return failures


async def test_generated_requests_get_documented_answers_and_no_5xx(
    spine: RunningPlatform,
) -> None:
    failures = await asyncio.to_thread(fuzz, spine.url, spine.key)
    assert not failures, "\n".join(failures)


async def test_every_operation_documents_its_error_codes(spine: RunningPlatform) -> None:
    document = (await spine.client.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "401", "503"} <= codes, (method, path, codes)
            error = operation["responses"]["503"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}
            assert "Retry-After" in operation["responses"]["503"]["headers"]
            if "422" in codes:
                schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)


async def test_a_405_names_every_method_the_path_allows(spine: RunningPlatform) -> None:
    async with httpx.AsyncClient(base_url=spine.url) as client:
        response = await client.delete("/v1/tasks")
        assert response.status_code == 405
        assert response.json()["error"]["type"] == "method_not_allowed"
        assert response.headers["allow"] == "GET, POST"
        response = await client.put("/v1/documents/some-id")
        assert response.status_code == 405
        assert response.headers["allow"] == "DELETE, GET"
