"""Backpressure: producer-side watermarks with hysteresis, and a worker-side AIMD rate controller.

Producers: enqueue is refused with QueueFull(retry_after) once depth (ready + running jobs) reaches the
high watermark, and stays refused until depth is back to the low one — hysteresis, so a queue hovering
at the limit does not flap between accept and reject on every job. A batch is admitted whole or not at
all (`admit_many`). The check runs inside the enqueue Lua scripts (taskkit/lua/admit.lua mirrors
`admit_many` below), so concurrent producers cannot overshoot.
Workers: an AIMD controller (additive increase, multiplicative decrease, as TCP does) whose state lives
in one Redis hash, so every worker process of a queue slows down together when the downstream says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from taskkit.keys import Keys
from taskkit.scripts import Scripts


@dataclass(frozen=True)
class Watermarks:
    """Queue limits for producers.

    Defaults: high 10,000 jobs, low 5,000; oldest-job age limit off (`max_age_s=0`); Retry-After between
    1 s and 60 s, estimated as (depth - low) / drain rate of the live workers.
    """

    high: int = 10_000
    low: int = 5_000
    max_age_s: float = 0.0
    min_retry_after_s: float = 1.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError(f"need 0 <= low < high, got low={self.low} high={self.high}")


def admit(closed: bool, depth: int, oldest_age_s: float, wm: Watermarks) -> tuple[bool, bool]:
    """Decide one enqueue: returns (accept, closed_after). Pure mirror of the check in enqueue.lua.

    Closed (refusing) starts when depth reaches `high` (or the oldest ready job is older than
    `max_age_s`) and ends only when depth is down to `low` and the age is under the limit.
    """
    return admit_many(closed, depth, 1, oldest_age_s, wm)


def admit_many(closed: bool, depth: int, n: int, oldest_age_s: float, wm: Watermarks) -> tuple[bool, bool]:
    """Decide a request of `n` new jobs as a whole: returns (accept, closed_after). Mirror of lua/admit.lua.

    The hysteresis state moves exactly as in `admit` (it depends on depth and age, not on `n`); the
    request is accepted only if the queue is open and all of it fits: depth + n <= high. A request that
    is merely too big is refused without closing the queue, so a smaller one may still pass.
    """
    aged = wm.max_age_s > 0 and oldest_age_s >= wm.max_age_s
    if closed:
        if depth <= wm.low and not aged:
            closed = False
    elif depth >= wm.high or aged:
        closed = True
    return (not closed and depth + n <= wm.high, closed)


def retry_after(depth: int, wm: Watermarks, drain_rate: float) -> float:
    """Seconds a refused producer should wait: time to drain to the low watermark, clamped."""
    ra = wm.min_retry_after_s
    if drain_rate > 0:
        ra = max(ra, (depth - wm.low) / drain_rate)
    return min(ra, wm.max_retry_after_s)


@dataclass(frozen=True)
class AimdPolicy:
    """Rate limits of an AIMD controller, in downstream calls per second (defaults documented here).

    Starts at `initial` (50/s); +`add_per_s` (5/s) per second of success; ×`beta` (0.5) on a slow-down
    signal, at most once per `cooldown_s` (1 s) so a burst of 429s from concurrent calls counts once.
    """

    initial: float = 50.0
    min: float = 1.0
    max: float = 1000.0
    add_per_s: float = 5.0
    beta: float = 0.5
    cooldown_s: float = 1.0


class AimdController:
    """A rate limiter shared through Redis by every worker of a downstream.

    `await acquire()` before each downstream call (waits for a token), then `await ok()` after a success
    and `await slow_down()` when the downstream said it is overloaded (e.g. a RateLimited error).
    """

    def __init__(self, redis: Any, name: str, *, keys: Keys | None = None, policy: AimdPolicy | None = None,
                 scripts: Scripts | None = None) -> None:
        self.name = name
        self.policy = policy or AimdPolicy()
        self._key = (keys or Keys()).aimd(name)
        self._script = (scripts or Scripts(redis)).aimd
        self.limit = self.policy.initial

    async def _op(self, op: str, cost: float = 1.0) -> tuple[bool, float]:
        p = self.policy
        granted, wait_ms, limit = await self._script(
            keys=[self._key],
            args=[op, int(time.time() * 1000), p.min, p.max, p.initial, p.add_per_s, p.beta,
                  int(p.cooldown_s * 1000), cost],
        )
        self.limit = float(limit)
        from taskkit import metrics

        metrics.AIMD_LIMIT.labels(self.name).set(self.limit)
        return bool(granted), wait_ms / 1000

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait until the shared rate allows one more downstream call."""
        while True:
            granted, wait_s = await self._op("acquire", cost)
            if granted:
                return
            await asyncio.sleep(min(max(wait_s, 0.001), 1.0))

    async def ok(self) -> float:
        """Report a success (additive increase, at most once a second). Returns the limit."""
        await self._op("ok")
        return self.limit

    async def slow_down(self) -> float:
        """Report "the downstream said slow down" (multiplicative decrease, once per cooldown)."""
        await self._op("slow")
        return self.limit

    async def current(self) -> float:
        await self._op("get")
        return self.limit
