"""The batch lookups: many rooms, many membership checks, each one pipelined read for the hits.

The misses go through the same fill as single lookups (readthrough.py): rooms are filled together with
ONE origin call (get_rooms) for the keys whose lease this process holds; membership misses are filled per
room (the origin has no batch read of members), concurrently, each joining any fill already in flight.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from cacheman import metrics as m
from cacheman.entry import Entity, Entry, decode_string
from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED
from cacheman.readthrough import Answer, CacheStatus, combined_status

if TYPE_CHECKING:
    from cacheman.cache import CacheService


async def rooms_batch(svc: CacheService, tenant: str, room_ids: list[str]) -> tuple[dict[str, dict], list[str], CacheStatus, int]:
    """Many rooms: one pipelined read, then one fill for all the misses.
    Returns (rooms by id, missing ids, X-Cache of the batch, Age of its oldest answer)."""
    rt, keys = svc.rt, svc.keys
    ids = list(dict.fromkeys(room_ids))
    specs = [svc.room_spec(tenant, r) for r in ids]
    load = svc.rooms_loader(tenant, {s.key: r for s, r in zip(specs, ids, strict=True)})
    rows = None
    if rt.redis_usable():
        pipe = svc.redis.pipeline(transaction=False)
        for r in ids:
            pipe.mget(keys.room_meta(tenant, r), keys.room_seq(tenant, r))
        try:
            rows = await pipe.execute()
        except RedisError as exc:
            rt.redis_failed(exc)
        else:
            rt.redis_ok()
    if rows is None:
        return _rooms_result(svc, ids, await rt.bypass(specs, load), {})
    now = svc.clock()
    answers: dict[str, Answer] = {}
    seqs: dict[str, int] = {}
    stale: dict[str, Entry] = {}
    todo = []
    for r, spec, (raw, raw_seq) in zip(ids, specs, rows, strict=True):
        if raw_seq:
            seqs[r] = int(raw_seq)
        entry = decode_string(raw, now)
        if entry is not None and entry.fresh:
            answers[r] = (entry, CacheStatus.HIT)
        else:
            if entry is not None:
                stale[spec.key] = entry
            todo.append((r, spec))
    m.HITS.labels(Entity.ROOM).inc(len(ids) - len(todo))
    if todo:
        filled = await rt.fill([spec for _, spec in todo], load, stale)
        answers.update((r, a) for (r, _), a in zip(todo, filled, strict=True))
    return _rooms_result(svc, ids, [answers[r] for r in ids], seqs)


def _rooms_result(svc: CacheService, ids: list[str], answers: list[Answer], seqs: dict[str, int]):
    found: dict[str, dict] = {}
    missing: list[str] = []
    oldest = svc.clock()
    for r, (entry, _) in zip(ids, answers, strict=True):
        oldest = min(oldest, entry.stored_ms)
        if entry.data is None:
            missing.append(r)
        else:
            found[r] = svc.with_seq(entry.data, seqs.get(r))
    status = combined_status({st for _, st in answers})
    return found, missing, status, max(0, (svc.clock() - oldest) // 1000)


async def memberships_batch(
    svc: CacheService, tenant: str, checks: list[tuple[str, str]]
) -> tuple[list[tuple[str, str, str | None, bool]], CacheStatus, int]:
    """Many (room, user) checks: one pipelined HMGET per distinct room, misses filled per room (single-flight).
    Returns ([(room, user, role | None, room exists)] in request order, X-Cache of the batch, oldest Age)."""
    rt = svc.rt
    by_room: dict[str, list[str]] = {}
    for r, u in checks:
        by_room.setdefault(r, []).append(u)
    rooms = list(by_room)
    answers: dict[str, tuple[dict[str, str | None], bool]] = {}
    statuses: set[CacheStatus] = set()
    oldest = svc.clock()
    todo = rooms
    if rt.redis_usable():
        pipe = svc.redis.pipeline(transaction=False)
        for r in rooms:
            pipe.hmget(svc.keys.members(tenant, r), F_FRESH, F_STORED, F_NOTFOUND, *by_room[r])
        try:
            rows = await pipe.execute()
        except RedisError as exc:
            rt.redis_failed(exc)
        else:
            rt.redis_ok()
            now = svc.clock()
            todo = []
            for r, row in zip(rooms, rows, strict=True):
                fresh_b, stored_b, nx_b, *roles = row
                if fresh_b is not None and int(fresh_b) > now:
                    answers[r] = ({u: (x.decode() if x is not None else None) for u, x in zip(by_room[r], roles, strict=True)}, nx_b is None)
                    statuses.add(CacheStatus.HIT)
                    oldest = min(oldest, int(stored_b))
                else:
                    todo.append(r)
            if len(rooms) > len(todo):
                m.HITS.labels(Entity.MEMBERS).inc(len(rooms) - len(todo))

    async def one(r: str) -> None:
        nonlocal oldest
        spec = svc.members_spec(tenant, r)
        entry, status = await (rt.miss(spec, None) if rt.redis_usable() else rt.bypass_one(spec))
        statuses.add(status)
        oldest = min(oldest, entry.stored_ms)
        data = entry.data
        answers[r] = ({u: (data or {}).get(u) for u in by_room[r]}, data is not None)

    if todo:
        await asyncio.gather(*(one(r) for r in todo))
    out = [(r, u, answers[r][0][u], answers[r][1]) for r, u in checks]
    return out, combined_status(statuses), max(0, (svc.clock() - oldest) // 1000)
