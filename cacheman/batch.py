"""The batch lookups: many rooms, many membership checks, each one pipelined read for the hits.

The misses go through the same fill as single lookups (readthrough.py): rooms are filled together with
ONE origin call (get_rooms) for the keys whose lease this process holds; membership misses are filled per
room (the origin has no batch read of members), concurrently, each joining any fill already in flight.
On a Cluster the rooms span slots: the reads are one pipeline per node (scripts.Batch), and the rooms of a node
that is down are answered from the origin (bypass) while the others hit.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cacheman import metrics as m
from cacheman.entry import Entity, Entry, decode_string
from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED
from cacheman.readthrough import Answer, CacheStatus, combined_status

if TYPE_CHECKING:
    from cacheman.cache import CacheService


async def rooms_batch(svc: CacheService, tenant: str, room_ids: list[str]) -> tuple[dict[str, dict], list[str], CacheStatus, int]:
    """Many rooms: one pipelined read per node, then one fill for all the misses (and, when a node is down, one
    bypass origin call for its rooms). Returns (rooms by id, missing ids, X-Cache of the batch, oldest Age)."""
    rt, keys = svc.rt, svc.keys
    ids = list(dict.fromkeys(room_ids))
    specs = {r: svc.room_spec(tenant, r) for r in ids}
    load = svc.rooms_loader(tenant, {s.key: r for r, s in specs.items()})
    usable = {r: rt.redis_usable(specs[r].key) for r in ids}
    down = [r for r in ids if not usable[r]]
    asked = [r for r in ids if usable[r]]
    rows: list = []
    if asked:
        batch = rt.batch()
        for r in asked:  # meta and seq share the room's hash tag: one slot, one MGET
            batch.on(specs[r].key).execute_command("MGET", keys.room_meta(tenant, r), keys.room_seq(tenant, r))
        rows = await batch.execute(partial=True)  # a room whose node did not answer: its exception
    now = svc.clock()
    answers: dict[str, Answer] = {}
    seqs: dict[str, int] = {}
    stale: dict[str, Entry] = {}
    todo = []
    for r, row in zip(asked, rows, strict=True):
        if isinstance(row, Exception):
            down.append(r)
            continue
        raw, raw_seq = row
        if raw_seq:
            seqs[r] = int(raw_seq)
        entry = decode_string(raw, now)
        if entry is not None and entry.fresh:
            answers[r] = (entry, CacheStatus.HIT)
        else:
            if entry is not None:
                stale[specs[r].key] = entry
            todo.append(r)
    m.HITS.labels(Entity.ROOM).inc(len(answers))  # so far, only the hits are answered

    async def bypassed() -> None:
        answers.update(zip(down, await rt.bypass([specs[r] for r in down], load), strict=True))

    async def filled() -> None:
        answers.update(zip(todo, await rt.fill([specs[r] for r in todo], load, stale), strict=True))

    await asyncio.gather(*([bypassed()] if down else []), *([filled()] if todo else []))
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
    """Many (room, user) checks: one pipelined HMGET per distinct room (one round trip per node), misses filled
    per room (single-flight), rooms of a node that is down from the origin (bypass).
    Returns ([(room, user, role | None, room exists)] in request order, X-Cache of the batch, oldest Age)."""
    rt = svc.rt
    by_room: dict[str, list[str]] = {}
    for r, u in checks:
        by_room.setdefault(r, []).append(u)
    key = {r: svc.keys.members(tenant, r) for r in by_room}
    usable = {r: rt.redis_usable(key[r]) for r in by_room}
    asked = [r for r in by_room if usable[r]]
    answers: dict[str, tuple[dict[str, str | None], bool]] = {}
    statuses: set[CacheStatus] = set()
    oldest = svc.clock()
    todo = [r for r in by_room if not usable[r]]  # their node is down: bypass (below)
    if asked:
        batch = rt.batch()
        for r in asked:
            batch.on(key[r]).hmget(key[r], F_FRESH, F_STORED, F_NOTFOUND, *by_room[r])
        rows = await batch.execute(partial=True)
        now = svc.clock()
        hits = 0
        for r, row in zip(asked, rows, strict=True):
            if isinstance(row, Exception):
                todo.append(r)
                continue
            fresh_b, stored_b, nx_b, *roles = row
            if fresh_b is not None and int(fresh_b) > now:
                answers[r] = ({u: (x.decode() if x is not None else None) for u, x in zip(by_room[r], roles, strict=True)}, nx_b is None)
                statuses.add(CacheStatus.HIT)
                oldest = min(oldest, int(stored_b))
                hits += 1
            else:
                todo.append(r)
        if hits:
            m.HITS.labels(Entity.MEMBERS).inc(hits)

    async def one(r: str) -> None:
        nonlocal oldest
        spec = svc.members_spec(tenant, r)
        entry, status = await (rt.miss(spec, None) if rt.redis_usable(spec.key) else rt.bypass_one(spec))
        statuses.add(status)
        oldest = min(oldest, entry.stored_ms)
        data = entry.data
        answers[r] = ({u: (data or {}).get(u) for u in by_room[r]}, data is not None)

    if todo:
        await asyncio.gather(*(one(r) for r in todo))
    out = [(r, u, answers[r][0][u], answers[r][1]) for r, u in checks]
    return out, combined_status(statuses), max(0, (svc.clock() - oldest) // 1000)
