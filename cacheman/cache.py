"""The cached lookups the API answers, per entity: room, members, membership check, rooms of a user, unread counts.

A hit is one Redis command (MGET / HMGET / HGETALL); everything else goes through the read-through core
(readthrough.py). The batch lookups live in batch.py; CacheService exposes them so routes see one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cacheman import batch
from cacheman import metrics as m
from cacheman.config import CacheConfig
from cacheman.entry import Clock, Entity, Entry, Loaded, Spec, decode_string, now_ms
from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED, Keys
from cacheman.origin.base import Origin, Room
from cacheman.readthrough import CacheStatus, Loader, ReadThrough
from cacheman.redisconn import REDIS_ERRORS, AnyRedis

__all__ = ["CacheConfig", "CacheService", "CacheStatus", "Result", "unread_count"]


def unread_count(last_seq: int, last_read_seq: int) -> int:
    """Unread messages of one room: derived from two monotonic numbers, so it cannot drift."""
    return max(0, last_seq - last_read_seq)


@dataclass(slots=True)
class Result:
    """A lookup's answer and how it was obtained (X-Cache, Age)."""

    value: Any
    status: CacheStatus
    age_s: int = 0


def room_loaded(room_id: str, room: Room | None) -> Loaded:
    """A room in cache form; its last_seq also goes to the room's seq key (max-merged)."""
    if room is None:
        return Loaded(None)
    return Loaded(room.model_dump(), room.version, {room_id: room.last_seq})


class CacheService:
    """All cached lookups of all tenants over one Redis client and one origin."""

    def __init__(
        self, redis: AnyRedis, origin: Origin, config: CacheConfig | None = None, near=None, *, clock: Clock = now_ms
    ) -> None:
        self.redis = redis
        self.origin = origin
        self.cfg = config or CacheConfig()
        self.clock = clock  # epoch ms; tests pass a controlled one
        self.rt = ReadThrough(redis, self.cfg, clock=clock)
        self.scripts = self.rt.scripts
        self.keys = Keys(self.cfg.prefix)
        self.near = near  # NearCache | None

    # ----------------------------------------------------------------- specs per entity

    def room_spec(self, tenant: str, room_id: str) -> Spec:
        async def load() -> Loaded:
            return room_loaded(room_id, await self.origin.get_room(tenant, room_id))

        return Spec(Entity.ROOM, self.keys.room_meta(tenant, room_id), load, versioned=True,
                    seq_keys=lambda r: self.keys.room_seq(tenant, r))

    def rooms_loader(self, tenant: str, by_key: dict[str, str]) -> Loader:
        """ONE origin call (get_rooms) for the room specs of a batch; `by_key`: spec key → room id."""
        async def load(specs: list[Spec]) -> dict[str, Loaded]:
            rooms = await self.origin.get_rooms(tenant, [by_key[s.key] for s in specs])
            return {s.key: room_loaded(by_key[s.key], rooms.get(by_key[s.key])) for s in specs}

        return load

    def members_spec(self, tenant: str, room_id: str) -> Spec:
        async def load() -> Loaded:
            ms = await self.origin.get_members(tenant, room_id)
            if ms is None:
                return Loaded(None)
            return Loaded({mb.user_id: mb.role for mb in ms.members}, ms.version)

        return Spec(Entity.MEMBERS, self.keys.members(tenant, room_id), load, versioned=True)

    def user_rooms_spec(self, tenant: str, user_id: str) -> Spec:
        async def load() -> Loaded:
            return Loaded({r: "1" for r in await self.origin.get_user_rooms(tenant, user_id)})

        return Spec(Entity.USER_ROOMS, self.keys.user_rooms(tenant, user_id), load)

    def reads_spec(self, tenant: str, user_id: str) -> Spec:
        async def load() -> Loaded:
            states = await self.origin.get_read_states(tenant, user_id)
            return Loaded({s.room_id: str(s.last_read_seq) for s in states}, None, {s.room_id: s.last_seq for s in states})

        return Spec(Entity.READS, self.keys.user_reads(tenant, user_id), load, merge=True,
                    seq_keys=lambda r: self.keys.room_seq(tenant, r))

    @staticmethod
    def with_seq(room: dict | None, seq: int | None) -> dict | None:
        """A room with last_seq raised to what applied message events announced (the room's seq key)."""
        if room is not None and seq is not None and seq > room.get("last_seq", 0):
            return {**room, "last_seq": seq}
        return room

    # ----------------------------------------------------------------- lookups

    async def room(self, tenant: str, room_id: str) -> Result:
        """Room metadata (dict) or None; last_seq is the max of the cached room and applied message events."""
        rt = self.rt
        spec = self.room_spec(tenant, room_id)
        seq: int | None = None
        if rt.redis_usable(spec.key):
            try:  # the room's meta and seq keys share its hash tag: one slot, one MGET
                raw, raw_seq = await self.redis.mget(spec.key, self.keys.room_seq(tenant, room_id))
            except REDIS_ERRORS as exc:
                rt.redis_failed(spec.key, exc)
                entry, status = await rt.bypass_one(spec)
            else:
                rt.redis_ok(spec.key)
                seq = int(raw_seq) if raw_seq else None
                entry = decode_string(raw, self.clock())
                if entry is not None and entry.fresh:
                    m.HITS.labels(Entity.ROOM).inc()
                    status = CacheStatus.HIT
                else:
                    entry, status = await rt.miss(spec, entry)
        else:
            entry, status = await rt.bypass_one(spec)
        return Result(self.with_seq(entry.data, seq), status, entry.age_s(self.clock()))

    async def members(self, tenant: str, room_id: str) -> Result:
        """{"room_id", "version", "members": [{user_id, role}]} or None when the room does not exist."""
        entry, status = await self.rt.get(self.members_spec(tenant, room_id))
        if entry.data is None:
            return Result(None, status, entry.age_s(self.clock()))
        members = [{"user_id": u, "role": r} for u, r in sorted(entry.data.items())]
        return Result({"room_id": room_id, "version": entry.version or 0, "members": members}, status, entry.age_s(self.clock()))

    async def member_role(self, tenant: str, room_id: str, user_id: str) -> tuple[Result, bool]:
        """The membership check: (Result(role | None), room_exists). A hit is one HMGET."""
        rt = self.rt
        key = self.keys.members(tenant, room_id)
        near = self.near
        gen = 0
        if near is not None:
            got = near.get(key, user_id)
            if got is not None:
                role, exists, stored = got
                m.NEAR_HITS.inc()
                return Result(role, CacheStatus.HIT, max(0, (self.clock() - stored) // 1000)), exists
            gen = near.generation
        if rt.redis_usable(key):
            try:
                role_b, fresh_b, stored_b, nx_b = await self.redis.hmget(key, user_id, F_FRESH, F_STORED, F_NOTFOUND)
            except REDIS_ERRORS as exc:
                rt.redis_failed(key, exc)
            else:
                rt.redis_ok(key)
                now = self.clock()
                if fresh_b is not None and int(fresh_b) > now:
                    m.HITS.labels(Entity.MEMBERS).inc()
                    role = role_b.decode() if role_b is not None else None
                    stored = int(stored_b)
                    if near is not None:
                        near.put(key, user_id, role, nx_b is None, stored, gen)
                    return Result(role, CacheStatus.HIT, max(0, (now - stored) // 1000)), nx_b is None
                entry, status = await rt.miss(self.members_spec(tenant, room_id), None)
                res, exists = self._role_of(entry, status, user_id)
                if near is not None and status in (CacheStatus.MISS, CacheStatus.HIT):
                    near.put(key, user_id, res.value, exists, entry.stored_ms, gen)
                return res, exists
        entry, status = await rt.bypass_one(self.members_spec(tenant, room_id))
        return self._role_of(entry, status, user_id)

    def _role_of(self, entry: Entry, status: CacheStatus, user_id: str) -> tuple[Result, bool]:
        age = entry.age_s(self.clock())
        if entry.data is None:
            return Result(None, status, age), False
        return Result(entry.data.get(user_id), status, age), True

    async def user_rooms(self, tenant: str, user_id: str) -> Result:
        """Sorted room ids of a user."""
        entry, status = await self.rt.get(self.user_rooms_spec(tenant, user_id))
        return Result(sorted(entry.data or {}), status, entry.age_s(self.clock()))

    async def unread(self, tenant: str, user_id: str) -> Result:
        """{"total", "rooms": {room_id: count}}: max(0, room last_seq − user last_read_seq) per room."""
        spec = self.reads_spec(tenant, user_id)
        entry, status = await self.rt.get(spec)
        reads = {r: int(s) for r, s in (entry.data or {}).items()}
        if status in (CacheStatus.HIT, CacheStatus.STALE) and reads:
            seqs = await self.room_seqs(tenant, list(reads))
            if seqs is None or (status is CacheStatus.HIT and any(s is None for s in seqs.values())):
                # A room's last_seq expired from Redis: rebuild both from the origin.
                entry, status = await self.rt.miss(spec, entry, force=True)
                reads = {r: int(s) for r, s in (entry.data or {}).items()}
            else:
                return self._unread_result(reads, {r: s or 0 for r, s in seqs.items()}, status, entry)
        cached = await self.room_seqs(tenant, list(reads)) if status is CacheStatus.MISS and reads else None
        # After a fill Redis holds max(origin, events); the origin's own numbers are the floor.
        origin_seqs = entry.extra or {}
        seqs = {r: max((cached or {}).get(r) or 0, origin_seqs.get(r, 0)) for r in reads}
        return self._unread_result(reads, seqs, status, entry)

    async def room_seqs(self, tenant: str, rooms: list[str]) -> dict[str, int | None] | None:
        """The cached last_seq of each room (None: not cached); None when Redis cannot answer for one of them."""
        rt = self.rt
        keys = [self.keys.room_seq(tenant, r) for r in rooms]
        if not all(rt.redis_usable(k) for k in keys):
            return None
        batch = rt.batch()
        for k in keys:
            batch.on(k).get(k)
        try:
            vals = await batch.execute()
        except REDIS_ERRORS:
            return None
        return {r: (int(v) if v is not None else None) for r, v in zip(rooms, vals, strict=True)}

    def _unread_result(self, reads: dict[str, int], seqs: dict[str, int], status: CacheStatus, entry: Entry) -> Result:
        rooms = {r: unread_count(seqs.get(r, 0), reads[r]) for r in sorted(reads)}
        return Result({"total": sum(rooms.values()), "rooms": rooms}, status, entry.age_s(self.clock()))

    # ----------------------------------------------------------------- batches (batch.py)

    async def rooms_batch(self, tenant: str, room_ids: list[str]) -> tuple[dict[str, dict], list[str], CacheStatus, int]:
        """Many rooms; ONE origin call for all misses. (rooms by id, missing ids, X-Cache, Age of the oldest)."""
        return await batch.rooms_batch(self, tenant, room_ids)

    async def memberships_batch(
        self, tenant: str, checks: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str, str | None, bool]], CacheStatus, int]:
        """Many (room, user) checks: ([(room, user, role | None, room exists)] in request order, X-Cache, Age)."""
        return await batch.memberships_batch(self, tenant, checks)
