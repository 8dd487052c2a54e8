"""Traces in one process: off costs nothing, a task's context rides in NATS headers, model and
tool calls are spans with GenAI attributes (no prompt text unless allowed), logs carry ids."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from spine.platform.app.api import create_app
from spine.platform.errors import RateLimited
from spine.platform.logs import configure_logging
from spine.platform.router.health import BreakerPolicy, ModelHealth
from spine.platform.settings import OtelSettings, load_settings
from spine.platform.telemetry import (
    REGISTRY,
    annotate,
    model_call,
    setup_tracing,
    shutdown_tracing,
    start_model_call,
    task_delivered,
    task_published,
    tracing_active,
)
from spine.platform.telemetry.tracing import http_telemetry, traces_url
from spine.tools.builtin.calculator import calculator_tool
from spine.tools.registry import ToolRegistry
from spine.tools.tool import ToolContext

PROMPT = [{"role": "user", "content": "my secret plan"}]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert setup_tracing(OtelSettings(), role="test", exporter=exporter)
    try:
        yield exporter
    finally:
        shutdown_tracing()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_tracing_is_off_unless_set_up() -> None:
    assert not setup_tracing(OtelSettings(), role="api")  # no endpoint, no exporter
    assert not tracing_active()
    headers = {"Spine-Tenant": "acme"}
    with task_published("tasks.normal", headers, "t1"):
        pass
    assert headers == {"Spine-Tenant": "acme"}  # no traceparent
    with model_call("chat", "llama3.2", messages=PROMPT) as traced:
        assert traced is None
    assert start_model_call("chat", None) is None
    assert http_telemetry() == {"tracing": False, "metrics": False, "logs": False}


def test_a_task_message_carries_its_trace_to_the_consumer(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test", tracer_provider=http_telemetry()["tracer_provider"])
    headers = {"Nats-Msg-Id": "t1", "Spine-Tenant": "acme"}
    with (
        tracer.start_as_current_span("POST /v1/tasks"),
        task_published("tasks.normal", headers, "t1"),
    ):
        pass
    # What nats-py hands the worker: the same dict of headers, dedupe id untouched.
    assert headers["Nats-Msg-Id"] == "t1"
    assert headers["traceparent"].startswith("00-")
    with task_delivered("tasks.normal", headers):
        annotate({"spine.task.id": "t1"})

    found = by_name(spans)
    server, sent, processed = (
        found["POST /v1/tasks"],
        found["send tasks.normal"],
        found["process tasks.normal"],
    )
    assert sent.kind is SpanKind.PRODUCER and processed.kind is SpanKind.CONSUMER
    assert {s.context.trace_id for s in (server, sent, processed)} == {server.context.trace_id}
    assert sent.parent is not None and sent.parent.span_id == server.context.span_id
    assert processed.parent is not None and processed.parent.span_id == sent.context.span_id
    assert processed.attributes is not None
    assert processed.attributes["spine.task.id"] == "t1"
    assert processed.attributes["messaging.system"] == "nats"


def test_a_message_without_a_traceparent_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with task_delivered("tasks.normal", None):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None


async def test_a_model_call_is_a_client_span_with_genai_attributes_and_no_prompt(
    spans: InMemorySpanExporter,
) -> None:
    with model_call("chat", None, messages=PROMPT, strategy="quality") as traced:
        assert traced is not None
        traced.answered(
            model="llama3.2",
            provider="ollama",
            input_tokens=12,
            output_tokens=3,
            cache="miss",
            cost=0.0,
            text="the answer",
        )
    with pytest.raises(RateLimited), model_call("chat", "gpt-4o"):
        raise RateLimited("slow down")

    found = by_name(spans)
    chat = found["chat llama3.2"]
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "llama3.2"  # the router's choice
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "ollama"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["spine.routing.strategy"] == "quality"
    assert not any("secret" in str(v) or "the answer" in str(v) for v in attributes.values())
    failed = found["chat gpt-4o"]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == RateLimited.error_type
    assert "slow down" not in str(dict(failed.attributes or {}))


def test_prompt_text_is_in_spans_only_when_the_setting_allows_it() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(OtelSettings(capture_prompts=True), role="test", exporter=exporter)
    try:
        with model_call("chat", "llama3.2", messages=PROMPT) as traced:
            assert traced is not None
            traced.answered(
                model="llama3.2", provider="ollama", input_tokens=1, output_tokens=1, text="ok"
            )
    finally:
        shutdown_tracing()
    (span,) = exporter.get_finished_spans()
    assert "my secret plan" in str((span.attributes or {})["gen_ai.input.messages"])
    assert '"ok"' in str((span.attributes or {})["gen_ai.output.messages"])


async def test_each_tool_call_is_a_span_and_a_counted_call(
    spans: InMemorySpanExporter,
) -> None:
    registry = ToolRegistry([calculator_tool()])
    before = REGISTRY.get_sample_value(
        "spine_tool_calls_total", {"tool": "calculator", "outcome": "ok"}
    )
    unknown = REGISTRY.get_sample_value(
        "spine_tool_calls_total", {"tool": "unknown", "outcome": "unknown_tool"}
    )
    ok = await registry.call("calculator", {"expression": "2+3"}, ToolContext(tenant="acme"))
    bad = await registry.call("no-such-tool", {}, ToolContext(tenant="acme"), call_id="c2")
    assert ok.ok and not bad.ok

    found = by_name(spans)
    calc = found["execute_tool calculator"]
    assert (calc.attributes or {})["gen_ai.tool.name"] == "calculator"
    assert calc.status.status_code is not StatusCode.ERROR
    missing = found["execute_tool no-such-tool"]
    assert (missing.attributes or {})["error.type"] == "unknown_tool"
    assert (missing.attributes or {})["gen_ai.tool.call.id"] == "c2"
    after = REGISTRY.get_sample_value(
        "spine_tool_calls_total", {"tool": "calculator", "outcome": "ok"}
    )
    assert after == (before or 0) + 1
    # A name the model made up is counted as "unknown", never as a label value of its own.
    assert (
        REGISTRY.get_sample_value(
            "spine_tool_calls_total", {"tool": "unknown", "outcome": "unknown_tool"}
        )
        == (unknown or 0) + 1
    )


def test_log_lines_carry_the_current_trace_and_span(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        log = logging.getLogger("spine.test")
        log.info("outside any span")
        with task_delivered("tasks.normal", None):
            log.info("inside a span")
            context = trace.get_current_span().get_span_context()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    outside = next(line for line in lines if "outside any span" in line)
    inside = next(line for line in lines if "inside a span" in line)
    assert "trace=" not in outside
    assert f"trace={context.trace_id:032x} span={context.span_id:016x}" in inside


def test_the_collector_url_takes_the_traces_path_when_given_a_base() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"


def test_breakers_show_while_their_router_lives_the_worse_state_winning() -> None:
    policy = BreakerPolicy(failure_threshold=1)
    first, second = ModelHealth(policy=policy), ModelHealth(policy=policy)
    first.breaker("unit-breaker-model")  # closed
    broken = second.breaker("unit-breaker-model")
    permit = broken.acquire()
    assert permit is not None
    broken.failed(permit)  # open

    def level() -> float | None:
        return REGISTRY.get_sample_value(
            "spine_model_breaker_state", {"model": "unit-breaker-model", "kind": "chat"}
        )

    assert level() == 2.0
    del second, broken
    gc.collect()
    assert level() == 0.0  # the open one went away with its router
    del first
    gc.collect()
    assert level() is None


async def test_the_api_traces_requests_but_not_scrapes_and_probes(
    spans: InMemorySpanExporter,
) -> None:
    app = create_app(load_settings(_env_file=None))  # built after tracing was set up
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spine") as client:
        assert (await client.get("/healthz")).status_code == 200
        missing = await client.get(
            "/nothing/here", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
        )
    assert missing.status_code == 404
    (server,) = spans.get_finished_spans()  # none for /healthz
    assert server.kind is SpanKind.SERVER
    assert (server.attributes or {})["http.response.status_code"] == 404
    assert server.context.trace_id == int("ab" * 16, 16)  # the caller's trace goes on
