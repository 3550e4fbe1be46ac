"""The read-through core: the Redis-health window, single-flight, the lease fill and the Redis-down bypass.

One fill mechanism for one key and for many: keys already in flight in this process are joined; the rest
take leases in one round trip, the keys whose lease we hold are loaded with ONE origin call and written
with our token, the others are polled (the holder fills them), then loaded without writing after a bound.
Origin down → the expired copy (`stale`) or OriginUnavailable; Redis down → origin behind a limit (`bypass`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum

from cacheman import metrics as m
from cacheman.config import CacheConfig
from cacheman.entry import Clock, Entry, EntryKind, Loaded, Spec, decode, now_ms
from cacheman.errors import DependencyUnavailable, OriginUnavailable
from cacheman.health import RedisHealth
from cacheman.leases import Leases, LeaseStatus
from cacheman.redisconn import REDIS_ERRORS, AnyRedis, Topology
from cacheman.scripts import Batch, Scripts

log = logging.getLogger("cacheman.readthrough")

Loader = Callable[[list[Spec]], Awaitable[dict[str, Loaded]]]  # one origin call for several specs, by key
Answer = tuple[Entry, "CacheStatus"]
_Futures = dict[str, asyncio.Future]  # spec key → the future this fill must settle


class CacheStatus(StrEnum):
    """How an answer was obtained: the value of the X-Cache response header."""

    HIT = "hit"  # fresh in Redis
    MISS = "miss"  # loaded from the origin
    STALE = "stale"  # expired copy, served because the origin is down
    BYPASS = "bypass"  # Redis is down: straight from the origin


def combined_status(statuses: set[CacheStatus]) -> CacheStatus:
    """X-Cache of a batch: the least fresh way any of its answers was obtained."""
    return next((s for s in (CacheStatus.BYPASS, CacheStatus.STALE, CacheStatus.MISS) if s in statuses), CacheStatus.HIT)


async def load_alone(specs: list[Spec]) -> dict[str, Loaded]:
    """The Loader of a single spec: its own load."""
    [spec] = specs
    return {spec.key: await spec.load()}


class ReadThrough:
    """Read-through over one Redis client: shared by every lookup of every tenant in a process."""

    def __init__(self, redis: AnyRedis, cfg: CacheConfig, *, scripts: Scripts | None = None, clock: Clock = now_ms) -> None:
        self.redis = redis
        self.cfg = cfg
        self.clock = clock
        self.scripts = scripts or Scripts(redis)
        self.topology = Topology(redis)
        self.health = RedisHealth(cfg.redis_retry_s, self.topology.node_of, on_change=_redis_gauges)
        self.leases = Leases(redis, self.scripts, cfg, clock, self.health)
        self._inflight: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()  # running fills (a task nobody references may be collected)
        self._bypass_slots = asyncio.Semaphore(cfg.bypass_concurrency)

    # ----------------------------------------------------------------- Redis health, per node (health.py)

    def redis_usable(self, key: str) -> bool:
        """False for `redis_retry_s` after a failure of the node `key` lives on, so its requests bypass instead
        of each paying a timeout; then one caller probes (half-open) until a success closes the window."""
        return self.health.usable(key)

    def redis_failed(self, key: str, exc: BaseException) -> None:
        """A Redis call about `key` failed: bypass its node for the next `redis_retry_s`."""
        self.health.failed(key, exc)

    def redis_ok(self, key: str) -> None:
        """A Redis call about `key` succeeded: close its node's window."""
        self.health.ok(key)

    def batch(self) -> Batch:
        """A pipeline per node whose failures and successes feed the health windows."""
        return Batch(self.redis, health=self.health, topology=self.topology)

    # ----------------------------------------------------------------- entry points

    async def get(self, spec: Spec) -> Answer:
        """The entity of `spec`: from Redis when fresh, else filled (single-flight + lease)."""
        if not self.redis_usable(spec.key):
            return await self.bypass_one(spec)
        try:
            raw = await (self.redis.hgetall(spec.key) if spec.kind is EntryKind.HASH else self.redis.get(spec.key))
        except REDIS_ERRORS as exc:
            self.redis_failed(spec.key, exc)
            return await self.bypass_one(spec)
        self.redis_ok(spec.key)
        entry = decode(spec.kind, raw, self.clock())
        if entry is not None and entry.fresh:
            m.HITS.labels(spec.entity).inc()
            return entry, CacheStatus.HIT
        return await self.miss(spec, entry)

    async def miss(self, spec: Spec, stale: Entry | None, *, force: bool = False) -> Answer:
        """Fill one key that was not fresh in Redis (`stale`: what was there, for stale-if-error)."""
        [answer] = await self.fill([spec], load_alone, {spec.key: stale} if stale else None, force=force)
        return answer

    async def fill(
        self, specs: list[Spec], load: Loader, stale: dict[str, Entry] | None = None, *, force: bool = False
    ) -> list[Answer]:
        """Fill several keys with one mechanism (see the module docstring); answers in the order of `specs`.
        `load` is called once per lease round for the keys this process holds. Raises OriginUnavailable
        when a key has neither an origin answer nor a stale copy."""
        return await self._flights("", specs, lambda mine, futs: self._fill(mine, load, dict(stale or {}), force, futs))

    async def bypass_one(self, spec: Spec) -> Answer:
        """Redis is down: one key from the origin (see `bypass`)."""
        [answer] = await self.bypass([spec], load_alone)
        return answer

    async def bypass(self, specs: list[Spec], load: Loader) -> list[Answer]:
        """Redis is down: the origin answers, one call per key per process at a time (single-flight), at most
        `bypass_concurrency` calls in flight (a batch is one call)."""
        m.BYPASS.labels(specs[0].entity).inc()
        return await self._flights("bypass|", specs, lambda mine, futs: self._bypass(mine, load, futs))

    # ----------------------------------------------------------------- single-flight

    async def _flights(self, scope: str, specs: list[Spec], run: Callable[[list[Spec], _Futures], Coroutine]) -> list[Answer]:
        """Join the keys already in flight in this process; start one `run` for the others."""
        loop = asyncio.get_running_loop()
        futs: _Futures = {}
        mine: list[Spec] = []
        waits: list[asyncio.Future] = []
        for spec in specs:
            name = scope + spec.key
            fut = self._inflight.get(name)
            if fut is None:
                fut = loop.create_future()
                self._inflight[name] = fut
                fut.add_done_callback(self._forget(name))
                futs[spec.key] = fut
                mine.append(spec)
            waits.append(fut)
        if mine:
            task = asyncio.ensure_future(self._settle(run(mine, futs), futs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(waits) == 1:
            return [await asyncio.shield(waits[0])]
        answers = await asyncio.gather(*(asyncio.shield(f) for f in waits), return_exceptions=True)
        for a in answers:
            if isinstance(a, BaseException):
                raise a
        return answers

    def _forget(self, name: str):
        def done(f: asyncio.Future) -> None:
            if self._inflight.get(name) is f:
                del self._inflight[name]
            if not f.cancelled():
                f.exception()  # retrieved here, so an error nobody awaited is not logged as "never retrieved"

        return done

    @staticmethod
    async def _settle(work: Coroutine, futs: _Futures) -> None:
        """Run a fill; whatever ends it, every future it owns is settled (an error goes to each waiter)."""
        try:
            await work
        except asyncio.CancelledError:
            for f in futs.values():
                f.cancel()
            raise
        except BaseException as exc:
            pending = [f for f in futs.values() if not f.done()]
            if not pending:
                log.error("fill failed after answering every key: %s: %s", type(exc).__name__, exc)
            for f in pending:
                f.set_exception(exc)
        else:
            for f in futs.values():
                if not f.done():
                    f.set_exception(RuntimeError("bug: a fill ended without answering one of its keys"))

    # ----------------------------------------------------------------- the fill

    async def _fill(self, pending: list[Spec], load: Loader, stale: dict[str, Entry], force: bool, futs: _Futures) -> None:
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.cfg.lease_wait_s
        delay = 0.004
        while True:
            replies = await self.leases.acquire(pending, token, force=force)  # a node that failed: its exception
            down = [spec for spec, r in zip(pending, replies, strict=True) if isinstance(r, BaseException)]
            if down:  # those keys' nodes are marked down (Leases): the origin answers them
                _answer(futs, down, await self.bypass(down, load))
                kept = [(s, r) for s, r in zip(pending, replies, strict=True) if not isinstance(r, BaseException)]
                if not kept:
                    return
                pending, replies = [s for s, _ in kept], [r for _, r in kept]
            now = self.clock()
            leased: list[Spec] = []
            waiting: list[Spec] = []
            for spec, (status, raw) in zip(pending, replies, strict=True):
                entry = decode(spec.kind, raw, now) if raw else None
                if status is LeaseStatus.HIT and entry is not None:
                    m.HITS.labels(spec.entity).inc()
                    futs[spec.key].set_result((entry, CacheStatus.HIT))
                    continue
                if entry is not None:
                    stale[spec.key] = entry
                (leased if status is LeaseStatus.LEASE else waiting).append(spec)
            if leased:
                await self._load_and_store(leased, load, token, stale, futs)
            if not waiting:
                return
            for spec in waiting:
                m.LEASE_WAITS.labels(spec.entity).inc()
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            pending = waiting
        # Waited past the bound (a holder died or is very slow): ask the origin, but do not write.
        for spec in waiting:
            m.LEASE_TIMEOUTS.labels(spec.entity).inc()
            m.MISSES.labels(spec.entity).inc()
        try:
            loaded = await self._load(waiting, load)
        except OriginUnavailable as exc:
            self._stale_or_raise(waiting, stale, exc, futs)
            return
        self._fresh(waiting, loaded, CacheStatus.MISS, futs)

    async def _load_and_store(self, leased: list[Spec], load: Loader, token: str, stale: dict[str, Entry], futs: _Futures) -> None:
        for spec in leased:
            m.MISSES.labels(spec.entity).inc()
        try:
            loaded = await self._load(leased, load)
        except OriginUnavailable as exc:
            try:
                await self.leases.release(leased, token)
            except REDIS_ERRORS:  # the leases expire on their own (the node is marked down by Leases)
                pass
            self._stale_or_raise(leased, stale, exc, futs)
            return
        with contextlib.suppress(*REDIS_ERRORS):  # the caller still gets the value; the next reader fills again
            await self.leases.store([(s, loaded[s.key]) for s in leased], token)
        self._fresh(leased, loaded, CacheStatus.MISS, futs)

    def _fresh(self, specs: list[Spec], loaded: dict[str, Loaded], status: CacheStatus, futs: _Futures) -> None:
        now = self.clock()
        for spec in specs:
            got = loaded[spec.key]
            futs[spec.key].set_result((Entry(got.data, True, now, got.version, got.extra), status))

    @staticmethod
    def _stale_or_raise(specs: list[Spec], stale: dict[str, Entry], exc: OriginUnavailable, futs: _Futures) -> None:
        for spec in specs:
            copy = stale.get(spec.key)
            if copy is not None:
                m.STALE.labels(spec.entity).inc()
                futs[spec.key].set_result((copy, CacheStatus.STALE))
            else:
                err = OriginUnavailable(f"{exc.detail}; nothing cached to serve instead")
                err.__cause__ = exc
                futs[spec.key].set_exception(err)

    # ----------------------------------------------------------------- origin calls

    async def _load(self, specs: list[Spec], load: Loader) -> dict[str, Loaded]:
        """One origin call for `specs`, by key (a key the loader left out is "not found"); any failure becomes
        OriginUnavailable (503 / stale), never a 500."""
        try:
            got = await load(specs)
        except OriginUnavailable:
            raise
        except (TimeoutError, OSError, ValueError) as exc:
            # An adapter should raise OriginUnavailable itself; anything else still must not become a 500.
            raise OriginUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        return {s.key: got.get(s.key) or Loaded(None) for s in specs}

    async def _bypass(self, specs: list[Spec], load: Loader, futs: _Futures) -> None:
        try:
            async with asyncio.timeout(self.cfg.bypass_wait_s):
                await self._bypass_slots.acquire()
        except TimeoutError:
            raise DependencyUnavailable(
                "redis",
                f"Redis is unreachable and {self.cfg.bypass_concurrency} origin calls are already in flight "
                "(HOTPATH_CACHE_BYPASS_CONCURRENCY); retry shortly",
            ) from None
        try:
            loaded = await self._load(specs, load)
        except OriginUnavailable as exc:
            raise OriginUnavailable(f"{exc.detail}; Redis is unreachable too, so no cached copy can be served") from exc
        finally:
            self._bypass_slots.release()
        self._fresh(specs, loaded, CacheStatus.BYPASS, futs)


def _redis_gauges(nodes_down: int) -> None:
    m.REDIS_UP.set(0 if nodes_down else 1)
    m.REDIS_NODES_DOWN.set(nodes_down)


def _answer(futs: _Futures, specs: list[Spec], answers: list[Answer]) -> None:
    for spec, answer in zip(specs, answers, strict=True):
        futs[spec.key].set_result(answer)
