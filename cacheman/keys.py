"""Key naming for the cache: one place that says where every entity lives in Redis, plus the id rules.

Layout (P = HOTPATH_REDIS_PREFIX, T = tenant): `P:T:{room:R}:meta|members|seq`, `P:T:{user:U}:rooms|reads`,
each with `:lease`, `:floor` and `:tmp:<token>` siblings. The `{…}` hash tag puts an entity and all its
siblings in one Redis Cluster slot, so every Lua script touches exactly one slot.
"""

from __future__ import annotations

import re

# Tenant, room and user ids: a letter or digit, then letters, digits and . _ : - ; at most 64 characters
# (the SQL origin's VARCHAR(64)). No braces, so an id can never open a second hash tag.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
ID_MAX_LEN = 64
ID_RE = re.compile(ID_PATTERN)
# Event ids are producer-chosen and only echoed back: a little wider.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MAX_BATCH = 1000

# Hash entries keep their metadata in fields that no id can collide with (ids start with a letter/digit).
F_FRESH = "#f"  # fresh-until, epoch ms
F_STORED = "#s"  # filled at, epoch ms (→ Age)
F_VERSION = "#v"  # entity version (members_version), when versioned
F_NOTFOUND = "#nx"  # negative entry: the room does not exist


def valid_id(value: str) -> bool:
    """True when `value` matches ID_PATTERN."""
    return bool(ID_RE.fullmatch(value))  # fullmatch: `$` alone would accept a trailing newline


class Keys:
    """Builds the Redis key of every cached entity of every tenant."""

    __slots__ = ("p",)

    def __init__(self, prefix: str = "hp") -> None:
        self.p = prefix.rstrip(":") + ":"

    def room(self, tenant: str, room_id: str) -> str:
        """Base of a room's keys; `{room:R}` is the cluster hash tag."""
        return f"{self.p}{tenant}:{{room:{room_id}}}"

    def user(self, tenant: str, user_id: str) -> str:
        return f"{self.p}{tenant}:{{user:{user_id}}}"

    def room_meta(self, tenant: str, room_id: str) -> str:
        return self.room(tenant, room_id) + ":meta"

    def members(self, tenant: str, room_id: str) -> str:
        return self.room(tenant, room_id) + ":members"

    def room_seq(self, tenant: str, room_id: str) -> str:
        return self.room(tenant, room_id) + ":seq"

    def user_rooms(self, tenant: str, user_id: str) -> str:
        return self.user(tenant, user_id) + ":rooms"

    def user_reads(self, tenant: str, user_id: str) -> str:
        return self.user(tenant, user_id) + ":reads"

    @staticmethod
    def lease(key: str) -> str:
        return key + ":lease"

    @staticmethod
    def floor(key: str) -> str:
        """Highest entity version an applied event has announced; fills older than it are refused."""
        return key + ":floor"

    @staticmethod
    def tmp(key: str, token: str) -> str:
        return f"{key}:tmp:{token}"

    def nearcache_channel(self) -> str:
        return self.p + "nearcache"
