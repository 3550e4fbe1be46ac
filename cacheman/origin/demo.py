"""Deterministic demo data for the SQL origin: 2 tenants, 20 rooms, 200 users, memberships, messages, read states.

Rows are generated from a fixed seed (the same run always makes the same rows), and inserted with
ON CONFLICT DO NOTHING, so `hotpath origin init --demo` can be re-run without duplicating anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

TENANTS = ("acme", "globex")
ROOMS_PER_TENANT = 10
USERS_PER_TENANT = 100
SEED = 20261126
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

_WORDS = (
    "deploy cache review lunch standup latency budget ticket release rollback metrics alert "
    "design draft merge branch coffee pager incident retro roadmap launch invoice customer"
).split()
_TOPICS = ("general chat", "release planning", "on-call", "random", "design reviews", "support escalations")


@dataclass
class DemoData:
    """Rows per table, each a list of dicts keyed by column name."""

    users: list[dict] = field(default_factory=list)
    rooms: list[dict] = field(default_factory=list)
    room_members: list[dict] = field(default_factory=list)
    read_states: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    def tables(self) -> dict[str, list[dict]]:
        return {
            "users": self.users,
            "rooms": self.rooms,
            "room_members": self.room_members,
            "read_states": self.read_states,
            "messages": self.messages,
        }


def room_id(i: int) -> str:
    return f"room-{i:02d}"


def user_id(i: int) -> str:
    return f"user-{i:03d}"


def generate(seed: int = SEED) -> DemoData:
    """Build the demo rows. Pure: same seed, same rows."""
    rng = random.Random(seed)
    data = DemoData()
    for tenant in TENANTS:
        users = [user_id(i) for i in range(1, USERS_PER_TENANT + 1)]
        for i, u in enumerate(users):
            data.users.append(
                {"tenant_id": tenant, "user_id": u, "display_name": f"{tenant.title()} User {i + 1}",
                 "created_at": EPOCH + timedelta(minutes=i)}
            )
        for r in range(1, ROOMS_PER_TENANT + 1):
            rid = room_id(r)
            members = sorted(rng.sample(users, rng.randint(5, 40)))
            n_messages = rng.randint(0, 60)
            created = EPOCH + timedelta(days=r)
            data.rooms.append(
                {"tenant_id": tenant, "room_id": rid, "name": f"{tenant}-{rid}", "topic": rng.choice(_TOPICS),
                 "version": 1, "members_version": 1, "last_seq": n_messages, "updated_at": created}
            )
            owner = members[0]
            for u in members:
                role = "owner" if u == owner else ("admin" if rng.random() < 0.1 else "member")
                data.room_members.append(
                    {"tenant_id": tenant, "room_id": rid, "user_id": u, "role": role, "joined_at": created}
                )
            for seq in range(1, n_messages + 1):
                data.messages.append(
                    {"tenant_id": tenant, "room_id": rid, "seq": seq, "message_id": f"msg-{tenant}-{rid}-{seq:04d}",
                     "sender_id": rng.choice(members), "text": " ".join(rng.choices(_WORDS, k=rng.randint(3, 12))),
                     "created_at": created + timedelta(minutes=seq)}
                )
            for u in members:
                # Some members never opened the room (no row: last_read_seq = 0), most read part of it.
                if rng.random() < 0.8:
                    data.read_states.append(
                        {"tenant_id": tenant, "room_id": rid, "user_id": u,
                         "last_read_seq": rng.randint(0, n_messages), "updated_at": created}
                    )
    return data
