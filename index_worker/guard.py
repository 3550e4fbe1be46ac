"""The per-message version guard in Redis: drops stale upserts and deletes, and fences concurrent writers.

Fencing: a per-message lease (token|version, PX) taken in the claim and held across the Milvus write; a writer
of another version meets "busy" and retries after it, so v3's upsert can never land after v4's.
Why a lease over claim→write→re-check: the re-check's repair needs the newer version's payload, which only
its own job has; a lease orders the writes instead. Its TTL must exceed the longest write (the store's bounded
timeout × chunks): a write is only unfenced if it outlives its lease, which confirm() then reports as `lost`.

State per message (hash `{prefix}{tenant/message}:g`): `v` newest version claimed, `op` u|d, `done` newest
version written. Tombstones (op d) expire after `tombstone_ttl_s` (default 7 days): an upsert older than a
delete that arrives later than that is no longer recognised as stale. Upsert states are kept (or expire after
`upsert_ttl_s` when set). Both keys of a message share a hash tag; a batch is one script call (the guard lives
on the queue's Redis, one primary, like ARQ's keys).

Rooms: `delete_room` leaves a room tombstone (`{prefix}{tenant/room}:rd`, same TTL as message tombstones) set
before the room's rows are deleted; upserts into a tombstoned room are stale. A write racing the deletion is
fenced by a re-check after the write (indexer.py): either it sees the tombstone and deletes its own rows, or it
finished before the tombstone was set, hence before the room's delete, which removes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any, Generic, Protocol, TypeVar

OPS = {"upsert": "u", "delete": "d"}
DEFAULT_TOMBSTONE_TTL_S = 7 * 24 * 3600


class Versioned(Protocol):
    """What the guard reads of an event: whose message, which version, upsert or delete."""

    tenant_id: str
    message_id: str
    version: int
    op: str  # "upsert" | "delete"


E = TypeVar("E", bound=Versioned)


@cache
def _source(name: str) -> str:
    return (files("index_worker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def newest_per_message(events: Sequence[E]) -> tuple[list[E], list[E]]:
    """Collapse a batch to one event per message: the newest version, a delete beating an upsert of the same
    version; returns (winners in first-seen order, the superseded rest)."""
    best: dict[tuple[str, str], E] = {}
    order: list[tuple[str, str]] = []
    losers: list[E] = []
    for ev in events:
        if ev.op not in OPS:
            raise ValueError(f"unknown op {ev.op!r}: the guard orders {', '.join(OPS)}")
        key = (ev.tenant_id, ev.message_id)
        cur = best.get(key)
        if cur is None:
            best[key] = ev
            order.append(key)
        elif (ev.version, ev.op == "delete") > (cur.version, cur.op == "delete"):
            losers.append(cur)
            best[key] = ev
        else:
            losers.append(ev)
    return [best[k] for k in order], losers


@dataclass
class Claim(Generic[E]):
    """The outcome of one claim: write `go`, drop `stale`, retry `busy` after `retry_after_s`."""

    token: str
    go: list[E] = field(default_factory=list)
    stale: list[E] = field(default_factory=list)
    busy: list[E] = field(default_factory=list)
    retry_after_s: float = 0.0


@dataclass
class Confirmed(Generic[E]):
    """After the write: `lost` are writes that outlived their lease while a newer version was claimed."""

    confirmed: list[E] = field(default_factory=list)
    late: list[E] = field(default_factory=list)
    lost: list[E] = field(default_factory=list)


class VersionGuard:
    """Claim → write → confirm, batched: one Redis script call per step for a whole batch."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        lease_ttl_s: float = 120.0,
        tombstone_ttl_s: int = DEFAULT_TOMBSTONE_TTL_S,
        upsert_ttl_s: int = 0,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they would break the per-message hash tag)")
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = max(1, int(lease_ttl_s * 1000))
        self.tombstone_ttl_s = int(tombstone_ttl_s)
        self.upsert_ttl_s = int(upsert_ttl_s)
        self._claim = redis.register_script(_source("guard_claim"))
        self._confirm = redis.register_script(_source("guard_confirm"))
        self._known = redis.register_script(_source("guard_known"))

    # `{tenant/message}`: ids may contain `:` but no tenant id contains `/` (store.py message_pk), so two
    # tenants' messages never share a key.
    def state_key(self, tenant_id: str, message_id: str) -> str:
        return f"{self.prefix}{{{tenant_id}/{message_id}}}:g"

    def lease_key(self, tenant_id: str, message_id: str) -> str:
        return f"{self.prefix}{{{tenant_id}/{message_id}}}:l"

    def _keys(self, events: Sequence[Versioned]) -> list[str]:
        keys: list[str] = []
        for ev in events:
            keys += [self.state_key(ev.tenant_id, ev.message_id), self.lease_key(ev.tenant_id, ev.message_id)]
        return keys

    async def claim(self, events: Sequence[E]) -> Claim[E]:
        """Decide, for a batch, which events to write now (lease taken), which are stale, which must wait."""
        winners, superseded = newest_per_message(events)
        result: Claim[E] = Claim(token=uuid.uuid4().hex, stale=list(superseded))
        if not winners:
            return result
        args: list[Any] = [result.token, self.lease_ms, self.tombstone_ttl_s, self.upsert_ttl_s]
        for ev in winners:
            args += [int(ev.version), OPS[ev.op]]
        verdicts = await self._claim(keys=self._keys(winners), args=args)
        for ev, verdict in zip(winners, verdicts, strict=True):
            code = int(verdict[0])
            if code == 0:
                result.go.append(ev)
            elif code == 1:
                result.stale.append(ev)
            else:
                result.busy.append(ev)
                result.retry_after_s = max(result.retry_after_s, int(verdict[1]) / 1000)
        return result

    async def confirm(self, claim: Claim[E], events: Sequence[E] | None = None) -> Confirmed[E]:
        """After the Milvus write of `events` (default: all of `claim.go`) succeeded: record them as written
        and release their leases."""
        events = list(claim.go if events is None else events)
        out: Confirmed[E] = Confirmed()
        if not events:
            return out
        codes = await self._confirm(keys=self._keys(events), args=[claim.token, "1", *(int(e.version) for e in events)])
        for ev, code in zip(events, codes, strict=True):
            (out.confirmed, out.late, out.lost)[int(code)].append(ev)
        return out

    async def release(self, claim: Claim[E], events: Sequence[E] | None = None) -> None:
        """Give leases back when the write surely did not happen (validation failed, connection refused).
        After a timeout, whose write may still land, do not release: let the lease expire."""
        events = list(claim.go if events is None else events)
        if events:
            await self._confirm(keys=self._keys(events), args=[claim.token, "0", *(int(e.version) for e in events)])

    def room_key(self, tenant_id: str, room_id: str) -> str:
        return f"{self.prefix}{{{tenant_id}/{room_id}}}:rd"

    async def delete_rooms(self, rooms: Sequence[tuple[str, str]]) -> None:
        """Tombstone (tenant, room) pairs for `tombstone_ttl_s`: from now on their upserts are stale."""
        if rooms:
            async with self.redis.pipeline(transaction=False) as p:
                for tenant_id, room_id in rooms:
                    p.set(self.room_key(tenant_id, room_id), 1, ex=self.tombstone_ttl_s)
                await p.execute()

    async def deleted_rooms(self, rooms: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (tenant, room) pairs are tombstoned."""
        rooms = list(dict.fromkeys(rooms))
        if not rooms:
            return set()
        async with self.redis.pipeline(transaction=False) as p:
            for tenant_id, room_id in rooms:
                p.exists(self.room_key(tenant_id, room_id))
            found = await p.execute()
        return {room for room, n in zip(rooms, found, strict=True) if n}

    async def known(self, messages: Sequence[tuple[str, str]]) -> list[bool]:
        """For (tenant, message id) pairs: does the guard know the message (indexed, claimed or tombstoned)?
        Backfill (version 0) skips known messages, so it never resurrects a deletion nor undoes an edit."""
        if not messages:
            return []
        keys = [self.state_key(t, m) for t, m in messages]
        return [bool(x) for x in await self._known(keys=keys)]

    async def state(self, tenant_id: str, message_id: str) -> dict[str, str]:
        """The guard's record of one message (ops and tests): {'v', 'op', 'done'} as strings, or {}."""
        raw = await self.redis.hgetall(self.state_key(tenant_id, message_id))
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
