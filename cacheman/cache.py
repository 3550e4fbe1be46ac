"""The read-through cache service: every lookup the API answers, with leases, single-flight and degraded modes.

Hit path = one Redis command (HMGET / MGET / HGETALL). Miss → single-flight per key inside the process,
then a lease across processes (leases.py); Redis down → origin behind a concurrency limit (`bypass`);
origin down → the expired copy (`stale`) or OriginUnavailable (503).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cacheman import metrics as m
from cacheman.errors import DependencyUnavailable, OriginUnavailable
from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED, Keys
from cacheman.leases import (
    HIT,
    LEASE,
    Entry,
    Scripts,
    decode_hash,
    decode_string,
    encode_string,
    hash_fields,
    jittered_ttl_ms,
    now_ms,
    queue,
)
from cacheman.origin.base import Origin, Room

log = logging.getLogger("cacheman.cache")

# X-Cache values
S_HIT, S_MISS, S_STALE, S_BYPASS = "hit", "miss", "stale", "bypass"
_TMP_PX = 60_000  # a temporary build key outlives any fill, then disappears on its own


def unread_count(last_seq: int, last_read_seq: int) -> int:
    """Unread messages of one room: derived from two monotonic numbers, so it cannot drift."""
    return max(0, last_seq - last_read_seq)


@dataclass(frozen=True)
class CacheConfig:
    """Cache policy, from ApiSettings (see hotpath/settings.py for each field's meaning)."""

    prefix: str = "hp"
    ttl_s: float = 300.0
    ttl_jitter: float = 0.1
    negative_ttl_s: float = 5.0
    stale_ttl_s: float = 3600.0
    lease_ttl_ms: int = 3000
    lease_wait_s: float = 2.0
    bypass_concurrency: int = 32
    bypass_wait_s: float = 1.0
    redis_retry_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Any) -> CacheConfig:
        return cls(
            prefix=s.redis_prefix, ttl_s=s.cache_ttl_s, ttl_jitter=s.cache_ttl_jitter,
            negative_ttl_s=s.cache_negative_ttl_s, stale_ttl_s=s.cache_stale_ttl_s,
            lease_ttl_ms=s.cache_lease_ttl_ms, lease_wait_s=s.cache_lease_wait_s,
            bypass_concurrency=s.cache_bypass_concurrency, bypass_wait_s=s.cache_bypass_wait_s,
            redis_retry_s=s.cache_redis_retry_s,
        )

    @property
    def floor_px(self) -> int:
        """Version floors live as long as anything they guard."""
        return int((self.ttl_s * (1 + self.ttl_jitter) + self.stale_ttl_s) * 1000) + 60_000


@dataclass(slots=True)
class Loaded:
    """What one origin call returned, in cache form: data None = not found; extra = side data (room seqs)."""

    data: Any
    version: int | None = None
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Spec:
    """One cacheable entity: where it lives, how it is loaded, how it is stored."""

    entity: str  # metric label
    kind: str  # 's' string | 'h' hash
    key: str
    load: Callable[[], Awaitable[Loaded]]
    versioned: bool = False
    merge: bool = False  # max-merge numeric fields written by events while the fill was in flight
    seq_keys: Callable[[str], str] | None = None  # reads: room id → seq key, max-merged at fill


@dataclass(slots=True)
class Result:
    """A lookup's answer and how it was obtained (X-Cache, Age)."""

    value: Any
    status: str
    age_s: int = 0


class CacheService:
    """All cached lookups of all tenants over one Redis client and one origin."""

    def __init__(self, redis: aioredis.Redis, origin: Origin, config: CacheConfig | None = None, near=None) -> None:
        self.redis = redis
        self.origin = origin
        self.cfg = config or CacheConfig()
        self.keys = Keys(self.cfg.prefix)
        self.scripts = Scripts(redis)
        self.near = near  # NearCache | None
        self._inflight: dict[str, asyncio.Future] = {}
        self._bypass = asyncio.Semaphore(self.cfg.bypass_concurrency)
        self._redis_down_until = 0.0

    # ----------------------------------------------------------------- Redis health (a small breaker)

    def redis_usable(self) -> bool:
        """False for `redis_retry_s` after a failure, so requests bypass instead of each paying a timeout.
        Then half-open: one caller probes Redis (and the window restarts for the others) until a success
        closes it — a hung Redis costs one timeout per window, not one per request."""
        until = self._redis_down_until
        if not until:
            return True
        now = time.monotonic()
        if now < until:
            return False
        self._redis_down_until = now + self.cfg.redis_retry_s  # this caller is the probe
        return True

    def redis_failed(self, exc: BaseException) -> None:
        if not self._redis_down_until:
            log.warning("redis unavailable, bypassing the cache for %.1fs: %s: %s", self.cfg.redis_retry_s, type(exc).__name__, exc)
        self._redis_down_until = time.monotonic() + self.cfg.redis_retry_s
        m.REDIS_UP.set(0)

    def _redis_ok(self) -> None:
        if self._redis_down_until:
            self._redis_down_until = 0.0
            m.REDIS_UP.set(1)

    # ----------------------------------------------------------------- origin calls

    async def _load(self, spec: Spec) -> Loaded:
        return await self._origin_call(spec.load())

    async def _origin_call(self, call):
        """Await an origin call; any failure becomes OriginUnavailable (503 / stale), never a 500."""
        try:
            return await call
        except OriginUnavailable:
            raise
        except (TimeoutError, OSError, ValueError) as exc:
            # An adapter should raise OriginUnavailable itself; anything else still must not become a 500.
            raise OriginUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc

    async def _bypass_load(self, spec: Spec) -> tuple[Entry, str]:
        """Redis is down: the origin answers, one call per key per process at a time (single-flight),
        and at most `bypass_concurrency` calls in flight."""
        m.BYPASS.labels(spec.entity).inc()
        if not spec.key:
            return await self._bypass_call(spec)
        flight = "bypass|" + spec.key
        fut = self._inflight.get(flight)
        if fut is None:
            fut = asyncio.ensure_future(self._bypass_call(spec))
            self._inflight[flight] = fut
            fut.add_done_callback(self._forget(flight))
        return await asyncio.shield(fut)

    async def _bypass_call(self, spec: Spec) -> tuple[Entry, str]:
        try:
            async with asyncio.timeout(self.cfg.bypass_wait_s):
                await self._bypass.acquire()
        except TimeoutError:
            raise DependencyUnavailable(
                "redis",
                f"Redis is unreachable and {self.cfg.bypass_concurrency} origin calls are already in flight "
                "(HOTPATH_CACHE_BYPASS_CONCURRENCY); retry shortly",
            ) from None
        try:
            loaded = await self._load(spec)
        except OriginUnavailable as exc:
            raise OriginUnavailable(f"{exc.detail}; Redis is unreachable too, so no cached copy can be served") from exc
        finally:
            self._bypass.release()
        return Entry(loaded.data, True, now_ms(), loaded.version, loaded.extra), S_BYPASS

    # ----------------------------------------------------------------- read-through core

    def _decode(self, spec: Spec, raw) -> Entry | None:
        return decode_hash(raw, now_ms()) if spec.kind == "h" else decode_string(raw, now_ms())

    async def get(self, spec: Spec) -> tuple[Entry, str]:
        """The entity of `spec`: from Redis when fresh, else via single-flight + lease."""
        if not self.redis_usable():
            return await self._bypass_load(spec)
        try:
            raw = await (self.redis.hgetall(spec.key) if spec.kind == "h" else self.redis.get(spec.key))
        except RedisError as exc:
            self.redis_failed(exc)
            return await self._bypass_load(spec)
        self._redis_ok()
        entry = self._decode(spec, raw)
        if entry is not None and entry.fresh:
            m.HITS.labels(spec.entity).inc()
            return entry, S_HIT
        return await self.miss(spec, entry)

    async def miss(self, spec: Spec, stale: Entry | None, *, force: bool = False) -> tuple[Entry, str]:
        """Single-flight: concurrent misses of one key in this process share one lease call and one origin call."""
        fut = self._inflight.get(spec.key)
        if fut is None:
            fut = asyncio.ensure_future(self._fill(spec, stale, force))
            self._inflight[spec.key] = fut
            fut.add_done_callback(self._forget(spec.key))
        return await asyncio.shield(fut)

    def _forget(self, key: str):
        def done(f: asyncio.Future) -> None:
            if self._inflight.get(key) is f:
                del self._inflight[key]
            if not f.cancelled():
                f.exception()  # retrieved here, so an error nobody awaited is not logged as "never retrieved"

        return done

    async def _fill(self, spec: Spec, stale: Entry | None, force: bool) -> tuple[Entry, str]:
        token = secrets.token_hex(8)
        lease_key = Keys.lease(spec.key)
        deadline = time.monotonic() + self.cfg.lease_wait_s
        delay = 0.004
        while True:
            try:
                status, raw = await self.scripts.lease_acquire(
                    keys=[spec.key, lease_key],
                    args=[token, self.cfg.lease_ttl_ms, now_ms(), spec.kind, "1" if force else "0"],
                )
            except RedisError as exc:
                self.redis_failed(exc)
                return await self._bypass_load(spec)
            self._redis_ok()
            status = status.decode() if isinstance(status, bytes) else status
            entry = self._decode(spec, raw) if raw else None
            if status == HIT and entry is not None:
                m.HITS.labels(spec.entity).inc()
                return entry, S_HIT
            if entry is not None:
                stale = entry
            if status == LEASE:
                m.MISSES.labels(spec.entity).inc()
                try:
                    loaded = await self._load(spec)
                except OriginUnavailable as exc:
                    await self._release(lease_key, token)
                    return self._stale_or_raise(spec, stale, exc)
                await self._store(spec, token, loaded)
                return Entry(loaded.data, True, now_ms(), loaded.version, loaded.extra), S_MISS
            m.LEASE_WAITS.labels(spec.entity).inc()
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        # Waited past the bound (a holder died or is very slow): ask the origin, but do not write.
        m.LEASE_TIMEOUTS.labels(spec.entity).inc()
        m.MISSES.labels(spec.entity).inc()
        try:
            loaded = await self._load(spec)
        except OriginUnavailable as exc:
            return self._stale_or_raise(spec, stale, exc)
        return Entry(loaded.data, True, now_ms(), loaded.version, loaded.extra), S_MISS

    def _stale_or_raise(self, spec: Spec, stale: Entry | None, exc: OriginUnavailable) -> tuple[Entry, str]:
        if stale is not None:
            m.STALE.labels(spec.entity).inc()
            return stale, S_STALE
        raise OriginUnavailable(f"{exc.detail}; nothing cached to serve instead") from exc

    async def _release(self, lease_key: str, token: str) -> None:
        try:
            await self.scripts.lease_release(keys=[lease_key], args=[token])
        except RedisError as exc:  # the lease expires on its own
            self.redis_failed(exc)

    def _ttls(self, negative: bool) -> tuple[int, int]:
        """(fresh ms, key px): an entry stays past its freshness for stale-if-error; negatives do not."""
        if negative:
            fresh = int(self.cfg.negative_ttl_s * 1000)
            return fresh, fresh
        fresh = jittered_ttl_ms(self.cfg.ttl_s, self.cfg.ttl_jitter)
        return fresh, fresh + int(self.cfg.stale_ttl_s * 1000)

    async def _store(self, spec: Spec, token: str, loaded: Loaded) -> int:
        now = now_ms()
        negative = loaded.data is None
        fresh, px = self._ttls(negative)
        version = "" if (negative or not spec.versioned or loaded.version is None) else str(loaded.version)
        lease_key = Keys.lease(spec.key)
        floor_key = Keys.floor(spec.key)
        try:
            if spec.kind == "s":
                payload = encode_string(loaded.data, fresh_until_ms=now + fresh, stored_ms=now, version=loaded.version)
                if spec.seq_keys and loaded.extra:
                    pipe = self.redis.pipeline(transaction=False)
                    for room_id, seq in loaded.extra.items():
                        queue(pipe, self.scripts.seq_max, [spec.seq_keys(room_id)], [seq, self._seq_px()])
                    queue(pipe, self.scripts.fill_string, [spec.key, lease_key, floor_key], [token, payload, px, version])
                    res = (await pipe.execute())[-1]
                else:
                    res = await self.scripts.fill_string(keys=[spec.key, lease_key, floor_key], args=[token, payload, px, version])
            else:
                tmp = Keys.tmp(spec.key, token)
                fields = hash_fields(loaded.data, fresh_until_ms=now + fresh, stored_ms=now, version=loaded.version)
                pipe = self.redis.pipeline(transaction=False)
                if spec.seq_keys:
                    for room_id, seq in loaded.extra.items():
                        queue(pipe, self.scripts.seq_max, [spec.seq_keys(room_id)], [seq, self._seq_px()])
                pipe.delete(tmp)
                items = list(fields.items())
                for i in range(0, len(items), 1000):  # big rooms: several HSETs, all invisible until the RENAME
                    pipe.hset(tmp, mapping=dict(items[i : i + 1000]))
                pipe.pexpire(tmp, _TMP_PX)
                queue(pipe, self.scripts.fill_hash, [spec.key, lease_key, floor_key, tmp], [token, px, version, "1" if spec.merge else "0"])
                res = (await pipe.execute())[-1]
        except RedisError as exc:
            self.redis_failed(exc)
            m.FILLS.labels(spec.entity, "error").inc()
            return 0
        outcome = {1: "written", 0: "lease_lost", -1: "older"}.get(int(res), "error")
        m.FILLS.labels(spec.entity, outcome).inc()
        return int(res)

    def _seq_px(self) -> int:
        return self.cfg.floor_px

    # ----------------------------------------------------------------- specs per entity

    def room_spec(self, tenant: str, room_id: str) -> Spec:
        async def load() -> Loaded:
            room = await self.origin.get_room(tenant, room_id)
            if room is None:
                return Loaded(None)
            return Loaded(room.model_dump(), room.version, {room_id: room.last_seq})

        return Spec("room", "s", self.keys.room_meta(tenant, room_id), load, versioned=True,
                    seq_keys=lambda r: self.keys.room_seq(tenant, r))

    def members_spec(self, tenant: str, room_id: str) -> Spec:
        async def load() -> Loaded:
            ms = await self.origin.get_members(tenant, room_id)
            if ms is None:
                return Loaded(None)
            return Loaded({mb.user_id: mb.role for mb in ms.members}, ms.version)

        return Spec("members", "h", self.keys.members(tenant, room_id), load, versioned=True)

    def user_rooms_spec(self, tenant: str, user_id: str) -> Spec:
        async def load() -> Loaded:
            return Loaded({r: "1" for r in await self.origin.get_user_rooms(tenant, user_id)})

        return Spec("user_rooms", "h", self.keys.user_rooms(tenant, user_id), load)

    def reads_spec(self, tenant: str, user_id: str) -> Spec:
        async def load() -> Loaded:
            states = await self.origin.get_read_states(tenant, user_id)
            return Loaded({s.room_id: str(s.last_read_seq) for s in states}, None, {s.room_id: s.last_seq for s in states})

        return Spec("reads", "h", self.keys.user_reads(tenant, user_id), load, merge=True,
                    seq_keys=lambda r: self.keys.room_seq(tenant, r))

    # ----------------------------------------------------------------- lookups

    async def room(self, tenant: str, room_id: str) -> Result:
        """Room metadata (dict) or None; last_seq is the max of the cached room and applied message events."""
        spec = self.room_spec(tenant, room_id)
        seq: int | None = None
        if self.redis_usable():
            try:
                raw, raw_seq = await self.redis.mget(spec.key, self.keys.room_seq(tenant, room_id))
            except RedisError as exc:
                self.redis_failed(exc)
                entry, status = await self._bypass_load(spec)
            else:
                self._redis_ok()
                seq = int(raw_seq) if raw_seq else None
                entry = decode_string(raw, now_ms())
                if entry is not None and entry.fresh:
                    m.HITS.labels("room").inc()
                    status = S_HIT
                else:
                    entry, status = await self.miss(spec, entry)
        else:
            entry, status = await self._bypass_load(spec)
        value = entry.data
        if value is not None and seq is not None and seq > value.get("last_seq", 0):
            value = {**value, "last_seq": seq}
        return Result(value, status, entry.age_s(now_ms()))

    async def members(self, tenant: str, room_id: str) -> Result:
        """{"room_id", "version", "members": [{user_id, role}]} or None when the room does not exist."""
        entry, status = await self.get(self.members_spec(tenant, room_id))
        if entry.data is None:
            return Result(None, status, entry.age_s(now_ms()))
        members = [{"user_id": u, "role": r} for u, r in sorted(entry.data.items())]
        return Result({"room_id": room_id, "version": entry.version or 0, "members": members}, status, entry.age_s(now_ms()))

    async def member_role(self, tenant: str, room_id: str, user_id: str) -> tuple[Result, bool]:
        """The membership check: (Result(role | None), room_exists). A hit is one HMGET."""
        key = self.keys.members(tenant, room_id)
        near = self.near
        gen = 0
        if near is not None:
            got = near.get(key, user_id)
            if got is not None:
                role, exists, stored = got
                m.NEAR_HITS.inc()
                return Result(role, S_HIT, max(0, (now_ms() - stored) // 1000)), exists
            gen = near.generation
        if self.redis_usable():
            try:
                role_b, fresh_b, stored_b, nx_b = await self.redis.hmget(key, user_id, F_FRESH, F_STORED, F_NOTFOUND)
            except RedisError as exc:
                self.redis_failed(exc)
            else:
                self._redis_ok()
                now = now_ms()
                if fresh_b is not None and int(fresh_b) > now:
                    m.HITS.labels("members").inc()
                    role = role_b.decode() if role_b is not None else None
                    stored = int(stored_b)
                    if near is not None:
                        near.put(key, user_id, role, nx_b is None, stored, gen)
                    return Result(role, S_HIT, max(0, (now - stored) // 1000)), nx_b is None
                entry, status = await self.miss(self.members_spec(tenant, room_id), None)
                res, exists = self._role_of(entry, status, user_id)
                if near is not None and status in (S_MISS, S_HIT):
                    near.put(key, user_id, res.value, exists, entry.stored_ms, gen)
                return res, exists
        entry, status = await self._bypass_load(self.members_spec(tenant, room_id))
        return self._role_of(entry, status, user_id)

    @staticmethod
    def _role_of(entry: Entry, status: str, user_id: str) -> tuple[Result, bool]:
        age = entry.age_s(now_ms())
        if entry.data is None:
            return Result(None, status, age), False
        return Result(entry.data.get(user_id), status, age), True

    async def user_rooms(self, tenant: str, user_id: str) -> Result:
        """Sorted room ids of a user."""
        entry, status = await self.get(self.user_rooms_spec(tenant, user_id))
        return Result(sorted(entry.data or {}), status, entry.age_s(now_ms()))

    async def unread(self, tenant: str, user_id: str) -> Result:
        """{"total", "rooms": {room_id: count}}: max(0, room last_seq − user last_read_seq) per room."""
        spec = self.reads_spec(tenant, user_id)
        entry, status = await self.get(spec)
        reads = {r: int(s) for r, s in (entry.data or {}).items()}
        if status in (S_HIT, S_STALE) and reads:
            seqs = await self._seqs(tenant, list(reads))
            if seqs is None or (status == S_HIT and any(s is None for s in seqs.values())):
                # A room's last_seq expired from Redis: rebuild both from the origin.
                entry, status = await self.miss(spec, entry, force=True)
                reads = {r: int(s) for r, s in (entry.data or {}).items()}
            else:
                return self._unread_result(reads, {r: s or 0 for r, s in seqs.items()}, status, entry)
        cached = await self._seqs(tenant, list(reads)) if status == S_MISS and reads else None
        # After a fill Redis holds max(origin, events); the origin's own numbers are the floor.
        origin_seqs = entry.extra or {}
        seqs = {r: max((cached or {}).get(r) or 0, origin_seqs.get(r, 0)) for r in reads}
        return self._unread_result(reads, seqs, status, entry)

    async def _seqs(self, tenant: str, rooms: list[str]) -> dict[str, int | None] | None:
        if not self.redis_usable():
            return None
        pipe = self.redis.pipeline(transaction=False)
        for r in rooms:
            pipe.get(self.keys.room_seq(tenant, r))
        try:
            vals = await pipe.execute()
        except RedisError as exc:
            self.redis_failed(exc)
            return None
        self._redis_ok()
        return {r: (int(v) if v is not None else None) for r, v in zip(rooms, vals, strict=True)}

    @staticmethod
    def _unread_result(reads: dict[str, int], seqs: dict[str, int], status: str, entry: Entry) -> Result:
        rooms = {r: unread_count(seqs.get(r, 0), reads[r]) for r in sorted(reads)}
        return Result({"total": sum(rooms.values()), "rooms": rooms}, status, entry.age_s(now_ms()))

    # ----------------------------------------------------------------- batches

    async def rooms_batch(self, tenant: str, room_ids: list[str]) -> tuple[dict[str, dict], list[str], str, int]:
        """Many rooms: one pipelined read, leases for the misses, ONE origin call for all of them.
        Returns (rooms by id, missing ids, X-Cache of the batch, Age of its oldest answer)."""
        ids = list(dict.fromkeys(room_ids))
        found: dict[str, dict] = {}
        missing: list[str] = []
        if not self.redis_usable():
            return await self._rooms_bypass(tenant, ids)
        pipe = self.redis.pipeline(transaction=False)
        for r in ids:
            pipe.mget(self.keys.room_meta(tenant, r), self.keys.room_seq(tenant, r))
        try:
            rows = await pipe.execute()
        except RedisError as exc:
            self.redis_failed(exc)
            return await self._rooms_bypass(tenant, ids)
        self._redis_ok()
        now = now_ms()
        stale: dict[str, Entry] = {}
        todo: list[str] = []
        oldest = now
        for r, (raw, raw_seq) in zip(ids, rows, strict=True):
            entry = decode_string(raw, now)
            if entry is not None and entry.fresh:
                oldest = min(oldest, entry.stored_ms)
                if entry.data is None:
                    missing.append(r)
                else:
                    seq = int(raw_seq) if raw_seq else 0
                    found[r] = {**entry.data, "last_seq": max(seq, entry.data.get("last_seq", 0))}
            else:
                if entry is not None:
                    stale[r] = entry
                todo.append(r)
        if not todo:
            m.HITS.labels("room").inc(len(ids))
            return found, missing, S_HIT, (now - oldest) // 1000
        m.HITS.labels("room").inc(len(ids) - len(todo))
        m.MISSES.labels("room").inc(len(todo))
        token = secrets.token_hex(8)
        pipe = self.redis.pipeline(transaction=False)
        for r in todo:
            key = self.keys.room_meta(tenant, r)
            queue(pipe, self.scripts.lease_acquire, [key, Keys.lease(key)], [token, self.cfg.lease_ttl_ms, now, "s", "0"])
        try:
            leases = await pipe.execute()
        except RedisError as exc:
            self.redis_failed(exc)
            return await self._rooms_bypass(tenant, ids)
        leased = [r for r, (st, _) in zip(todo, leases, strict=True) if st in (b"lease", "lease")]
        try:
            origin_rooms = await self._origin_call(self.origin.get_rooms(tenant, todo))
        except OriginUnavailable as exc:
            for r in leased:
                await self._release(Keys.lease(self.keys.room_meta(tenant, r)), token)
            if any(r not in stale for r in todo):
                raise OriginUnavailable(f"{exc.detail}; nothing cached to serve instead") from exc
            for r in todo:
                if stale[r].data is None:
                    missing.append(r)
                else:
                    found[r] = stale[r].data
                oldest = min(oldest, stale[r].stored_ms)
            m.STALE.labels("room").inc(len(todo))
            return found, missing, S_STALE, (now_ms() - oldest) // 1000
        pipe = self.redis.pipeline(transaction=False)
        now = now_ms()
        for r in leased:
            key = self.keys.room_meta(tenant, r)
            room: Room | None = origin_rooms.get(r)
            fresh, px = self._ttls(room is None)
            data = room.model_dump() if room else None
            payload = encode_string(data, fresh_until_ms=now + fresh, stored_ms=now, version=room.version if room else None)
            if room is not None:
                queue(pipe, self.scripts.seq_max, [self.keys.room_seq(tenant, r)], [room.last_seq, self._seq_px()])
            queue(pipe, self.scripts.fill_string, [key, Keys.lease(key), Keys.floor(key)],
                  [token, payload, px, "" if room is None else room.version])
        if leased:
            try:
                await pipe.execute()
                m.FILLS.labels("room", "written").inc(len(leased))
            except RedisError as exc:
                self.redis_failed(exc)
        for r in todo:
            room = origin_rooms.get(r)
            if room is None:
                missing.append(r)
            else:
                found[r] = room.model_dump()
        return found, missing, S_MISS, (now_ms() - oldest) // 1000 if len(todo) < len(ids) else 0

    async def _rooms_bypass(self, tenant: str, ids: list[str]) -> tuple[dict[str, dict], list[str], str, int]:
        async def load() -> Loaded:
            return Loaded(await self.origin.get_rooms(tenant, ids))

        entry, status = await self._bypass_load(Spec("room", "s", "", load))
        rooms: dict[str, Room] = entry.data
        return {r: rooms[r].model_dump() for r in ids if r in rooms}, [r for r in ids if r not in rooms], status, 0

    async def memberships_batch(
        self, tenant: str, checks: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str, str | None, bool]], str, int]:
        """Many (room, user) checks: one pipelined HMGET per distinct room, misses filled per room (single-flight).
        Returns ([(room, user, role | None, room exists)] in request order, X-Cache of the batch, oldest Age)."""
        by_room: dict[str, list[str]] = {}
        for r, u in checks:
            by_room.setdefault(r, []).append(u)
        rooms = list(by_room)
        answers: dict[str, tuple[dict[str, str | None], bool]] = {}
        statuses: set[str] = set()
        oldest = now_ms()
        todo = rooms
        if self.redis_usable():
            pipe = self.redis.pipeline(transaction=False)
            for r in rooms:
                pipe.hmget(self.keys.members(tenant, r), F_FRESH, F_STORED, F_NOTFOUND, *by_room[r])
            try:
                rows = await pipe.execute()
            except RedisError as exc:
                self.redis_failed(exc)
            else:
                self._redis_ok()
                now = now_ms()
                todo = []
                for r, row in zip(rooms, rows, strict=True):
                    fresh_b, stored_b, nx_b, *roles = row
                    if fresh_b is not None and int(fresh_b) > now:
                        answers[r] = ({u: (x.decode() if x is not None else None) for u, x in zip(by_room[r], roles, strict=True)}, nx_b is None)
                        statuses.add(S_HIT)
                        oldest = min(oldest, int(stored_b))
                    else:
                        todo.append(r)
                if len(rooms) > len(todo):
                    m.HITS.labels("members").inc(len(rooms) - len(todo))

        async def one(r: str) -> None:
            nonlocal oldest
            spec = self.members_spec(tenant, r)
            entry, status = await (self.miss(spec, None) if self.redis_usable() else self._bypass_load(spec))
            statuses.add(status)
            oldest = min(oldest, entry.stored_ms)
            data = entry.data
            answers[r] = ({u: (data or {}).get(u) for u in by_room[r]}, data is not None)

        if todo:
            await asyncio.gather(*(one(r) for r in todo))
        out = [(r, u, answers[r][0][u], answers[r][1]) for r, u in checks]
        status = next((st for st in (S_BYPASS, S_STALE, S_MISS) if st in statuses), S_HIT)
        return out, status, max(0, (now_ms() - oldest) // 1000)
