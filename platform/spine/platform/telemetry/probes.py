"""Values read from elsewhere when ``/metrics`` is scraped: queue depths, task counts, budgets.

A probe is an async function that reads a backing service (JetStream's stream and consumer
info, a count in the database) and records what it read through
:mod:`~spine.platform.telemetry.metrics`. :class:`ProbeSet` runs them on a scrape, at most once
per ``probe_seconds`` (several Prometheus servers, or a fast scrape interval, cost nothing
more), each under ``probe_timeout``: a probe that fails or is slow leaves its last values, logs
a warning and counts in ``spine_metrics_probe_failures_total``; it never fails the scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from spine.platform.telemetry.metrics import REGISTRY

__all__ = ["Probe", "ProbeSet"]

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
"""Reads something and records it; raises when it cannot."""

_FAILURES = Counter(
    "spine_metrics_probe_failures",
    "Scrape-time reads (queue depth, task counts, budgets) that failed or timed out.",
    ["probe"],
    registry=REGISTRY,
)


@dataclass(slots=True, kw_only=True)
class ProbeSet:
    """The probes of one process, run on a scrape with a short cache."""

    max_age: float = 5.0
    timeout: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _probes: dict[str, Probe] = field(default_factory=dict)
    _last: float | None = None
    _running: asyncio.Future[None] | None = None

    def add(self, name: str, probe: Probe) -> None:
        """Run ``probe`` on scrapes from now on (``name`` labels its failures)."""
        self._probes[name] = probe
        _FAILURES.labels(probe=name)

    async def refresh(self) -> None:
        """Run every probe unless they ran within ``max_age``; concurrent scrapes share a run."""
        if self._last is not None and self.clock() - self._last < self.max_age:
            return
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run_all())
        await asyncio.shield(self._running)

    async def _run_all(self) -> None:
        await asyncio.gather(*(self._run(name, probe) for name, probe in self._probes.items()))
        self._last = self.clock()

    async def _run(self, name: str, probe: Probe) -> None:
        try:
            await asyncio.wait_for(probe(), self.timeout)
        except Exception as exc:  # a probe never fails the scrape: its old values stay
            _FAILURES.labels(probe=name).inc()
            logger.warning("metrics probe %s failed: %r", name, exc)
