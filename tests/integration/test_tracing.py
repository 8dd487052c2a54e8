"""One trace across processes: ``POST /v1/tasks`` in the API, the task's JetStream message, and
the ``spine worker`` process that runs it, with its model and tool calls; and that process's
own ``/metrics``, which move with the task it ran.

The API runs in the test's process, its spans in memory; the worker is a real subprocess
exporting OTLP/HTTP (``GENAI_OTEL__ENDPOINT``) to a small collector in the test, so the trace
context can only have crossed in the message's NATS headers. A worker process takes seconds to
start (its model warm-up), so one start serves both the trace and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from spine.platform.settings import OtelSettings
from spine.platform.telemetry import setup_tracing, shutdown_tracing, task_published
from support.cluster import FAKE_MODEL, write_models_file
from support.fake_models import FakeModelServer, ModelRequest, Rule, ToolCall
from support.live_platform import running_platform
from support.ports import free_port
from support.reliability import WorkerProcess, worker_env
from support.scraping import Samples, assert_no_ids, scrape, value

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

PROMPT = "add them up for the trace"


@dataclass(frozen=True)
class ExportedSpan:
    """A span as the collector received it over OTLP/HTTP."""

    service: str
    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any]


class Collector:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # the exporter keeps its connection alive between batches
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (
                        line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:]
                    )
                    if name
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                self._keep(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                    + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            resource_attributes = _attributes(resource.resource.attributes)
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ExportedSpan(
                            service=str(resource_attributes.get("service.name")),
                            name=span.name,
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_id=int.from_bytes(span.parent_span_id, "big")
                            if span.parent_span_id
                            else None,
                            attributes=_attributes(span.attributes),
                        )
                    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@contextlib.asynccontextmanager
async def collector() -> AsyncIterator[Collector]:
    running = Collector()
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def api_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the API), before its app is built."""
    exporter = InMemorySpanExporter()
    setup_tracing(OtelSettings(), role="api", exporter=exporter)
    try:
        yield exporter
    finally:
        shutdown_tracing()


async def first_scrape(url: str, worker: WorkerProcess) -> Samples:
    """Scrape ``url`` once the worker process listens there."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        with contextlib.suppress(httpx.ConnectError):
            return await scrape(url)
        assert worker.alive(), worker.log()
        assert asyncio.get_running_loop().time() < deadline, f"nothing listens at {url}"
        await asyncio.sleep(0.05)


def write_agent(folder: Path) -> Path:
    folder.mkdir()
    (folder / "math.yaml").write_text(
        "name: math\ndescription: adds\ninstructions: You are math.\n"
        "model: {models: [llama3.2]}\ntools: [calculator]\nmax_steps: 4\n"
    )
    return folder


def script_calculation(models: FakeModelServer) -> None:
    def first(request: ModelRequest) -> bool:
        return request.last_role != "tool"

    def after_tool(request: ModelRequest) -> bool:
        return request.last_role == "tool"

    models.add(
        Rule(
            when=first,
            containing=PROMPT,
            tool_calls=[ToolCall(name="calculator", arguments={"expression": "2+3"}, id="c1")],
        )
    )
    models.add(Rule(when=after_tool, containing=PROMPT, reply="It is 5."))


@pytest.fixture
def models() -> Iterator[FakeModelServer]:
    """A model server of this test's own, listing one model the models file describes.

    With nothing left unknown, the worker's warm-up asks no LiteLLM child (seconds of CPU).
    """
    with FakeModelServer(models=[FAKE_MODEL]) as server:
        yield server


async def test_a_worker_process_continues_the_apis_trace_and_counts_its_run(
    services: Any,
    pg_url: str,
    models: FakeModelServer,
    tmp_path: Path,
    api_spans: InMemorySpanExporter,
) -> None:
    script_calculation(models)
    agents = write_agent(tmp_path / "agents")
    models_file = write_models_file(tmp_path / "models.yaml")
    port = free_port()
    async with (
        collector() as otlp,
        running_platform(
            services, pg_url, models, workers=0, agents_dir=agents, models_file=models_file
        ) as spine,
    ):
        env = worker_env(
            database_url=pg_url,
            nats_url=services.nats_url,
            ollama_url=models.url,
            data_dir=tmp_path / "data",
            GENAI_AGENTS_DIR=str(agents),
            GENAI_MODELS_FILE=str(models_file),
            GENAI_OTEL__ENDPOINT=f"http://127.0.0.1:{otlp.port}",
            GENAI_METRICS__PORT=str(port),
            GENAI_METRICS__PORT_SPAN="1",
            OTEL_BSP_SCHEDULE_DELAY="100",  # export within moments, not every 5 s
        )
        worker = WorkerProcess("traced-worker", env, tmp_path / "worker", concurrency=2)
        worker_metrics = f"http://127.0.0.1:{port}/metrics"
        try:
            worker.start()
            before = await first_scrape(worker_metrics, worker)  # it listens before warm-up
            api_before = await scrape(f"{spine.url}/metrics")
            posted = await spine.client.post(
                "/v1/tasks", json={"agent": "math", "input": {"prompt": PROMPT}}
            )
            assert posted.status_code == 202, posted.text
            task_id = posted.json()["id"]
            done = await spine.wait_for(task_id, timeout=90)
            assert done["state"] == "succeeded", done
            after = await scrape(worker_metrics)
            api_after = await scrape(f"{spine.url}/metrics")

            # The API's side: its server span, and the publish inside it.
            ours = api_spans.get_finished_spans()
            server = _one(
                s
                for s in ours
                if s.kind is SpanKind.SERVER
                and (s.attributes or {}).get("http.route") == "/v1/tasks"
                and (s.attributes or {}).get("http.request.method") == "POST"
            )
            sent = _one(s for s in ours if s.name == "send spine.tasks.normal")
            trace_id = server.context.trace_id
            assert sent.context.trace_id == trace_id
            assert sent.parent is not None and sent.parent.span_id == server.context.span_id
            assert (sent.attributes or {})["spine.task.id"] == task_id

            # The worker's side, as its process exported it.
            deadline = asyncio.get_running_loop().time() + 30
            while not any(s.name == "process spine.tasks.normal" for s in otlp.spans):
                assert worker.alive(), worker.log()
                assert asyncio.get_running_loop().time() < deadline, "no worker spans arrived"
                await asyncio.sleep(0.1)

            # Another traceparent, the same Nats-Msg-Id: JetStream still drops the duplicate.
            headers = {"Spine-Tenant": spine.tenant}
            with task_published("spine.tasks.normal", headers, task_id):
                again = await spine.platform.bus.publish_durable(
                    "spine.tasks.normal",
                    json.dumps(
                        {"task_id": task_id, "tenant": spine.tenant, "agent": "math"}
                    ).encode(),
                    msg_id=task_id,
                    headers=headers,
                )
            assert "traceparent" in headers and again.duplicate

            log = worker.log()
        finally:
            # In a thread: the worker's last export on exit needs this loop's collector.
            await asyncio.to_thread(worker.stop)

    # Its own /metrics: the run, the tool call, its breaker; the API counted the submission.
    assert value(after, "spine_process_info", role="worker") == 1
    ran = value(after, "spine_task_run_seconds_count", agent="math")
    assert ran == value(before, "spine_task_run_seconds_count", agent="math") + 1
    assert value(after, "spine_tasks_running", agent="math") == 0  # up, then down again
    calculated = value(after, "spine_tool_calls_total", tool="calculator", outcome="ok")
    assert calculated == value(before, "spine_tool_calls_total", tool="calculator") + 1
    assert {"model": "llama3.2", "kind": "chat"} in [
        labels for name, labels, _ in after if name == "spine_model_breaker_state"
    ]
    assert value(after, "spine_model_breaker_state", model="llama3.2") == 0  # closed
    submitted = value(api_after, "spine_tasks_submitted_total", agent="math")
    assert submitted == value(api_before, "spine_tasks_submitted_total", agent="math") + 1
    assert_no_ids(after, task_id)

    # One trace: the API's spans, then the worker's, joined through the message.

    theirs = [s for s in otlp.spans if s.trace_id == trace_id]
    assert {s.service for s in theirs} == {"genai-spine-worker"}
    processed = _one(s for s in theirs if s.name == "process spine.tasks.normal")
    assert processed.parent_id == sent.context.span_id  # crossed in the NATS headers
    assert processed.attributes["spine.task.id"] == task_id
    assert processed.attributes["spine.task.agent"] == "math"
    calls = [s for s in theirs if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert len(calls) == 2, [s.name for s in theirs]
    for call in calls:
        assert call.name == "chat llama3.2"
        assert call.attributes["gen_ai.request.model"] == "llama3.2"
        assert call.attributes["gen_ai.provider.name"] == "ollama"
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
        assert call.attributes["gen_ai.usage.output_tokens"] >= 0
    tool = _one(s for s in theirs if s.name == "execute_tool calculator")
    # Every worker span hangs from the consumer span, in the API's trace.
    by_id = {s.span_id: s for s in theirs}
    for span in [*calls, tool]:
        assert processed.span_id in _ancestors(span, by_id), span.name
    assert not any(PROMPT in str(s.attributes) for s in otlp.spans)  # no prompt text
    assert f"trace={trace_id:032x}" in log  # the worker's log lines name the trace


def _ancestors(span: ExportedSpan, by_id: dict[int, ExportedSpan]) -> list[int]:
    seen: list[int] = []
    parent = span.parent_id
    while parent is not None:
        seen.append(parent)
        above = by_id.get(parent)
        parent = above.parent_id if above is not None else None
    return seen


def _one(spans: Iterator[ReadableSpan] | Iterator[ExportedSpan] | Any) -> Any:
    found = list(spans)
    assert len(found) == 1, found
    return found[0]
