"""Per-model health: a circuit breaker and a latency moving average for each model.

A model with a single deployment still gets a breaker of its own, so a dead model is skipped
instead of being retried on every request. Chat and embedding calls to one model have breakers
of their own (a model's embedding endpoint failing says nothing of its chat endpoint), and only
a failure to answer moves a breaker: a request the provider refuses (a 4xx, a prompt too long)
shows the model is up, so one tenant's bad input never cuts the model off for the others.
The breaker's states::

    closed ──N consecutive failures──► open ──cooldown passed, one caller probes──► half-open
      ▲                                  ▲                                              │
      └────────── the probe succeeds ────┼──────────────────────────────────────────────┤
                                         └──────────── the probe fails ─────────────────┘

While half-open exactly one call (the probe) is let through; concurrent callers are refused
and fall back. Results of calls admitted before the breaker last changed state are stale and
do not move it. Time comes from an injected :class:`Clock`, so tests do not sleep.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from spine.platform.telemetry import observe_breakers

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CallKind",
    "CircuitBreaker",
    "Clock",
    "HealthView",
    "LatencyAverage",
    "ModelHealth",
    "MonotonicClock",
    "Permit",
]


CallKind = Literal["chat", "embedding"]


class Clock(Protocol):
    """A source of monotonic time in seconds."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...


class MonotonicClock:
    """The process's monotonic clock."""

    def now(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()


class BreakerState(enum.StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True, kw_only=True, frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open."""

    failure_threshold: int = 3
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cooldown < 0:
            raise ValueError("cooldown must not be negative")


@dataclass(slots=True, kw_only=True, frozen=True)
class Permit:
    """Leave to make one call; hand it back with the call's result."""

    generation: int
    probe: bool


@dataclass(slots=True, kw_only=True)
class CircuitBreaker:
    """Counts consecutive failures of one model and refuses calls while it cools down."""

    policy: BreakerPolicy
    clock: Clock
    _state: BreakerState = BreakerState.CLOSED
    _failures: int = 0
    _opened_at: float = 0.0
    _generation: int = 0

    @property
    def state(self) -> BreakerState:
        """The current state (open stays open until a caller takes the probe)."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.cooldown - self.clock.now())

    def would_admit(self) -> bool:
        """Tell whether :meth:`acquire` would give a permit now, without taking one."""
        if self._state is BreakerState.CLOSED:
            return True
        return self._state is BreakerState.OPEN and self.retry_in() == 0.0

    def acquire(self) -> Permit | None:
        """Take leave to call the model, or None while it is open or being probed."""
        if self._state is BreakerState.CLOSED:
            return Permit(generation=self._generation, probe=False)
        if self._state is BreakerState.OPEN and self.retry_in() == 0.0:
            self._move(BreakerState.HALF_OPEN)
            return Permit(generation=self._generation, probe=True)
        return None

    def succeeded(self, permit: Permit) -> None:
        """Record that the model answered: a probe closes the breaker."""
        if permit.generation != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.CLOSED)
        self._failures = 0

    def failed(self, permit: Permit) -> None:
        """Record a failure: a failed probe, or the N-th in a row, opens the breaker."""
        if permit.generation != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.policy.failure_threshold:
            self._open()

    def abandoned(self, permit: Permit) -> None:
        """Hand back a permit whose call ended without a verdict (e.g. cancelled).

        An abandoned probe frees the half-open slot at once, so the next caller probes.
        """
        if permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.OPEN)

    def _open(self) -> None:
        self._opened_at = self.clock.now()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._failures = 0
        self._generation += 1


@dataclass(slots=True, kw_only=True)
class LatencyAverage:
    """An exponentially weighted moving average of latencies in milliseconds."""

    alpha: float = 0.3
    value: float | None = None
    samples: int = 0

    def observe(self, latency_ms: float) -> float:
        """Fold one latency into the average and return the new average."""
        if self.value is None:
            self.value = latency_ms
        else:
            self.value = self.alpha * latency_ms + (1 - self.alpha) * self.value
        self.samples += 1
        return self.value


class HealthView(Protocol):
    """What routing strategies may ask about models' health."""

    def available(self, model: str, kind: CallKind = "chat") -> bool:
        """Tell whether a call of ``kind`` to ``model`` would be let through now."""
        ...

    def latency_ms(self, model: str) -> float | None:
        """Return the moving-average latency of ``model``, None before any answer."""
        ...


@dataclass(slots=True, kw_only=True, weakref_slot=True)
class ModelHealth:
    """A breaker per (model, kind of call) and a latency average per model, made on first use.

    Its breakers show on this process's ``/metrics`` (``spine_model_breaker_state``) for as
    long as it lives.
    """

    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    clock: Clock = field(default_factory=MonotonicClock)
    latency_alpha: float = 0.3
    _breakers: dict[tuple[str, CallKind], CircuitBreaker] = field(default_factory=dict)
    _latency: dict[str, LatencyAverage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        observe_breakers(self.breaker_states)

    def breaker_states(self) -> list[tuple[str, str, str]]:
        """List every breaker as (model, kind of call, state)."""
        return [
            (model, kind, breaker.state.value)
            for (model, kind), breaker in list(self._breakers.items())
        ]

    def breaker(self, model: str, kind: CallKind = "chat") -> CircuitBreaker:
        """Return the breaker of ``model``'s calls of ``kind``."""
        found = self._breakers.get((model, kind))
        if found is None:
            found = CircuitBreaker(policy=self.policy, clock=self.clock)
            self._breakers[model, kind] = found
        return found

    def available(self, model: str, kind: CallKind = "chat") -> bool:
        """Tell whether a call of ``kind`` to ``model`` would be let through now."""
        return self.breaker(model, kind).would_admit()

    def latency_ms(self, model: str) -> float | None:
        """Return the moving-average latency of ``model``, None before any answer."""
        average = self._latency.get(model)
        return None if average is None else average.value

    def observe_latency(self, model: str, latency_ms: float) -> None:
        """Fold one answer's latency into the model's average."""
        average = self._latency.get(model)
        if average is None:
            average = self._latency[model] = LatencyAverage(alpha=self.latency_alpha)
        average.observe(latency_ms)
