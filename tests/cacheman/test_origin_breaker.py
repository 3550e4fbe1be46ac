"""Circuit breaker state machine on a fake clock: window counting, open, half-open probe, close, re-open."""

from __future__ import annotations

import pytest

from cacheman.observability import REGISTRY
from cacheman.origin.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gauge(instance: str) -> float | None:
    return REGISTRY.get_sample_value("hotpath_origin_breaker_state", {"instance": instance})


def make(name: str, **kw) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(name, clock=clock, **kw), clock


def test_opens_after_n_failures_within_the_window():
    b, _ = make("t-open", failure_threshold=3, window_s=10, open_s=5)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == CLOSED and gauge("t-open") == 0
    assert b.retry_after_s is None
    b.record_failure()
    assert b.state == OPEN and gauge("t-open") == 2
    assert not b.allow()
    assert b.retry_after_s == pytest.approx(5)


def test_old_failures_fall_out_of_the_window():
    b, clock = make("t-window", failure_threshold=3, window_s=10, open_s=5)
    b.record_failure()
    b.record_failure()
    clock.t += 11  # both are now older than the window
    b.record_failure()
    b.record_failure()
    assert b.state == CLOSED
    b.record_failure()
    assert b.state == OPEN


def test_success_resets_the_count():
    b, _ = make("t-reset", failure_threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == CLOSED


def test_half_open_lets_exactly_one_probe_and_success_closes():
    b, clock = make("t-probe", failure_threshold=1, open_s=5)
    b.record_failure()
    assert b.state == OPEN
    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.2
    assert b.state == HALF_OPEN and gauge("t-probe") == 1
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else waits for the probe's result
    assert not b.allow()
    b.record_success()
    assert b.state == CLOSED and gauge("t-probe") == 0
    assert b.allow() and b.allow()


def test_failed_probe_reopens_for_another_period():
    b, clock = make("t-reopen", failure_threshold=2, open_s=5)
    b.record_failure()
    b.record_failure()
    clock.t += 5
    assert b.allow()
    b.record_failure()
    assert b.state == OPEN
    assert b.retry_after_s == pytest.approx(5)
    clock.t += 5
    assert b.state == HALF_OPEN and b.retry_after_s is None


def test_lost_probe_does_not_wedge_half_open():
    b, clock = make("t-lost", failure_threshold=1, open_s=2)
    b.record_failure()
    clock.t += 2
    assert b.allow()  # probe taken, its caller is cancelled and never reports
    assert not b.allow()
    clock.t += 2
    assert b.allow()  # a new probe after open_s


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="HOTPATH_ORIGIN_BREAKER_FAILURES"):
        CircuitBreaker("t-bad", failure_threshold=0)
