"""Change events (the wire shape producers depend on, see docs/events.md) and how they apply to the cache.

Events never write entity data: they invalidate (value + lease in one script), patch a members hash
when the version is the next in sequence, or max-merge a sequence number. All of those are idempotent
and commute, so a duplicated or reordered event gives the same cache as one delivery in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cacheman import metrics as m
from cacheman.entry import EntryKind, now_ms
from cacheman.errors import DependencyUnavailable
from cacheman.keys import EVENT_ID_PATTERN, ID_MAX_LEN, ID_PATTERN, Keys
from cacheman.redisconn import REDIS_ERRORS, AnyRedis, Topology
from cacheman.scripts import Batch, Scripts

EventType = Literal[
    "room.updated", "room.deleted", "member.added", "member.removed", "member.role_changed", "message.created", "read.updated"
]
# Fields each type needs beyond id, type and room_id; `version` is optional but makes reordering harmless
# for room.* and member.* (without it the event invalidates unconditionally).
REQUIRED: dict[str, tuple[str, ...]] = {
    "room.updated": (),
    "room.deleted": (),
    "member.added": ("user_id",),
    "member.removed": ("user_id",),
    "member.role_changed": ("user_id",),
    "message.created": ("seq",),
    "read.updated": ("user_id", "seq"),
}
MAX_SEQ = 2**53  # Lua numbers are doubles: exact up to 2^53


class Event(BaseModel):
    """One change event. Unknown fields are ignored (producers may send more than a type uses)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=EVENT_ID_PATTERN, max_length=128, description="Producer's event id, echoed in the result.")
    type: EventType
    room_id: str = Field(pattern=ID_PATTERN, max_length=ID_MAX_LEN)
    user_id: str | None = Field(None, pattern=ID_PATTERN, max_length=ID_MAX_LEN, description="member.*, read.updated")
    seq: int | None = Field(None, ge=0, le=MAX_SEQ, description="message.created: the message's seq; read.updated: last read seq")
    version: int | None = Field(
        None, ge=0, le=MAX_SEQ,
        description="room.*: the room's version after the change; member.*: the room's members_version after the change",
    )
    role: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$", description="member.added / member.role_changed: the new role")
    at: datetime | None = Field(None, description="When the change happened (informational)")

    @model_validator(mode="after")
    def _fields_of_type(self) -> Event:
        missing = [f for f in REQUIRED[self.type] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"event {self.id!r} of type {self.type} needs {' and '.join(missing)}")
        return self


Outcome = Literal["applied", "ignored"]


@dataclass(slots=True)
class EventResult:
    id: str
    type: str
    result: Outcome  # applied = the cache changed; ignored = duplicate / older than what is applied / nothing cached


class EventApplier:
    """Applies batches of events for one tenant in one pipelined round trip per node (plus one for room.deleted)."""

    def __init__(
        self, redis: AnyRedis, keys: Keys, *, floor_px: int, seq_px: int, scripts: Scripts | None = None, near=None
    ) -> None:
        self.redis = redis
        self.near = near  # this process's NearCache: dropped at once, not when our own broadcast comes back
        self.keys = keys
        self.scripts = scripts or Scripts(redis)
        self.floor_px = floor_px
        self.seq_px = seq_px
        self.topology = Topology(redis)

    async def apply(self, tenant: str, events: list[Event], *, source: str = "http") -> list[EventResult]:
        """Apply in order; raise DependencyUnavailable('redis') when Redis cannot take them (nothing is lost:
        every step is idempotent, so the producer retries the whole batch)."""
        try:
            return await self._apply(tenant, events, source)
        except REDIS_ERRORS as exc:
            raise DependencyUnavailable("redis", f"cannot apply events: {type(exc).__name__}: {exc}; retry the batch") from exc

    async def _apply(self, tenant: str, events: list[Event], source: str) -> list[EventResult]:
        k, s = self.keys, self.scripts
        deleted_members = await self._members_of_deleted(tenant, events)
        pipe = Batch(self.redis, topology=self.topology)
        plan: list[tuple[int, str]] = []  # (commands queued for this event, how to read the first result)
        touched: set[str] = set()
        now = str(now_ms())

        def inval(key: str, kind: EntryKind, version: int | None) -> None:
            pipe.script(s.invalidate, [key, Keys.lease(key), Keys.floor(key)], ["" if version is None else version, self.floor_px, kind])

        for ev in events:
            n = 0
            if ev.type in ("room.updated", "room.deleted"):
                inval(k.room_meta(tenant, ev.room_id), EntryKind.STRING, ev.version)
                n = 1
                if ev.type == "room.deleted":
                    members = k.members(tenant, ev.room_id)
                    inval(members, EntryKind.HASH, None)
                    touched.add(members)
                    n += 1
                    for user in deleted_members.get(ev.room_id, ()):
                        inval(k.user_rooms(tenant, user), EntryKind.HASH, None)
                        inval(k.user_reads(tenant, user), EntryKind.HASH, None)
                        n += 2
                plan.append((n, "int"))
            elif ev.type.startswith("member."):
                members = k.members(tenant, ev.room_id)
                op = {"member.added": "add", "member.removed": "remove", "member.role_changed": "role"}[ev.type]
                pipe.script(s.member_event, [members, Keys.lease(members), Keys.floor(members)],
                      [op, ev.user_id, ev.role or "", "" if ev.version is None else ev.version, self.floor_px, now])
                touched.add(members)
                n = 1
                if op != "role":
                    inval(k.user_rooms(tenant, ev.user_id), EntryKind.HASH, None)
                    inval(k.user_reads(tenant, ev.user_id), EntryKind.HASH, None)
                    n += 2
                plan.append((n, "int"))
            elif ev.type == "message.created":
                pipe.script(s.seq_max, [k.room_seq(tenant, ev.room_id)], [ev.seq, self.seq_px])
                plan.append((1, "pair"))
            else:  # read.updated
                pipe.script(s.read_max, [k.user_reads(tenant, ev.user_id)], [ev.room_id, ev.seq, self.seq_px])
                plan.append((1, "int"))
        if touched:
            pipe.publish(k.nearcache_channel(), orjson.dumps(sorted(touched)))  # sent after the changes (Batch)
        replies = await pipe.execute()
        if touched and self.near is not None:
            self.near.invalidate(touched)
        out: list[EventResult] = []
        i = 0
        for ev, (n, how) in zip(events, plan, strict=True):
            first = replies[i]
            changed = int(first[0]) if how == "pair" else int(first)
            result: Outcome = "applied" if changed > 0 else "ignored"
            i += n
            if result == "applied" and ev.type != "message.created" and ev.type != "read.updated":
                m.INVALIDATIONS.labels("room" if ev.type.startswith("room.") else "members").inc()
            m.EVENTS_APPLIED.labels(ev.type, result, source).inc()
            out.append(EventResult(ev.id, ev.type, result))
        return out

    async def _members_of_deleted(self, tenant: str, events: list[Event]) -> dict[str, list[str]]:
        """Users of rooms being deleted, from the cached members hash (their room lists must go too)."""
        rooms = list(dict.fromkeys(ev.room_id for ev in events if ev.type == "room.deleted"))
        if not rooms:
            return {}
        pipe = Batch(self.redis, topology=self.topology)
        for r in rooms:
            pipe.on(self.keys.members(tenant, r)).hkeys(self.keys.members(tenant, r))
        rows = await pipe.execute()
        return {r: [f.decode() for f in fields if not f.startswith(b"#")] for r, fields in zip(rooms, rows, strict=True)}
