"""Traces (OpenTelemetry): one trace from ``POST /v1/tasks`` through JetStream to the worker.

:func:`setup_tracing` turns tracing on for this process (an entry point calls it once):
spans go to the OTLP/HTTP collector at ``GENAI_OTEL__ENDPOINT`` in batches, or to the exporter
a test hands in. Without either, tracing stays off and every helper here returns at its first
line (no span, no context switch, no header): off costs a check of one attribute.

Where the spans come from, and how they join into one trace:

- the API's requests: FastAPI's own server spans (:func:`http_telemetry` configures them: no
  spans for ``/metrics`` and the health probes); a caller's ``traceparent`` is followed;
- publishing a task: a producer span, and its context in the message's NATS headers as a W3C
  ``traceparent`` (:func:`task_published`), beside ``Nats-Msg-Id``;
- running it: the worker's consumer span is a child of that context (:func:`task_delivered`);
  a task the outbox sweeper published (NATS was down at submit) starts a trace of its own;
- each model call: a client span with the GenAI semantic-convention attributes (model,
  provider, tokens; :func:`model_call`); prompt and answer text only with
  ``GENAI_OTEL__CAPTURE_PROMPTS``;
- each tool call (:func:`tool_call`).

The tracer provider is this process's, not OpenTelemetry's global one (which can be set once
per process and which libraries may fill): like the metrics registry, it is process-wide.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from spine.platform.settings import OtelSettings

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "ModelCallSpan",
    "annotate",
    "http_telemetry",
    "model_call",
    "setup_tracing",
    "shutdown_tracing",
    "start_model_call",
    "task_delivered",
    "task_published",
    "tool_call",
    "tracing_active",
]

logger = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_TEXT = 16_000  # characters of prompt or answer text a span may carry, when allowed
_UNTRACED = frozenset({"/metrics", "/healthz", "/readyz"})
_OFF = nullcontext()  # what each helper returns when tracing is off: reusable, stateless


@dataclass(slots=True)
class _Tracing:
    """This process's tracing: None until :func:`setup_tracing` turned it on."""

    provider: TracerProvider | None = None
    tracer: Tracer | None = None
    capture_prompts: bool = False


_STATE = _Tracing()


def setup_tracing(
    settings: OtelSettings, *, role: str, exporter: SpanExporter | None = None
) -> bool:
    """Turn tracing on for this process, as ``role`` (``api``, ``worker``, ``learner``).

    Spans go to ``exporter`` when given (each as it ends: for tests), else to the OTLP/HTTP
    collector at ``settings.endpoint`` in batches. With neither, tracing is left as it is
    (off, unless an earlier call turned it on). Return whether tracing is on.
    """
    if exporter is None and settings.endpoint is None:
        return _STATE.tracer is not None
    # The SDK is imported only here: with tracing off no process loads it.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    shutdown_tracing()
    resource = Resource.create(
        {
            "service.name": f"{settings.service_name}-{role}",
            "service.namespace": settings.service_name,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        assert settings.endpoint is not None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = traces_url(settings.endpoint)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        logger.info("traces to %s as %s-%s", url, settings.service_name, role)
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer("spine")
    _STATE.capture_prompts = settings.capture_prompts
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered and turn tracing off (entry points, on exit)."""
    provider = _STATE.provider
    _STATE.provider = _STATE.tracer = None
    _STATE.capture_prompts = False
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # a collector that is gone must not fail the exit
            logger.warning("could not export the last spans", exc_info=True)


def tracing_active() -> bool:
    """Tell whether this process records spans."""
    return _STATE.tracer is not None


def traces_url(endpoint: str) -> str:
    """Return the OTLP/HTTP traces URL of a collector given by its base URL or that URL."""
    path = urlsplit(endpoint).path
    return endpoint if path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def http_telemetry() -> TelemetryConfig:
    """Return FastAPI's ``telemetry`` settings: server spans when tracing is on, else none.

    Read when the app is built, so set tracing up first. Metrics stay Prometheus's
    (:mod:`~spine.platform.telemetry.metrics`); FastAPI's OpenTelemetry logs are not used.
    """
    if _STATE.provider is None:
        return {"tracing": False, "metrics": False, "logs": False}
    return {
        "tracer_provider": _STATE.provider,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": _untraced,
    }


def _untraced(scope: Mapping[str, Any]) -> bool:
    # Scrapes and probes every few seconds would bury the traces worth reading.
    return scope.get("path") in _UNTRACED


def annotate(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Add attributes to the current span, if one is recording."""
    if _STATE.tracer is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


# -- a task through JetStream -----------------------------------------------------------------


def task_published(
    subject: str, headers: dict[str, str], task_id: str
) -> AbstractContextManager[None]:
    """Trace publishing a task message, and put its context in the message's ``headers``."""
    tracer = _STATE.tracer
    if tracer is None:
        return _OFF
    return _published(tracer, subject, headers, task_id)


@contextmanager
def _published(
    tracer: Tracer, subject: str, headers: dict[str, str], task_id: str
) -> Iterator[None]:
    with _span(
        tracer,
        f"send {subject}",
        SpanKind.PRODUCER,
        {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
            "spine.task.id": task_id,
        },
    ):
        _PROPAGATOR.inject(headers)
        yield


def task_delivered(subject: str, headers: Mapping[str, str] | None) -> AbstractContextManager[None]:
    """Trace handling a delivered task message, in the trace its ``traceparent`` continues."""
    tracer = _STATE.tracer
    if tracer is None:
        return _OFF
    return _delivered(tracer, subject, headers)


@contextmanager
def _delivered(tracer: Tracer, subject: str, headers: Mapping[str, str] | None) -> Iterator[None]:
    parent = _PROPAGATOR.extract(headers or {})
    with _span(
        tracer,
        f"process {subject}",
        SpanKind.CONSUMER,
        {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
        },
        context=parent,
    ):
        yield


# -- tool calls -------------------------------------------------------------------------------


def tool_call(name: str, call_id: str) -> AbstractContextManager[Callable[[str | None], None]]:
    """Trace one tool call; call what it yields with the error type (None: it succeeded)."""
    tracer = _STATE.tracer
    if tracer is None:
        return _OFF_TOOL
    return _tool_call(tracer, name, call_id)


@contextmanager
def _tool_call(tracer: Tracer, name: str, call_id: str) -> Iterator[Callable[[str | None], None]]:
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
    }
    with _span(tracer, f"execute_tool {name}", SpanKind.INTERNAL, attributes) as span:

        def outcome(error_type: str | None) -> None:
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(StatusCode.ERROR)

        yield outcome


def _ignore(_: str | None) -> None:
    return None


_OFF_TOOL = nullcontext(_ignore)


# -- model calls ------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelCallSpan:
    """The span of one model call: what answered, with how many tokens, or how it failed."""

    span: Span
    operation: str
    capture_prompts: bool
    requested: str | None

    def answered(
        self,
        *,
        model: str,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        cache: str | None = None,
        cost: float | None = None,
        text: str | None = None,
    ) -> None:
        """Record what answered the call."""
        attributes: dict[str, str | int | float] = {
            "gen_ai.response.model": model,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
        }
        if self.requested is None:
            # The router chose the model: that is the model the request went to.
            attributes["gen_ai.request.model"] = model
            self.span.update_name(f"{self.operation} {model}")
        if cache is not None:
            attributes["spine.cache"] = cache
        if cost is not None:
            attributes["spine.cost_usd"] = cost
        if text is not None and self.capture_prompts:
            attributes["gen_ai.output.messages"] = _clip(
                json.dumps([{"role": "assistant", "content": text}], ensure_ascii=False)
            )
        self.span.set_attributes(attributes)

    def failed(self, error: BaseException | str) -> None:
        """Record why the call failed: the exception, or its class of failure."""
        kind = error if isinstance(error, str) else _error_type(error)
        self.span.set_attribute("error.type", kind)
        self.span.set_status(StatusCode.ERROR)

    def end(self) -> None:
        """End the span (once)."""
        self.span.end()


def start_model_call(
    operation: str,
    model: str | None,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    strategy: str | None = None,
) -> ModelCallSpan | None:
    """Start the span of a model call that outlives this frame (a stream); None when off.

    ``operation`` is GenAI's (``chat``, ``embeddings``); ``model`` the one asked for, None when
    the router chooses. End it with :meth:`ModelCallSpan.end`.
    """
    tracer = _STATE.tracer
    if tracer is None:
        return None
    attributes: dict[str, str] = {"gen_ai.operation.name": operation}
    if model is not None:
        attributes["gen_ai.request.model"] = model
    if strategy:
        attributes["spine.routing.strategy"] = strategy
    if messages is not None and _STATE.capture_prompts:
        attributes["gen_ai.input.messages"] = _clip(
            json.dumps(list(messages), ensure_ascii=False, default=str)
        )
    name = f"{operation} {model}" if model is not None else operation
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    return ModelCallSpan(
        span=span, operation=operation, capture_prompts=_STATE.capture_prompts, requested=model
    )


def model_call(
    operation: str,
    model: str | None,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    strategy: str | None = None,
) -> AbstractContextManager[ModelCallSpan | None]:
    """Trace a model call made inside the block (the span is current there); None when off."""
    call = start_model_call(operation, model, messages=messages, strategy=strategy)
    if call is None:
        return _OFF_MODEL
    return _current(call)


_OFF_MODEL: AbstractContextManager[ModelCallSpan | None] = nullcontext(None)


@contextmanager
def _current(call: ModelCallSpan) -> Iterator[ModelCallSpan]:
    with trace.use_span(
        call.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield call
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            call.end()


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def _span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, str],
    *,
    context: Any = None,
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(StatusCode.ERROR)
            raise


def _error_type(exc: BaseException) -> str:
    # A SpineError's class of failure (rate_limited, timeout...); never its message, which may
    # quote the prompt.
    kind = getattr(exc, "error_type", None)
    return kind if isinstance(kind, str) else type(exc).__name__


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
