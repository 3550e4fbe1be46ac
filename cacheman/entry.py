"""What a cache entry is: the entities and their Redis kinds, the stored form (codec), what a fill needs (Spec), the clock.

Entries carry absolute epoch-ms times (fresh-until, stored-at) that every API process and the Lua scripts
compare, so the clock is wall time, not monotonic; it is passed in where tests need to control it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED, F_VERSION

Clock = Callable[[], int]  # epoch ms


def now_ms() -> int:
    """Wall clock in epoch ms: entries carry absolute fresh-until times that every API process compares."""
    return time.time_ns() // 1_000_000


class EntryKind(StrEnum):
    """How an entry is stored; the value is what the Lua scripts take as their `kind` argument."""

    STRING = "s"  # `<fresh_until_ms> <stored_ms> <version>|<json>` (encode_string)
    HASH = "h"  # {field: value} plus the `#` metadata fields (hash_fields)


class Entity(StrEnum):
    """The cached entities; the value is the `entity` label of the cache metrics."""

    ROOM = "room"
    MEMBERS = "members"
    USER_ROOMS = "user_rooms"
    READS = "reads"

    @property
    def kind(self) -> EntryKind:
        return EntryKind.STRING if self is Entity.ROOM else EntryKind.HASH


def jittered_ttl_ms(ttl_s: float, jitter: float, rng: random.Random | None = None) -> int:
    """TTL drawn uniformly from ttl × [1 − jitter, 1 + jitter], so keys filled together expire apart."""
    r = (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return max(1, int(ttl_s * 1000 * r))


@dataclass(slots=True)
class Entry:
    """One cached entity as the cache hands it around.

    `data`: a JSON-able dict (string entries) or {field: value} (hash entries); None = "not found".
    """

    data: Any
    fresh: bool
    stored_ms: int
    version: int | None = None
    extra: dict | None = None  # side data of a fresh origin load (room seqs of read states)

    def age_s(self, now_ms: int) -> int:
        return max(0, (now_ms - self.stored_ms) // 1000)


def encode_string(data: Any, *, fresh_until_ms: int, stored_ms: int, version: int | None) -> bytes:
    """`<fresh_until_ms> <stored_ms> <version>|<json>`: Lua reads the header without decoding JSON."""
    v = -1 if version is None else version
    return f"{fresh_until_ms} {stored_ms} {v}|".encode() + orjson.dumps(data)


def decode_string(raw: bytes | None, now_ms: int) -> Entry | None:
    """A string entry, or None when absent or not ours (a corrupt value is a miss, overwritten by the next fill)."""
    if not raw:
        return None
    head, _, body = raw.partition(b"|")
    try:
        fresh_s, stored_s, version_s = head.split(b" ")
        data = orjson.loads(body)
    except ValueError:
        return None
    version = int(version_s)
    return Entry(data, int(fresh_s) > now_ms, int(stored_s), None if version < 0 else version)


def hash_fields(data: dict[str, str] | None, *, fresh_until_ms: int, stored_ms: int, version: int | None) -> dict[str, str]:
    """The fields of a hash entry: the data plus the `#` metadata fields (see keys.py)."""
    fields: dict[str, str] = {F_FRESH: str(fresh_until_ms), F_STORED: str(stored_ms)}
    if version is not None:
        fields[F_VERSION] = str(version)
    if data is None:
        fields[F_NOTFOUND] = "1"
    else:
        fields.update(data)
    return fields


def decode_hash(raw: dict | list | None, now_ms: int) -> Entry | None:
    """A hash entry from HGETALL (dict, or the flat list a script returns); None when absent or not built."""
    if not raw:
        return None
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
    fresh = fields.pop(F_FRESH, None)
    stored = fields.pop(F_STORED, None)
    if fresh is None or stored is None:
        return None  # a partial hash (event data waiting for a fill) is not an entry
    version = fields.pop(F_VERSION, None)
    notfound = fields.pop(F_NOTFOUND, None)
    return Entry(None if notfound else fields, int(fresh) > now_ms, int(stored), None if version is None else int(version))


def decode(kind: EntryKind, raw: Any, now_ms: int) -> Entry | None:
    """An entry of either kind, from what GET / HGETALL / a script returned."""
    return decode_hash(raw, now_ms) if kind is EntryKind.HASH else decode_string(raw, now_ms)


@dataclass(slots=True)
class Loaded:
    """What one origin load returned, in cache form: data None = not found; extra = side data (room seqs)."""

    data: Any
    version: int | None = None
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Spec:
    """One cacheable entity: which it is, where it lives, how it is loaded alone, how it is stored."""

    entity: Entity
    key: str
    load: Callable[[], Awaitable[Loaded]]
    versioned: bool = False
    merge: bool = False  # max-merge numeric fields written by events while the fill was in flight
    seq_keys: Callable[[str], str] | None = None  # room id → its seq key; the load's `extra` is max-merged there

    @property
    def kind(self) -> EntryKind:
        return self.entity.kind
