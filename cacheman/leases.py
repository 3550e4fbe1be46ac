"""Fill leases, the Redis side of read-through: take a lease, give it back, write a fill only while it is current.

`lease_acquire.lua` returns the value, grants a lease (SET NX PX) or says "someone is filling"; the holder
writes with `fill_*.lua`, which checks its token is still the lease; `invalidate.lua` (events.py) deletes
value and lease together, so a fill that began before an event can never write the old value back.
Several keys go in one pipelined round trip per node (scripts.Batch); one key is one EVALSHA.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cacheman import metrics as m
from cacheman.config import CacheConfig
from cacheman.entry import Clock, EntryKind, Loaded, Spec, encode_string, hash_fields, jittered_ttl_ms
from cacheman.keys import Keys
from cacheman.redisconn import REDIS_ERRORS, AnyRedis, Topology
from cacheman.scripts import Batch, LuaScript, Scripts

if TYPE_CHECKING:
    from cacheman.health import RedisHealth

_TMP_PX = 60_000  # a temporary build key outlives any fill, then disappears on its own
_HSET_CHUNK = 1000  # big rooms: several HSETs, all invisible until the RENAME
_OUTCOMES = {1: "written", 0: "lease_lost", -1: "older"}  # fill_*.lua results (-2 = temporary key missing)


class LeaseStatus(StrEnum):
    """What `lease_acquire.lua` answered for a key."""

    HIT = "hit"  # the value is fresh: no fill needed
    LEASE = "lease"  # the caller holds the lease: it loads and writes
    WAIT = "wait"  # another caller holds it: poll, then (after a bound) load without writing


class Leases:
    """Lease acquire / release / store for the keys of one fill, in as few round trips as possible (one per node).
    Every failure is reported to the health windows of the nodes concerned."""

    def __init__(self, redis: AnyRedis, scripts: Scripts, cfg: CacheConfig, clock: Clock, health: RedisHealth) -> None:
        self.redis = redis
        self.scripts = scripts
        self.cfg = cfg
        self.clock = clock
        self.health = health
        self.topology = Topology(redis)

    def _batch(self) -> Batch:
        return Batch(self.redis, health=self.health, topology=self.topology)

    async def _one(self, script: LuaScript, keys: list, args: list) -> Any:
        try:
            reply = await script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self.health.failed(keys[0], exc)
            raise
        self.health.ok(keys[0])
        return reply

    async def acquire(self, specs: list[Spec], token: str, *, force: bool = False) -> list[tuple[LeaseStatus, Any] | Exception]:
        """(status, stored value or None) per spec — the value comes back even when expired (stale-if-error) —
        or, for a key whose node did not answer, the exception. `force` ignores a fresh value (a rebuild)."""
        now = self.clock()

        def args(spec: Spec) -> list:
            return [token, self.cfg.lease_ttl_ms, now, spec.kind, "1" if force else "0"]

        if len(specs) == 1:
            spec = specs[0]
            try:
                replies = [await self._one(self.scripts.lease_acquire, [spec.key, Keys.lease(spec.key)], args(spec))]
            except REDIS_ERRORS as exc:
                replies = [exc]
        else:
            batch = self._batch()
            for spec in specs:
                batch.script(self.scripts.lease_acquire, [spec.key, Keys.lease(spec.key)], args(spec))
            replies = await batch.execute(partial=True)
        return [r if isinstance(r, Exception) else (LeaseStatus(r[0].decode() if isinstance(r[0], bytes) else r[0]), r[1] or None)
                for r in replies]

    async def release(self, specs: list[Spec], token: str) -> None:
        """Give the leases back (the origin failed), each only if still ours. Raises a Redis error; an unreleased
        lease expires on its own."""
        if len(specs) == 1:
            await self._one(self.scripts.lease_release, [Keys.lease(specs[0].key)], [token])
            return
        batch = self._batch()
        for spec in specs:
            batch.script(self.scripts.lease_release, [Keys.lease(spec.key)], [token])
        await batch.execute()

    def ttls(self, negative: bool) -> tuple[int, int]:
        """(fresh ms, key px): an entry stays past its freshness for stale-if-error; negatives do not."""
        if negative:
            fresh = int(self.cfg.negative_ttl_s * 1000)
            return fresh, fresh
        fresh = jittered_ttl_ms(self.cfg.ttl_s, self.cfg.ttl_jitter)
        return fresh, fresh + int(self.cfg.stale_ttl_s * 1000)

    async def store(self, fills: list[tuple[Spec, Loaded]], token: str) -> list[int]:
        """Write each loaded value if `token` is still its lease (1 written, 0 lease lost, -1 older than an
        applied event, -2 temporary key missing); counts hotpath_cache_fills_total. Raises a Redis error."""
        now = self.clock()
        try:
            if len(fills) == 1 and fills[0][0].kind is EntryKind.STRING and not (fills[0][0].seq_keys and fills[0][1].extra):
                spec, loaded = fills[0]
                keys, args = self._string_fill(spec, loaded, token, now)
                results = [await self._one(self.scripts.fill_string, keys, args)]
            else:
                batch = self._batch()
                at: list[int] = []  # index of each fill script's reply in the batch
                for spec, loaded in fills:
                    self._queue_fill(batch, spec, loaded, token, now)
                    at.append(len(batch) - 1)
                replies = await batch.execute()
                results = [replies[i] for i in at]
        except REDIS_ERRORS:
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

    def _queue_fill(self, batch: Batch, spec: Spec, loaded: Loaded, token: str, now: int) -> None:
        """Queue one fill; its last command is the fill script (whose reply says what happened)."""
        if spec.seq_keys:
            for room_id, seq in loaded.extra.items():
                batch.script(self.scripts.seq_max, [spec.seq_keys(room_id)], [seq, self.cfg.floor_px])
        if spec.kind is EntryKind.STRING:
            keys, args = self._string_fill(spec, loaded, token, now)
            batch.script(self.scripts.fill_string, keys, args)
            return
        fresh, px = self.ttls(loaded.data is None)
        tmp = Keys.tmp(spec.key, token)  # same hash tag as spec.key: same node, same pipeline
        fields = hash_fields(loaded.data, fresh_until_ms=now + fresh, stored_ms=now, version=loaded.version)
        batch.on(tmp).delete(tmp)
        items = list(fields.items())
        for i in range(0, len(items), _HSET_CHUNK):
            batch.on(tmp).hset(tmp, mapping=dict(items[i : i + _HSET_CHUNK]))
        batch.on(tmp).pexpire(tmp, _TMP_PX)
        batch.script(self.scripts.fill_hash, [spec.key, Keys.lease(spec.key), Keys.floor(spec.key), tmp],
                     [token, px, self._version_arg(spec, loaded), "1" if spec.merge else "0"])
