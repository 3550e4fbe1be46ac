"""Fill leases, the Redis side of read-through: take a lease, give it back, write a fill only while it is current.

`lease_acquire.lua` returns the value, grants a lease (SET NX PX) or says "someone is filling"; the holder
writes with `fill_*.lua`, which checks its token is still the lease; `invalidate.lua` (events.py) deletes
value and lease together, so a fill that began before an event can never write the old value back.
Several keys go in one pipelined round trip; one key is one EVALSHA (a pipeline would add SCRIPT EXISTS).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cacheman import metrics as m
from cacheman.config import CacheConfig
from cacheman.entry import Clock, EntryKind, Loaded, Spec, encode_string, hash_fields, jittered_ttl_ms
from cacheman.keys import Keys
from cacheman.scripts import Scripts, call_in_pipeline

_TMP_PX = 60_000  # a temporary build key outlives any fill, then disappears on its own
_HSET_CHUNK = 1000  # big rooms: several HSETs, all invisible until the RENAME
_OUTCOMES = {1: "written", 0: "lease_lost", -1: "older"}  # fill_*.lua results (-2 = temporary key missing)


class LeaseStatus(StrEnum):
    """What `lease_acquire.lua` answered for a key."""

    HIT = "hit"  # the value is fresh: no fill needed
    LEASE = "lease"  # the caller holds the lease: it loads and writes
    WAIT = "wait"  # another caller holds it: poll, then (after a bound) load without writing


class Leases:
    """Lease acquire / release / store for the keys of one fill, in as few round trips as possible."""

    def __init__(self, redis: aioredis.Redis, scripts: Scripts, cfg: CacheConfig, clock: Clock) -> None:
        self.redis = redis
        self.scripts = scripts
        self.cfg = cfg
        self.clock = clock

    async def acquire(self, specs: list[Spec], token: str, *, force: bool = False) -> list[tuple[LeaseStatus, Any]]:
        """(status, stored value or None) per spec; the value comes back even when expired (stale-if-error).
        `force` ignores a fresh value (a rebuild). Raises RedisError."""
        now = self.clock()

        def args(spec: Spec) -> list:
            return [token, self.cfg.lease_ttl_ms, now, spec.kind, "1" if force else "0"]

        if len(specs) == 1:
            spec = specs[0]
            replies = [await self.scripts.lease_acquire(keys=[spec.key, Keys.lease(spec.key)], args=args(spec))]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for spec in specs:
                call_in_pipeline(pipe, self.scripts.lease_acquire, [spec.key, Keys.lease(spec.key)], args(spec))
            replies = await pipe.execute()
        return [(LeaseStatus(st.decode() if isinstance(st, bytes) else st), raw or None) for st, raw in replies]

    async def release(self, specs: list[Spec], token: str) -> None:
        """Give the leases back (the origin failed), each only if still ours. Raises RedisError; an unreleased
        lease expires on its own."""
        if len(specs) == 1:
            await self.scripts.lease_release(keys=[Keys.lease(specs[0].key)], args=[token])
            return
        pipe = self.redis.pipeline(transaction=False)
        for spec in specs:
            call_in_pipeline(pipe, self.scripts.lease_release, [Keys.lease(spec.key)], [token])
        await pipe.execute()

    def ttls(self, negative: bool) -> tuple[int, int]:
        """(fresh ms, key px): an entry stays past its freshness for stale-if-error; negatives do not."""
        if negative:
            fresh = int(self.cfg.negative_ttl_s * 1000)
            return fresh, fresh
        fresh = jittered_ttl_ms(self.cfg.ttl_s, self.cfg.ttl_jitter)
        return fresh, fresh + int(self.cfg.stale_ttl_s * 1000)

    async def store(self, fills: list[tuple[Spec, Loaded]], token: str) -> list[int]:
        """Write each loaded value if `token` is still its lease (1 written, 0 lease lost, -1 older than an
        applied event, -2 temporary key missing); counts hotpath_cache_fills_total. Raises RedisError."""
        now = self.clock()
        try:
            if len(fills) == 1 and fills[0][0].kind is EntryKind.STRING and not (fills[0][0].seq_keys and fills[0][1].extra):
                spec, loaded = fills[0]
                keys, args = self._string_fill(spec, loaded, token, now)
                results = [await self.scripts.fill_string(keys=keys, args=args)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                at: list[int] = []  # index of each fill script's reply in the pipeline
                for spec, loaded in fills:
                    self._queue_fill(pipe, spec, loaded, token, now)
                    at.append(len(pipe) - 1)
                replies = await pipe.execute()
                results = [replies[i] for i in at]
        except RedisError:
            for spec, _ in fills:
                m.FILLS.labels(spec.entity, "error").inc()
            raise
        out = [int(r) for r in results]
        for (spec, _), r in zip(fills, out, strict=True):
            m.FILLS.labels(spec.entity, _OUTCOMES.get(r, "error")).inc()
        return out

    def _version_arg(self, spec: Spec, loaded: Loaded) -> str:
        """'' = not versioned: a negative entry, or an entity whose events carry no version."""
        if loaded.data is None or not spec.versioned or loaded.version is None:
            return ""
        return str(loaded.version)

    def _string_fill(self, spec: Spec, loaded: Loaded, token: str, now: int) -> tuple[list, list]:
        fresh, px = self.ttls(loaded.data is None)
        payload = encode_string(loaded.data, fresh_until_ms=now + fresh, stored_ms=now, version=loaded.version)
        return [spec.key, Keys.lease(spec.key), Keys.floor(spec.key)], [token, payload, px, self._version_arg(spec, loaded)]

    def _queue_fill(self, pipe: Any, spec: Spec, loaded: Loaded, token: str, now: int) -> None:
        """Queue one fill on `pipe`; its last command is the fill script (whose reply says what happened)."""
        if spec.seq_keys:
            for room_id, seq in loaded.extra.items():
                call_in_pipeline(pipe, self.scripts.seq_max, [spec.seq_keys(room_id)], [seq, self.cfg.floor_px])
        if spec.kind is EntryKind.STRING:
            keys, args = self._string_fill(spec, loaded, token, now)
            call_in_pipeline(pipe, self.scripts.fill_string, keys, args)
            return
        fresh, px = self.ttls(loaded.data is None)
        tmp = Keys.tmp(spec.key, token)
        fields = hash_fields(loaded.data, fresh_until_ms=now + fresh, stored_ms=now, version=loaded.version)
        pipe.delete(tmp)
        items = list(fields.items())
        for i in range(0, len(items), _HSET_CHUNK):
            pipe.hset(tmp, mapping=dict(items[i : i + _HSET_CHUNK]))
        pipe.pexpire(tmp, _TMP_PX)
        call_in_pipeline(pipe, self.scripts.fill_hash, [spec.key, Keys.lease(spec.key), Keys.floor(spec.key), tmp],
                         [token, px, self._version_arg(spec, loaded), "1" if spec.merge else "0"])
