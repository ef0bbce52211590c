"""The circuit breaker's state machine, driven by an injected clock."""

from __future__ import annotations

import pytest

from central.platform.breaker import BreakerState, CircuitBreaker


class Ticks:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_only() -> None:
    t = Ticks()
    b = CircuitBreaker(failure_threshold=3, reset_timeout=30, clock=t)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    b.record_success()  # a success in between resets the count
    for _ in range(2):
        b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_after() == pytest.approx(30)


def test_half_open_allows_one_trial_then_closes_or_reopens() -> None:
    t = Ticks()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=t)
    b.record_failure()
    t.t += 9.9
    assert not b.allow()
    t.t += 0.1
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()
    assert not b.allow()  # only one trial in flight
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    t.t += 10
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()
    assert b.consecutive_failures == 0


def test_released_trial_can_be_retried() -> None:
    t = Ticks()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=t)
    b.record_failure()
    t.t += 5
    assert b.allow()
    b.release()
    assert b.allow()


@pytest.mark.parametrize(("threshold", "timeout"), [(0, 1.0), (1, 0.0)])
def test_rejects_nonsense_settings(threshold: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failure_threshold=threshold, reset_timeout=timeout)
