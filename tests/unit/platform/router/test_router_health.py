"""The per-model circuit breaker's state machine and the latency moving average."""

from __future__ import annotations

import pytest

from spine.platform.router import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    LatencyAverage,
    ModelHealth,
    Permit,
)


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(policy=BreakerPolicy(failure_threshold=3, cooldown=10.0), clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        permit = breaker.acquire()
        assert permit is not None
        breaker.failed(permit)


def test_closed_breaker_admits_and_counts_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 2
    permit = breaker.acquire()
    assert permit is not None and not permit.probe
    breaker.succeeded(permit)
    assert breaker.failures == 0  # a success breaks the run
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_n_consecutive_failures_open_it_and_it_refuses_during_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    assert breaker.state is BreakerState.OPEN
    assert breaker.acquire() is None
    assert not breaker.would_admit()
    assert breaker.retry_in() == pytest.approx(10.0)
    clock.advance(9.9)
    assert breaker.acquire() is None
    assert breaker.retry_in() == pytest.approx(0.1)


def test_after_the_cooldown_exactly_one_probe_is_let_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(10.0)
    assert breaker.would_admit()
    # Many concurrent callers ask at once: one probes, the others are refused.
    permits = [breaker.acquire() for _ in range(20)]
    granted = [p for p in permits if p is not None]
    assert len(granted) == 1
    assert granted[0].probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.would_admit()


def test_a_successful_probe_closes_it(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe is not None
    breaker.succeeded(probe)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    again = breaker.acquire()
    assert again is not None and not again.probe
    # Closed again, it needs the full run of failures to reopen.
    breaker.failed(again)
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_reopens_it_with_a_fresh_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(15.0)
    probe = breaker.acquire()
    assert probe is not None
    clock.advance(2.0)  # the probe took a while
    breaker.failed(probe)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(10.0)
    clock.advance(9.0)
    assert breaker.acquire() is None
    clock.advance(1.0)
    second = breaker.acquire()
    assert second is not None and second.probe


def test_an_abandoned_probe_frees_the_slot_for_the_next_caller(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe is not None
    breaker.abandoned(probe)
    assert breaker.state is BreakerState.OPEN
    again = breaker.acquire()
    assert again is not None and again.probe


def test_results_of_calls_admitted_before_a_state_change_are_ignored(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()  # admitted while closed, answers after the breaker opened
    assert slow is not None
    fail(breaker, 3)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe is not None
    breaker.succeeded(slow)
    assert breaker.state is BreakerState.HALF_OPEN  # the stale success did not close it
    breaker.failed(slow)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.failed(probe)
    # mypy keeps the narrowing above across the call that changes the state.
    assert breaker.state is BreakerState.OPEN  # type: ignore[comparison-overlap]


def test_a_threshold_of_one_opens_on_the_first_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(policy=BreakerPolicy(failure_threshold=1, cooldown=0), clock=clock)
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    probe = breaker.acquire()  # no cooldown: the next caller probes at once
    assert isinstance(probe, Permit)
    assert probe.probe


@pytest.mark.parametrize(
    ("threshold", "cooldown"), [(0, 1.0), (3, -1.0)], ids=["threshold", "cooldown"]
)
def test_policy_rejects_nonsense(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerPolicy(failure_threshold=threshold, cooldown=cooldown)


def test_latency_average_is_exponentially_weighted() -> None:
    average = LatencyAverage(alpha=0.5)
    assert average.value is None
    assert average.observe(100.0) == 100.0  # the first sample is the average
    assert average.observe(200.0) == 150.0
    assert average.observe(50.0) == 100.0
    assert average.samples == 3


def test_model_health_keeps_a_breaker_and_an_average_per_model(clock: FakeClock) -> None:
    health = ModelHealth(policy=BreakerPolicy(failure_threshold=1, cooldown=5.0), clock=clock)
    assert health.latency_ms("a") is None
    health.observe_latency("a", 40.0)
    health.observe_latency("b", 10.0)
    assert health.latency_ms("a") == 40.0
    assert health.latency_ms("b") == 10.0
    assert health.breaker("a") is health.breaker("a")
    fail(health.breaker("a"))
    assert not health.available("a")
    assert health.available("b")
    clock.advance(5.0)
    assert health.available("a")
