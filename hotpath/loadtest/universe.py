"""The load test's data: tenants, rooms, users and memberships (seeded), put in the origin and handed to the load.

Why its own data rather than the demo origin's: the mix draws rooms and users by a zipf law, which needs more
rooms and users than the demo's 10 × 100, and the end-of-run checks need to know exactly what is there.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SEED = 20261127


@dataclass
class Universe:
    tenants: list[str]
    rooms: int  # per tenant: room-0000 …
    users: int  # per tenant: user-00000 …
    members: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # tenant → room → user ids

    @staticmethod
    def room(i: int) -> str:
        return f"room-{i:04d}"

    @staticmethod
    def user(i: int) -> str:
        return f"user-{i:05d}"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path | str) -> Universe:
        return cls(**json.loads(Path(path).read_text()))


def make_universe(tenants: int, rooms: int, users: int, seed: int = SEED) -> Universe:
    """Room r (zipf rank r) has more members the hotter it is: 5 … 60, drawn so that hot users are in many rooms."""
    rng = random.Random(seed)
    u = Universe([f"lt{t}" for t in range(tenants)], rooms, users)
    for tenant in u.tenants:
        rooms_of = {}
        for r in range(rooms):
            n = max(5, min(users, int(60 / (1 + r) ** 0.3)))
            picked = {min(users - 1, int(rng.paretovariate(1.2)) - 1) for _ in range(n // 2)}
            picked |= set(rng.sample(range(users), n - len(picked))) if n > len(picked) else set()
            rooms_of[u.room(r)] = sorted(u.user(i) for i in picked)
        u.members[tenant] = rooms_of
    return u


async def fill_origin(pg_url: str, schema: str, u: Universe) -> None:
    """Insert the universe into the origin's tables (in `schema`): every room starts at last_seq 10."""
    import asyncpg

    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10,
                                 server_settings={"search_path": schema})
    try:
        for tenant in u.tenants:
            await conn.copy_records_to_table(
                "users", records=[(tenant, u.user(i), f"User {i}") for i in range(u.users)],
                columns=["tenant_id", "user_id", "display_name"])
            await conn.copy_records_to_table(
                "rooms", records=[(tenant, u.room(r), f"{tenant} room {r}", 10) for r in range(u.rooms)],
                columns=["tenant_id", "room_id", "name", "last_seq"])
            await conn.copy_records_to_table(
                "room_members", records=[(tenant, room, user, "member") for room, users in u.members[tenant].items()
                                         for user in users],
                columns=["tenant_id", "room_id", "user_id", "role"])
    finally:
        await conn.close()


def zipf_index(rng: random.Random, n: int, s: float = 1.1, _cache: dict = {}) -> int:  # noqa: B006
    """An index in [0, n) drawn by a zipf law of exponent s (index 0 the hottest), by inverse CDF on a cached table."""
    key = (n, s)
    cdf = _cache.get(key)
    if cdf is None:
        weights = [1 / (k + 1) ** s for k in range(n)]
        total = sum(weights)
        acc, cdf = 0.0, []
        for w in weights:
            acc += w / total
            cdf.append(acc)
        _cache[key] = cdf
    import bisect

    return min(n - 1, bisect.bisect_left(cdf, rng.random()))
