"""Test doubles for the cache tests: an in-memory Origin that counts calls and can block or fail, and helpers.

The fake implements cacheman.origin.base.Origin exactly, so the cache under test sees the same contract
as with SqlOrigin / HttpOrigin; real origins are used by the route, stampede and degraded tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio as aioredis

from cacheman.cache import CacheConfig, CacheService
from cacheman.entry import Clock, now_ms
from cacheman.errors import OriginUnavailable
from cacheman.events import EventApplier
from cacheman.origin.base import Member, Members, ReadState, Room


class FakeOrigin:
    """Per-tenant rooms, members (with members_version), last_seq and read states; every call counted."""

    name = "fake"

    def __init__(self) -> None:
        self.rooms: dict[tuple[str, str], Room] = {}
        self.members: dict[tuple[str, str], dict[str, str]] = {}
        self.members_version: dict[tuple[str, str], int] = {}
        self.reads: dict[tuple[str, str, str], int] = {}
        self.calls: Counter = Counter()
        self.rooms_asked: list[list[str]] = []  # the ids of each get_rooms call
        self.down = False
        self.delay = 0.0
        self.gate: asyncio.Event | None = None  # when set to an unset Event, loads wait for it
        self.entered = asyncio.Event()  # set when a load has read its data (and is about to wait on the gate)
        self.in_flight = 0
        self.yields_after_read = 0  # let other tasks run between reading the data and answering
        self.max_in_flight = 0

    # --- test setup
    def add_room(self, t: str, r: str, *, name: str = "", version: int = 1, last_seq: int = 0, members: dict[str, str] | None = None) -> None:
        self.rooms[(t, r)] = Room(room_id=r, name=name or r, version=version, last_seq=last_seq)
        self.members[(t, r)] = dict(members or {})
        self.members_version[(t, r)] = 1

    def set_member(self, t: str, r: str, u: str, role: str | None) -> int:
        if role is None:
            self.members[(t, r)].pop(u, None)
        else:
            self.members[(t, r)][u] = role
        self.members_version[(t, r)] += 1
        return self.members_version[(t, r)]

    async def _enter(self, op: str):
        self.calls[op] += 1
        self.calls["total"] += 1
        if self.down:
            raise OriginUnavailable(f"fake origin is down ({op})")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def _leave(self):
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(self.yields_after_read + 1):
            await asyncio.sleep(0)

    async def get_room(self, tenant: str, room_id: str) -> Room | None:
        await self._enter("get_room")
        room = self.rooms.get((tenant, room_id))
        room = room.model_copy() if room else None
        await self._leave()
        return room

    async def get_rooms(self, tenant: str, room_ids: list[str]) -> dict[str, Room]:
        self.rooms_asked.append(list(room_ids))
        await self._enter("get_rooms")
        out = {r: self.rooms[(tenant, r)].model_copy() for r in room_ids if (tenant, r) in self.rooms}
        await self._leave()
        return out

    async def get_members(self, tenant: str, room_id: str) -> Members | None:
        await self._enter("get_members")
        if (tenant, room_id) not in self.rooms:
            await self._leave()
            return None
        ms = Members(
            room_id=room_id,
            version=self.members_version[(tenant, room_id)],
            members=[Member(user_id=u, role=r) for u, r in sorted(self.members[(tenant, room_id)].items())],
        )
        await self._leave()
        return ms

    async def get_user_rooms(self, tenant: str, user_id: str) -> list[str]:
        await self._enter("get_user_rooms")
        out = sorted(r for (t, r), ms in self.members.items() if t == tenant and user_id in ms)
        await self._leave()
        return out

    async def get_read_states(self, tenant: str, user_id: str) -> list[ReadState]:
        await self._enter("get_read_states")
        out = [
            ReadState(room_id=r, last_seq=self.rooms[(t, r)].last_seq, last_read_seq=self.reads.get((t, r, user_id), 0))
            for (t, r), ms in sorted(self.members.items())
            if t == tenant and user_id in ms
        ]
        await self._leave()
        return out

    def unread(self, tenant: str, user_id: str) -> dict:
        rooms = {
            r: max(0, self.rooms[(t, r)].last_seq - self.reads.get((t, r, user_id), 0))
            for (t, r), ms in sorted(self.members.items())
            if t == tenant and user_id in ms
        }
        return {"total": sum(rooms.values()), "rooms": rooms}

    async def ping(self) -> None:
        if self.down:
            raise OriginUnavailable("fake origin is down")

    async def aclose(self) -> None:
        return None


class FakeClock:
    """Epoch ms that moves only when told: entry ages and freshness without sleeping (and without racing)."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = now_ms() if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


def make_cache(redis: aioredis.Redis, origin, prefix: str, *, clock: Clock = now_ms, **cfg) -> tuple[CacheService, EventApplier]:
    """A CacheService and an EventApplier sharing `prefix` (the test's key prefix)."""
    config = CacheConfig(prefix=prefix, **cfg)
    cache = CacheService(redis, origin, config, clock=clock)
    events = EventApplier(redis, cache.keys, floor_px=config.floor_px, seq_px=config.floor_px, scripts=cache.scripts)
    return cache, events


def redis_client(url: str, timeout_s: float = 2.0) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
