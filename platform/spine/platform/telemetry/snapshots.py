"""Metrics read from a snapshot when scraped: JetStream's streams and consumers, and the
circuit breakers of this process's model routers (``spine_jetstream_*``,
``spine_model_breaker_state``), on the registry of :mod:`~spine.platform.telemetry.metrics`.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spine.platform.telemetry.metrics import GUARD, REGISTRY

__all__ = ["BreakerSource", "ConsumerState", "StreamState", "observe_breakers", "set_jetstream"]


@dataclass(slots=True, kw_only=True, frozen=True)
class StreamState:
    """What a JetStream stream holds."""

    stream: str
    messages: int
    bytes: int


@dataclass(slots=True, kw_only=True, frozen=True)
class ConsumerState:
    """Where a durable JetStream consumer stands.

    ``pending`` is its lag (messages not yet delivered); ``ack_pending`` those delivered and not
    yet acknowledged; ``acked`` the stream sequence it acknowledged up to (it only grows, so its
    rate is the consumer's throughput: graph ingestion's, for ``graph-ingest``).
    """

    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int
    acked: int


class _JetStreamSnapshot(Collector):
    """The last streams and consumers read (:func:`set_jetstream`), as metric families."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: list[StreamState] = []
        self._consumers: list[ConsumerState] = []

    def replace(self, streams: list[StreamState], consumers: list[ConsumerState]) -> None:
        with self._lock:
            self._streams, self._consumers = streams, consumers

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            streams, consumers = self._streams, self._consumers
        messages = GaugeMetricFamily(
            "spine_jetstream_stream_messages",
            "Messages a JetStream stream holds (queue depth; DLQ size for *_DLQ).",
            labels=["stream"],
        )
        size = GaugeMetricFamily(
            "spine_jetstream_stream_bytes", "Bytes a JetStream stream holds.", labels=["stream"]
        )
        for s in streams:
            messages.add_metric([s.stream], s.messages)
            size.add_metric([s.stream], s.bytes)
        labels = ["stream", "consumer"]
        pending = GaugeMetricFamily(
            "spine_jetstream_consumer_pending",
            "Messages a consumer has not been delivered yet (its lag).",
            labels=labels,
        )
        ack_pending = GaugeMetricFamily(
            "spine_jetstream_consumer_ack_pending",
            "Messages delivered to a consumer and not yet acknowledged.",
            labels=labels,
        )
        redelivered = GaugeMetricFamily(
            "spine_jetstream_consumer_redelivered",
            "Messages a consumer is redelivering now.",
            labels=labels,
        )
        acked = CounterMetricFamily(
            "spine_jetstream_consumer_acked",
            "Stream sequence a consumer acknowledged up to; its rate is the consumer's throughput.",
            labels=labels,
        )
        for c in consumers:
            key = [c.stream, c.consumer]
            pending.add_metric(key, c.pending)
            ack_pending.add_metric(key, c.ack_pending)
            redelivered.add_metric(key, c.redelivered)
            acked.add_metric(key, c.acked)
        yield from (messages, size, pending, ack_pending, redelivered, acked)


_JETSTREAM = _JetStreamSnapshot()
REGISTRY.register(_JETSTREAM)


def set_jetstream(streams: Iterable[StreamState], consumers: Iterable[ConsumerState]) -> None:
    """Replace the JetStream snapshot a scrape shows."""
    _JETSTREAM.replace(list(streams), list(consumers))


BreakerSource = Callable[[], Iterable[tuple[str, str, str]]]
"""Lists a process's circuit breakers as (model, kind, state) with state ``closed``,
``half_open`` or ``open``."""

_BREAKER_LEVEL = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class _Breakers(Collector):
    """The circuit breakers of this process's model routers, read when scraped.

    A bound method is held weakly (a router that is gone drops out); when two routers of one
    process list the same model, the worse state shows.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[Callable[[], BreakerSource | None]] = []

    def add(self, source: BreakerSource) -> None:
        held: Callable[[], BreakerSource | None] = (
            weakref.WeakMethod(source) if inspect.ismethod(source) else (lambda: source)
        )
        with self._lock:
            self._sources = [s for s in self._sources if s() is not None] + [held]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "spine_model_breaker_state",
            "A model's circuit breaker in this process: 0 closed, 1 half open, 2 open.",
            labels=["model", "kind"],
        )
        with self._lock:
            sources = [s() for s in self._sources]
        levels: dict[tuple[str, str], float] = {}
        for source in sources:
            if source is None:
                continue
            for model, kind, state in source():
                key = (GUARD.value("model", model), str(kind))
                level = _BREAKER_LEVEL.get(str(state), 2.0)
                levels[key] = max(level, levels.get(key, 0.0))
        for (model, kind), level in levels.items():
            family.add_metric([model, kind], level)
        yield family


_BREAKERS = _Breakers()
REGISTRY.register(_BREAKERS)


def observe_breakers(source: BreakerSource) -> None:
    """Show the breakers ``source`` lists on every scrape of this process.

    A bound method is held weakly: its object may go away, and its breakers with it.
    """
    _BREAKERS.add(source)
