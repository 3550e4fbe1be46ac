"""Circuit breaker for one origin instance, and the origin's Prometheus series (breaker state, latency).

Rule: the breaker opens when `failure_threshold` failures land within `window_s` seconds (a count over a
sliding window, so a trickle of old errors never trips it), stays open `open_s`, then lets exactly one
probe through (half-open): the probe's success closes it, its failure re-opens it for another `open_s`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Gauge, Histogram

from cacheman.observability import REGISTRY

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

BREAKER_STATE = Gauge(
    "hotpath_origin_breaker_state",
    "Circuit breaker state per origin instance: 0 closed, 1 half-open, 2 open",
    ["instance"],
    registry=REGISTRY,
    multiprocess_mode="livemax",  # --workers N: the most open any process's breaker is
)
ORIGIN_SECONDS = Histogram(
    "hotpath_origin_seconds",
    "Origin call latency by origin instance, operation and outcome (ok, error, timeout, rejected)",
    ["instance", "op", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)


class CircuitBreaker:
    """Closed → (N failures in the window) → open → (after open_s) → half-open → one probe → closed | open."""

    def __init__(
        self,
        instance: str,
        *,
        failure_threshold: int = 5,
        window_s: float = 10.0,
        open_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1 (HOTPATH_ORIGIN_BREAKER_FAILURES)")
        self.instance = instance
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.open_s = open_s
        self._clock = clock
        self._failures: deque[float] = deque()
        self._state = CLOSED
        self._opened_at = 0.0
        self._probe_started: float | None = None
        BREAKER_STATE.labels(instance).set(0)

    def _set(self, state: str) -> None:
        self._state = state
        BREAKER_STATE.labels(self.instance).set(_STATE_VALUE[state])

    @property
    def state(self) -> str:
        """Current state; an open breaker whose open_s has elapsed reads as half-open."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.open_s:
            self._set(HALF_OPEN)
            self._probe_started = None
        return self._state

    @property
    def retry_after_s(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None when it is not open (closed, or half-open
        with its probe under way), i.e. when there is no known time to say "try again then"."""
        if self.state != OPEN:
            return None
        return max(0.0, self.open_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go to this instance now? In half-open this takes the single probe slot."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        now = self._clock()
        # A probe whose caller vanished (cancelled, never recorded) must not wedge the breaker half-open.
        if self._probe_started is None or now - self._probe_started >= self.open_s:
            self._probe_started = now
            return True
        return False

    def record_success(self) -> None:
        if self._state != CLOSED:
            self._set(CLOSED)
        self._failures.clear()
        self._probe_started = None

    def record_failure(self) -> None:
        now = self._clock()
        if self.state == HALF_OPEN:
            self._trip(now)
            return
        if self._state == OPEN:
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.failure_threshold:
            self._trip(now)

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._failures.clear()
        self._probe_started = None
        self._set(OPEN)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.instance!r}, state={self.state})"
