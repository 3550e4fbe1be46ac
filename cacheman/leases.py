"""Leases and the stored form of cache entries: the Lua scripts of read-through, fill and invalidation.

Miss → `lease_acquire.lua` returns the value, grants a lease (SET NX PX) or says "someone is filling";
the holder writes with `fill_*.lua`, which checks its token is still current; `invalidate.lua` deletes
value and lease together, so a fill that began before an event can never write the old value back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from cacheman.keys import F_FRESH, F_NOTFOUND, F_STORED, F_VERSION

LUA_DIR = Path(__file__).with_name("lua")
HIT, LEASE, WAIT = "hit", "lease", "wait"


def now_ms() -> int:
    """Wall clock in epoch ms: entries carry absolute fresh-until times that every API process compares."""
    return time.time_ns() // 1_000_000


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
    if not raw:
        return None
    head, _, body = raw.partition(b"|")
    try:
        fresh_s, stored_s, version_s = head.split(b" ")
        data = orjson.loads(body)
    except ValueError:
        return None  # not ours / corrupt: treated as a miss and overwritten by the next fill
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


def queue(pipe, script, keys: list, args: list) -> None:
    """Queue a registered script on a pipeline (the pipeline loads missing scripts before it runs)."""
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class Scripts:
    """The cache's Lua scripts, registered once per Redis client (EVALSHA, reloaded after a server restart)."""

    NAMES = ("lease_acquire", "lease_release", "fill_string", "fill_hash", "invalidate", "member_event", "seq_max", "read_max")

    def __init__(self, redis: aioredis.Redis) -> None:
        for name in self.NAMES:
            setattr(self, name, redis.register_script((LUA_DIR / f"{name}.lua").read_text()))

    # Typed attributes for readers and linters (set in __init__).
    lease_acquire: Any
    lease_release: Any
    fill_string: Any
    fill_hash: Any
    invalidate: Any
    member_event: Any
    seq_max: Any
    read_max: Any
