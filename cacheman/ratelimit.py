"""Per-tenant rate limit: a token bucket in Redis (cacheman/lua/ratelimit.lua), answered as 429 + Retry-After.

Key layout: `{prefix}:{tenant}:ratelimit`, one hash per tenant, so every API process shares the bucket and
the script touches one key, so one Cluster slot. To keep a Redis round trip off most requests, a process takes tokens
in small batches (about 10 ms of the tenant's rate) and spends them locally for at most `local_ttl_s`;
the overshoot is bounded by processes × 1.5 batches. Redis down → the limiter fails open (log + metric): a
broken limiter must never turn into an outage.
Why refill ahead: when half a batch is left, one background call fetches the next, so requests keep spending
local tokens meanwhile; waiting for the refill only when the batch ran out put a Redis round trip (queued behind
a busy loop) on every request arriving in that window, a tail at the hit path's p99.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import Counter

from cacheman.errors import RateLimited
from cacheman.health import RedisHealth
from cacheman.observability import REGISTRY
from cacheman.redisconn import REDIS_ERRORS, Topology
from cacheman.scripts import LuaScript

__all__ = ["FAIL_OPEN", "RATE_LIMITED", "RateLimited", "RateLimiter", "batch_size", "limiter_from_settings"]

log = logging.getLogger("cacheman.ratelimit")

# A request waits for at most this many shared refills before taking a batch of its own.
_MAX_WAITS = 8

SCRIPT = (Path(__file__).parent / "lua" / "ratelimit.lua").read_text()

RATE_LIMITED = Counter(
    "hotpath_ratelimit_rejected_total", "Requests answered 429 by the per-tenant rate limit", ["tenant"], registry=REGISTRY
)
FAIL_OPEN = Counter(
    "hotpath_ratelimit_fail_open_total",
    "Requests let through without a rate-limit decision because Redis could not answer",
    registry=REGISTRY,
)


def batch_size(rate_per_s: float, burst: int) -> int:
    """Tokens a process takes per Redis call: ~10 ms of the rate, never more than a quarter of the burst."""
    return max(1, min(100, int(rate_per_s * 0.01), burst // 4))


def refill_mark(batch: int) -> int:
    """Local tokens left at which the next batch is fetched in the background: half a batch; never for batches
    under 4 (a slow tenant's bucket is not split into prefetched single tokens that might expire unspent)."""
    return batch // 2 if batch >= 4 else -1


class RateLimiter:
    """Token bucket per tenant. `await acquire(tenant)` returns, or raises RateLimited."""

    def __init__(
        self,
        redis,
        *,
        prefix: str = "hp",
        rate_per_s: float = 5000.0,
        burst: int = 10000,
        per_tenant: dict[str, tuple[float, int]] | None = None,
        local_ttl_s: float = 0.25,
        down_backoff_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.per_tenant = dict(per_tenant or {})
        self.local_ttl_s = local_ttl_s
        self.down_backoff_s = down_backoff_s
        self._script = LuaScript(redis, SCRIPT, "ratelimit")
        self._topology = Topology(redis)
        # Per node, like the cache (health.py): on a Cluster only the tenants whose bucket lives on a dead master
        # pass unlimited; its own warning (below) says so, so the windows themselves stay quiet.
        self.health = RedisHealth(down_backoff_s, self._topology.node_of, what="the rate limit", quiet=True)
        # tenant -> [tokens left, valid until, refill mark]; tenant -> (refused locally until, Redis's retry time)
        # (monotonic)
        self._local: dict[str, list] = {}
        self._denied_until: dict[str, tuple[float, float]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._ahead: set[asyncio.Task] = set()  # refills ahead of need, referenced until done
        self._last_warning = 0.0

    def key(self, tenant: str) -> str:
        return f"{self.prefix}:{tenant}:ratelimit"

    def limits(self, tenant: str) -> tuple[float, int]:
        return self.per_tenant.get(tenant, (self.rate_per_s, self.burst))

    async def acquire(self, tenant: str) -> None:
        local = self._local.get(tenant)  # the common case first: a local token (only limited tenants have any)
        if local is not None and local[0] > 0 and time.monotonic() < local[1]:
            local[0] -= 1
            if local[0] <= local[2] and tenant not in self._inflight:
                self._refill_ahead(tenant)
            return
        rate, burst = self.limits(tenant)
        if rate <= 0:
            return  # 0 = unlimited
        # Concurrent requests that find no local token share one refill per tenant (single-flight):
        # otherwise each would take its own batch from Redis and the batches would be wasted, draining the
        # bucket far faster than the traffic (429s under the limit). Waiters then take from the refilled batch.
        for _ in range(_MAX_WAITS):
            now = time.monotonic()
            if self._take_local(tenant, now):
                return
            denied = self._denied_until.get(tenant)
            if denied is not None and now < denied[0]:
                RATE_LIMITED.labels(tenant).inc()
                raise RateLimited(tenant, denied[1] - now, rate, burst)  # the bucket's own wait, not the memo's
            if not self.health.usable(self.key(tenant)):
                FAIL_OPEN.inc()
                return
            pending = self._inflight.get(tenant)
            if pending is None:
                break
            await asyncio.shield(pending)
        await self._refill(tenant, rate, burst)

    def _take_local(self, tenant: str, now: float) -> bool:
        local = self._local.get(tenant)
        if local is not None and local[0] > 0 and now < local[1]:
            local[0] -= 1
            return True
        return False

    def _refill_ahead(self, tenant: str) -> None:
        now = time.monotonic()
        denied = self._denied_until.get(tenant)
        if (denied is not None and now < denied[0]) or not self.health.usable(self.key(tenant)):
            return  # refused a moment ago, or its node is down: no call until a request needs one
        rate, burst = self.limits(tenant)
        done = asyncio.get_running_loop().create_future()
        self._inflight[tenant] = done  # now, not when the task first runs: the next requests must not start another
        task = asyncio.ensure_future(self._refill(tenant, rate, burst, take=0, done=done))
        self._ahead.add(task)
        task.add_done_callback(self._ahead_done)

    def _ahead_done(self, task: asyncio.Task) -> None:
        self._ahead.discard(task)
        # Nobody awaits this task: a refusal is remembered in _denied_until, a Redis error opened a health
        # window; anything else is a bug, logged here.
        if not task.cancelled() and task.exception() is not None:
            log.error("rate limit refill ahead of need failed", exc_info=task.exception())

    async def _refill(self, tenant: str, rate: float, burst: int, take: int = 1, done: asyncio.Future | None = None) -> None:
        """Take a batch from the Redis bucket: `take` tokens for this request (0 when refilling ahead of need),
        the rest for the waiters and the next requests. `done` (the refill's in-flight marker) is set when over."""
        if done is None:
            done = asyncio.get_running_loop().create_future()
            self._inflight[tenant] = done
        try:
            now = time.monotonic()
            key = self.key(tenant)
            batch = batch_size(rate, burst)
            try:
                granted, retry_ms = await self._script(keys=[key], args=[rate, burst, batch])
            except (*REDIS_ERRORS, OSError, TimeoutError) as exc:
                self._fail_open(key, exc, now, counted=take > 0)
                return
            self.health.ok(key)
            granted, retry_ms = int(granted), int(retry_ms)
            if granted > 0:
                self._denied_until.pop(tenant, None)
                local = self._local.get(tenant)
                left = local[0] if local is not None and now < local[1] else 0
                self._local[tenant] = [left + granted - take, now + self.local_ttl_s, refill_mark(batch)]
                return
            retry_s = retry_ms / 1000
            # Remember the refusal briefly so a flood is refused locally instead of by Redis.
            self._denied_until[tenant] = (now + min(retry_s, 0.1), now + retry_s)
            if len(self._denied_until) > 10000:
                self._denied_until.clear()
            if take:
                RATE_LIMITED.labels(tenant).inc()
                raise RateLimited(tenant, retry_s, rate, burst)
        finally:
            if self._inflight.get(tenant) is done:
                del self._inflight[tenant]
            done.set_result(None)

    def _fail_open(self, key: str, exc: BaseException, now: float, *, counted: bool = True) -> None:
        if counted:  # a request let through (not a refill ahead of need)
            FAIL_OPEN.inc()
        self.health.failed(key, exc)
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "rate limit not enforced: Redis did not answer; requests pass unlimited until it does",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )


def limiter_from_settings(redis, settings) -> RateLimiter:
    """Build the app's limiter from ApiSettings (rate_limit_per_s, rate_limit_burst, rate_limit_tenants, redis_prefix)."""
    per_tenant = {t: (float(v[0]), int(v[1])) for t, v in settings.rate_limit_tenants.items()}
    return RateLimiter(
        redis,
        prefix=settings.redis_prefix,
        rate_per_s=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
        per_tenant=per_tenant,
    )
