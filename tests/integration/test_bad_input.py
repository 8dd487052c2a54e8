"""Input that cannot be stored is a 4xx naming the field, never a 5xx.

Each case here was a 500 once: NUL characters and lone surrogates on their way to PostgreSQL,
datetimes past the year 9999 once in UTC, numbers JSON or the database cannot hold, JSON nested
beyond any sane depth, a Last-Event-ID of Unicode digits, graph parameters beyond 64 bits, and a
database that answers "starting up". The rules live in :mod:`spine.platform.inputs`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from spine.platform.db import Database
from spine.platform.errors import BadRequest, ServiceUnavailable
from support.fake_models import FakeModelServer
from support.knowledge import knowledge
from support.live_platform import RunningPlatform, running_platform
from support.tcp_proxy import proxy_to

pytestmark = pytest.mark.integration

CHAT = {"agent": "chat", "input": {"prompt": "hello"}}
OVERFLOW = "9999-12-31T23:59:59-23:59"  # in UTC: the year 10000
UNDERFLOW = "0001-01-01T00:00:00+23:59"  # in UTC: the year 0
DEEP = 100_000


@pytest.fixture(scope="module")
async def spine(
    services: Any, module_pg_url: str, fake_models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    async with running_platform(
        services, module_pg_url, fake_models, workers=0, knowledge=knowledge()
    ) as running:
        yield running


def refused(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """Check a 400/422 in the one error shape (naming ``field``); return the error object."""
    assert response.status_code in (400, 422), (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), error
    if field is not None:
        assert error.get("field") == field, error
    return dict(error)


def raw_json(value: str) -> dict[str, Any]:
    return {"content": value.encode(), "headers": {"content-type": "application/json"}}


def escaped(body: Any) -> dict[str, Any]:
    """Send ``body`` as JSON with ASCII escapes: how a lone surrogate travels."""
    return raw_json(json.dumps(body))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- NUL characters ---------------------------------------------------------------------------


async def test_nul_in_task_input_is_refused(spine: RunningPlatform) -> None:
    body = {"agent": "chat", "input": {"prompt": "a\x00b"}}
    refused(await spine.client.post("/v1/tasks", json=body), "input.prompt")


async def test_nul_in_a_metadata_key_is_refused(spine: RunningPlatform) -> None:
    body = {**CHAT, "metadata": {"k\x00": "v"}}
    refused(await spine.client.post("/v1/tasks", json=body), "metadata")


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/v1/tasks/%00", "task_id"),
        ("POST", "/v1/tasks/a%00/cancel", "task_id"),
        ("GET", "/v1/tasks/a%00/events", "task_id"),
        ("GET", "/v1/events/%00", "key"),
        ("GET", "/v1/documents/%00", "document_id"),
        ("DELETE", "/v1/documents/%00", "document_id"),
        ("GET", "/v1/files/%00", "file_id"),
        ("GET", "/v1/batches/%00", "batch_id"),
    ],
)
async def test_nul_in_a_path_parameter_is_refused(
    spine: RunningPlatform, method: str, path: str, field: str
) -> None:
    refused(await spine.client.request(method, path), field)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/tasks", {"agent": "a\x00"}, "agent"),
        ("/v1/events", {"type": "a\x00"}, "type"),
        ("/v1/files", {"purpose": "batch\x00"}, "purpose"),
        ("/v1/files", {"after": "file-\x00"}, "after"),
        ("/v1/usage", {"tenant": "acme\x00"}, "tenant"),
    ],
)
async def test_nul_in_a_query_parameter_is_refused(
    spine: RunningPlatform, path: str, params: dict[str, str], field: str
) -> None:
    refused(await spine.client.get(path, params=params), field)


async def test_nul_in_a_cloudevent_id_is_refused(spine: RunningPlatform) -> None:
    event = {"specversion": "1.0", "id": "a\x00", "source": "/s", "type": "t.x"}
    response = await spine.client.post(
        "/v1/events",
        content=json.dumps(event).encode(),
        headers={"content-type": "application/cloudevents+json"},
    )
    refused(response, "id")


async def test_nul_in_a_binary_cloudevent_header_is_refused(spine: RunningPlatform) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "a%00b",
        "ce-source": "/s",
        "ce-type": "t.x",
        "content-type": "application/json",
    }
    refused(await spine.client.post("/v1/events", content=b"{}", headers=headers), "id")


@pytest.mark.parametrize("last_id", ["a\x00", "\ud800"])
async def test_a_cursor_carrying_nul_or_a_surrogate_is_refused(
    spine: RunningPlatform, last_id: str
) -> None:
    raw = json.dumps(["2024-01-01T00:00:00+00:00", last_id]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode()
    for path in ("/v1/tasks", "/v1/events"):
        refused(await spine.client.get(path, params={"cursor": cursor}), "cursor")


async def test_a_cursor_with_an_overflowing_time_is_refused(spine: RunningPlatform) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps([OVERFLOW, "x"]).encode()).decode()
    refused(await spine.client.get("/v1/tasks", params={"cursor": cursor}), "cursor")


async def test_nul_in_a_document_is_refused(spine: RunningPlatform) -> None:
    refused(await spine.client.post("/v1/documents", json={"text": "a\x00b"}), "text")


# -- lone surrogates --------------------------------------------------------------------------


async def test_a_lone_surrogate_in_task_metadata_is_refused(spine: RunningPlatform) -> None:
    body = {**CHAT, "metadata": {"k": "\ud800"}}
    refused(await spine.client.post("/v1/tasks", **escaped(body)), "metadata.k")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x\udfff"}, "text"),
        ({"text": "fine", "metadata": {"k": "\ud800"}}, "metadata.k"),
        ({"text": "fine", "source": "\ud800"}, "source"),
    ],
)
async def test_a_lone_surrogate_in_a_document_is_refused(
    spine: RunningPlatform, body: dict[str, Any], field: str
) -> None:
    refused(await spine.client.post("/v1/documents", **escaped(body)), field)


async def test_a_lone_surrogate_in_a_search_filter_is_refused(spine: RunningPlatform) -> None:
    body = {"query": "x", "filter": {"team": "\ud800"}}
    refused(await spine.client.post("/v1/search", **escaped(body)), "filter.team")


async def test_a_lone_surrogate_in_a_chat_message_is_a_400_in_openais_shape(
    spine: RunningPlatform,
) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi \ud800"}]}
    response = await spine.client.post("/v1/chat/completions", **escaped(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"


async def test_a_lone_surrogate_in_an_embedding_input_is_a_400(spine: RunningPlatform) -> None:
    body = {"model": "auto", "input": ["ok", "\udc00"]}
    response = await spine.client.post("/v1/embeddings", **escaped(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "input"


# -- datetimes out of range -------------------------------------------------------------------


@pytest.mark.parametrize("deadline", [OVERFLOW])
async def test_a_deadline_past_the_year_9999_in_utc_is_refused(
    spine: RunningPlatform, deadline: str
) -> None:
    refused(await spine.client.post("/v1/tasks", json={**CHAT, "deadline": deadline}), "deadline")


@pytest.mark.parametrize(("name", "value"), [("since", OVERFLOW), ("until", UNDERFLOW)])
async def test_usage_bounds_out_of_range_are_refused(
    spine: RunningPlatform, name: str, value: str
) -> None:
    refused(await spine.client.get("/v1/usage", params={name: value}), name)


@pytest.mark.parametrize("time", [OVERFLOW, UNDERFLOW])
async def test_an_event_time_out_of_range_is_refused(spine: RunningPlatform, time: str) -> None:
    event = {"specversion": "1.0", "id": "e1", "source": "/s", "type": "t.x", "time": time}
    refused(await spine.client.post("/v1/events", json=event), "time")


async def test_a_graph_time_out_of_range_is_refused(spine: RunningPlatform) -> None:
    response = await spine.client.get("/v1/graph/nodes/Person:1/neighbors", params={"at": OVERFLOW})
    refused(response, "at")


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
async def test_a_number_json_cannot_hold_is_refused(spine: RunningPlatform, number: str) -> None:
    body = '{"agent": "chat", "input": {"prompt": "x"}, "metadata": {"n": ' + number + "}}"
    refused(await spine.client.post("/v1/tasks", **raw_json(body)), "metadata.n")
    body = '{"text": "x", "metadata": {"n": [' + number + "]}}"
    refused(await spine.client.post("/v1/documents", **raw_json(body)), "metadata.n.0")


async def test_an_integer_beyond_64_bits_is_refused(spine: RunningPlatform) -> None:
    body = {**CHAT, "metadata": {"n": 2**70}}
    refused(await spine.client.post("/v1/tasks", json=body), "metadata.n")


async def test_graph_query_parameters_beyond_64_bits_are_refused(
    spine: RunningPlatform,
) -> None:
    body = {"query": "RETURN $x AS x", "params": {"x": 2**64}}
    refused(await spine.client.post("/v1/graph/query", json=body), "params.x")


async def test_a_line_separator_in_a_graph_query_is_no_5xx(spine: RunningPlatform) -> None:
    for text in ("RETURN 1 AS\u2028x", "RETURN '\u2028' AS x", "MATCH (n) RETURN n\u2029"):
        response = await spine.client.post("/v1/graph/query", json={"query": text})
        assert response.status_code < 500, response.text
    response = await spine.client.get("/v1/graph/search", params={"q": "a\u2028b"})
    assert response.status_code < 500, response.text


# -- depth ------------------------------------------------------------------------------------


async def test_a_task_body_nested_100000_deep_is_refused(spine: RunningPlatform) -> None:
    body = '{"agent": "chat", "input": {"x": ' + nested(DEEP) + "}}"
    error = refused(await spine.client.post("/v1/tasks", **raw_json(body)))
    assert "deep" in error["message"]


async def test_a_body_just_within_the_depth_bound_is_accepted(spine: RunningPlatform) -> None:
    # The body's object and "metadata" are two levels; the bound is 64.
    prefix = '{"agent": "chat", "input": {"prompt": "x"}, "metadata": {"x": '
    response = await spine.client.post("/v1/tasks", **raw_json(prefix + nested(62) + "}}"))
    assert response.status_code == 202, response.text
    response = await spine.client.post("/v1/tasks", **raw_json(prefix + nested(63) + "}}"))
    error = refused(response)
    assert error["field"].startswith("metadata.x.0"), error
    assert "64 levels deep" in error["message"]


@pytest.mark.parametrize(
    "content_type",
    ["application/cloudevents+json", "application/cloudevents-batch+json", "application/json"],
)
async def test_an_event_nested_100000_deep_is_refused(
    spine: RunningPlatform, content_type: str
) -> None:
    event = '{"specversion": "1.0", "id": "e", "source": "/s", "type": "t", "data": '
    body = event + nested(DEEP) + "}"
    if content_type.endswith("batch+json"):
        body = f"[{body}]"
    response = await spine.client.post(
        "/v1/events", content=body.encode(), headers={"content-type": content_type}
    )
    refused(response)


async def test_a_binary_event_nested_100000_deep_is_refused(spine: RunningPlatform) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "e", "ce-source": "/s", "ce-type": "t"}
    headers["content-type"] = "application/json"
    response = await spine.client.post("/v1/events", content=nested(DEEP).encode(), headers=headers)
    refused(response)


async def test_a_chat_body_nested_100000_deep_is_a_400(spine: RunningPlatform) -> None:
    body = '{"model": "auto", "messages": ' + nested(DEEP) + "}"
    response = await spine.client.post("/v1/chat/completions", **raw_json(body))
    assert response.status_code == 400, response.text


# -- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "¹²", "99999999999999999999999"])
async def test_a_last_event_id_that_is_not_an_ascii_sequence_number_is_a_400(
    spine: RunningPlatform, value: str
) -> None:
    task = (await spine.client.post("/v1/tasks", json=CHAT)).json()
    response = await spine.client.get(
        f"/v1/tasks/{task['id']}/events",
        headers={b"Last-Event-ID": value.encode("latin-1")},  # "²" is one byte in Latin-1
    )
    refused(response, "Last-Event-ID")


# -- a database that is starting up -----------------------------------------------------------


class StartingPostgres:
    """Answers every connection as PostgreSQL does while it starts: FATAL 57P03."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    async def open(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                packet = await reader.readexactly(length - 4)
                if struct.unpack("!i", packet[:4])[0] in (80877103, 80877104):
                    writer.write(b"N")  # no SSL, no GSS encryption
                    continue
                break
            fields = b"SFATAL\x00VFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        writer.close()


async def test_values_the_database_refuses_are_a_400_and_no_error_quotes_them(
    pg_url: str,
) -> None:
    secret = "canary-parameter-value"
    db = Database(pg_url)
    try:
        # 22P02: PostgreSQL's own message quotes the value; ours does not.
        with pytest.raises(BadRequest) as refused_value:
            async with db.transaction() as conn:
                await conn.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": secret})
        assert secret not in refused_value.value.message
        # A parameter asyncpg cannot encode (an int past a 32-bit column) is the value's fault.
        with pytest.raises(BadRequest):
            async with db.transaction() as conn:
                await conn.execute(sa.text("SELECT CAST(:v AS int4)"), {"v": 2**40})
        # Any other error is the platform's, left as it is, with its parameters hidden.
        with pytest.raises(sa.exc.ProgrammingError) as bug:
            async with db.transaction() as conn:
                await conn.execute(sa.text("SELECT :v, no_such_column"), {"v": secret})
        assert secret not in str(bug.value)
    finally:
        await db.dispose()


async def test_a_database_starting_up_is_service_unavailable() -> None:
    starting = StartingPostgres()
    await starting.open()
    db = Database(f"postgresql://u:p@127.0.0.1:{starting.port}/db")
    try:
        with pytest.raises(ServiceUnavailable):
            await db.ping()
    finally:
        await db.dispose()
        await starting.close()


async def test_requests_while_the_database_starts_up_are_503_with_retry_after(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    real = make_url(pg_url)
    async with proxy_to(real.host or "127.0.0.1", real.port or 5432) as proxy:
        through_proxy = real.set(host="127.0.0.1", port=proxy.port)
        database_url = through_proxy.render_as_string(hide_password=False)
        async with running_platform(services, database_url, models, workers=0) as spine:
            assert (await spine.client.get("/v1/tasks")).status_code == 200
            await proxy.shut()
            starting = StartingPostgres()
            await starting.open(proxy.port)
            try:
                for _ in range(3):  # a dropped pooled connection first, then new ones refused
                    for response in (
                        await spine.client.get("/v1/tasks"),
                        await spine.client.post("/v1/tasks", json=CHAT),
                        await spine.client.get("/v1/agents"),
                    ):
                        assert response.status_code == 503, response.text
                        assert response.json()["error"]["type"] == "service_unavailable"
                        assert int(response.headers["retry-after"]) >= 1
            finally:
                await starting.close()


# -- this session's new inputs: event remapping, a key's rate limits, the console's lookups ------


def key_id_of(key: str) -> str:
    return key.split("_")[1]  # spn_<id>_<secret>


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/events/remap", {"limit": 0}, "limit"),
        ("POST", "/v1/events/remap", {"limit": 10_001}, "limit"),
        ("POST", "/v1/events/remap", {"type": "x" * 256}, "type"),
        ("POST", "/v1/events/remap", {"type": "a\x00b"}, "type"),
        ("PUT", "/v1/keys/{key}/limits", {"requests_per_minute": -1}, "requests_per_minute"),
        ("PUT", "/v1/keys/{key}/limits", {"tokens_per_minute": 2**40}, "tokens_per_minute"),
        ("PUT", "/v1/keys/{key}/limits", {"requests_per_minute": "many"}, "requests_per_minute"),
    ],
)
async def test_new_bodies_refuse_bad_fields_by_name(
    spine: RunningPlatform, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    url = path.replace("{key}", key_id_of(spine.key))
    refused(await spine.client.request(method, url, **escaped(body)), field)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/api/mappings?type=a%00b",
        "/ui/api/graph/nodes/Person%3A%00/events",
        "/ui/api/tasks/a%00b/calls",
    ],
)
async def test_the_console_lookups_refuse_bad_input_without_a_5xx(
    spine: RunningPlatform, path: str
) -> None:
    response = await spine.client.get(path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert "error" in response.json()
