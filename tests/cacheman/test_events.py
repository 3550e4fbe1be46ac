"""Change events: the wire shape, and that applying them is idempotent and order-insensitive (real Redis)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from cacheman.cache import unread_count
from cacheman.errors import DependencyUnavailable
from cacheman.events import Event
from cacheman.keys import Keys
from tests.cacheman.cache_fakes import FakeOrigin, make_cache, redis_client
from tests.services import free_port

T = "acme"



def test_documented_wire_shape_parses_and_unused_fields_may_be_omitted():
    ev = Event.model_validate(
        {"id": "evt-1", "type": "member.removed", "room_id": "r1", "user_id": "u1", "seq": 42, "version": 7, "at": "2026-11-26T12:00:00Z"}
    )
    assert (ev.type, ev.room_id, ev.user_id, ev.version) == ("member.removed", "r1", "u1", 7)
    assert Event.model_validate({"id": "evt-2", "type": "message.created", "room_id": "r1", "seq": 3, "extra": "ignored"}).seq == 3
    assert Event.model_validate({"id": "evt-3", "type": "room.deleted", "room_id": "r1"}).version is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"id": "e", "type": "read.updated", "room_id": "r1", "user_id": "u1"}, "needs seq"),
        ({"id": "e", "type": "member.added", "room_id": "r1"}, "needs user_id"),
        ({"id": "e", "type": "message.created", "room_id": "r1"}, "needs seq"),
        ({"id": "e", "type": "room.exploded", "room_id": "r1"}, "type"),
        ({"id": "e", "type": "room.updated", "room_id": "bad id{"}, "room_id"),
        ({"id": "e", "type": "message.created", "room_id": "r1", "seq": -1}, "seq"),
        ({"id": "e", "type": "room.updated", "room_id": "x" * 65}, "room_id"),
    ],
)
def test_invalid_events_are_rejected_with_a_message(body, needle):
    with pytest.raises(ValidationError) as info:
        Event.model_validate(body)
    assert needle in str(info.value)


async def test_member_events_patch_in_place_and_older_or_duplicate_ones_are_ignored(cache_client, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "admin"})
    cache, events = make_cache(cache_client, origin, key_prefix)
    assert (await cache.member_role(T, "r1", "u2"))[0].value is None  # members v1 cached
    v2 = origin.set_member(T, "r1", "u2", "member")
    add = Event(id="e2", type="member.added", room_id="r1", user_id="u2", role="member", version=v2)
    assert [r.result for r in await events.apply(T, [add])] == ["applied"]
    res, _ = await cache.member_role(T, "r1", "u2")
    assert (res.value, res.status) == ("member", "hit")  # patched, no refill
    assert [r.result for r in await events.apply(T, [add])] == ["ignored"]  # duplicate
    v3 = origin.set_member(T, "r1", "u2", None)
    remove = Event(id="e3", type="member.removed", room_id="r1", user_id="u2", version=v3)
    assert [r.result for r in await events.apply(T, [remove, add])] == ["applied", "ignored"]  # late duplicate of v2
    res, _ = await cache.member_role(T, "r1", "u2")
    assert (res.value, res.status) == (None, "hit")
    assert origin.calls["get_members"] == 1
    # A gap in versions (v5 while v3 is cached) cannot be patched: the set is dropped and reloaded.
    origin.set_member(T, "r1", "u3", "member")
    v5 = origin.set_member(T, "r1", "u4", "member")
    assert [r.result for r in await events.apply(T, [Event(id="e5", type="member.added", room_id="r1", user_id="u4", role="member", version=v5)])] == ["applied"]
    res, _ = await cache.member_role(T, "r1", "u3")
    assert (res.value, res.status) == ("member", "miss")


@pytest.mark.parametrize("seed", range(12))
async def test_member_events_in_any_order_with_duplicates_converge_to_the_origin(cache_client, key_prefix, seed):
    rng = random.Random(seed)
    origin = FakeOrigin()
    users = [f"u{i}" for i in range(6)]
    origin.add_room(T, "r1", members={"u0": "owner"})
    cache, events = make_cache(cache_client, origin, key_prefix + f"{seed}:")
    outbox: list[Event] = []
    for step in range(25):
        u = rng.choice(users[1:])
        if u in origin.members[(T, "r1")] and rng.random() < 0.5:
            v = origin.set_member(T, "r1", u, None)
            outbox.append(Event(id=f"e{step}", type="member.removed", room_id="r1", user_id=u, version=v))
        else:
            role = rng.choice(["member", "admin"])
            kind = "member.role_changed" if u in origin.members[(T, "r1")] else "member.added"
            v = origin.set_member(T, "r1", u, role)
            outbox.append(Event(id=f"e{step}", type=kind, room_id="r1", user_id=u, role=role, version=v))
        # deliver a random, duplicated, reordered part of what has been committed so far; read in between
        if rng.random() < 0.4:
            batch = rng.sample(outbox, k=min(len(outbox), rng.randint(1, 4)))
            await events.apply(T, batch + rng.sample(batch, k=len(batch) // 2))
        if rng.random() < 0.3:
            await cache.member_role(T, "r1", rng.choice(users))
    rng.shuffle(outbox)
    await events.apply(T, outbox + outbox[: len(outbox) // 3])
    cached = (await cache.members(T, "r1")).value
    assert {mb["user_id"]: mb["role"] for mb in cached["members"]} == origin.members[(T, "r1")]
    assert cached["version"] == origin.members_version[(T, "r1")]


async def test_room_updated_versions_max_merge(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="v3", version=3)
    cache, events = make_cache(redis, origin, key_prefix)
    await cache.room(T, "r1")
    assert [r.result for r in await events.apply(T, [Event(id="old", type="room.updated", room_id="r1", version=2)])] == ["ignored"]
    assert (await cache.room(T, "r1")).status == "hit"
    origin.rooms[(T, "r1")] = origin.rooms[(T, "r1")].model_copy(update={"name": "v4", "version": 4})
    assert [r.result for r in await events.apply(T, [Event(id="new", type="room.updated", room_id="r1", version=4)])] == ["applied"]
    res = await cache.room(T, "r1")
    assert (res.value["name"], res.status) == ("v4", "miss")


async def test_room_deleted_drops_room_members_and_the_members_room_lists(cache_client, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "admin"})
    origin.add_room(T, "r2", members={"u1": "member"})
    cache, events = make_cache(cache_client, origin, key_prefix)
    await cache.room(T, "r1")
    await cache.members(T, "r1")
    assert (await cache.user_rooms(T, "u1")).value == ["r1", "r2"]
    del origin.rooms[(T, "r1")]
    del origin.members[(T, "r1")]
    [res] = await events.apply(T, [Event(id="d", type="room.deleted", room_id="r1", version=2)])
    assert res.result == "applied"
    assert (await cache.room(T, "r1")).value is None
    assert (await cache.members(T, "r1")).value is None
    assert (await cache.user_rooms(T, "u1")).value == ["r2"]


async def test_message_and_read_events_max_merge(cache_client, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "member"}, last_seq=10)
    origin.reads[(T, "r1", "u1")] = 4
    cache, events = make_cache(cache_client, origin, key_prefix)
    assert (await cache.unread(T, "u1")).value == {"total": 6, "rooms": {"r1": 6}}
    mk = lambda i, t, **kw: Event(id=f"e{i}", type=t, room_id="r1", **kw)  # noqa: E731
    results = await events.apply(T, [
        mk(1, "message.created", seq=12), mk(2, "message.created", seq=11), mk(3, "message.created", seq=12),
        mk(4, "read.updated", user_id="u1", seq=9), mk(5, "read.updated", user_id="u1", seq=7),
    ])
    assert [r.result for r in results] == ["applied", "ignored", "ignored", "applied", "ignored"]
    res = await cache.unread(T, "u1")
    assert (res.value, res.status) == ({"total": 3, "rooms": {"r1": 3}}, "hit")
    assert (await cache.room(T, "r1")).value["last_seq"] == 12
    # read.updated for a room the user is not in (per the cached set) changes nothing
    [r] = await events.apply(T, [Event(id="x", type="read.updated", room_id="elsewhere", user_id="u1", seq=3)])
    assert r.result == "ignored"


async def test_events_when_redis_is_down_raise_dependency_unavailable():
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.3)
    _, events = make_cache(dead, FakeOrigin(), "hptest:dead:")
    with pytest.raises(DependencyUnavailable) as info:
        await events.apply(T, [Event(id="e", type="room.updated", room_id="r1")])
    assert info.value.dependency == "redis"
    await dead.aclose()


def test_unread_formula_never_goes_negative():
    assert unread_count(10, 4) == 6
    assert unread_count(4, 10) == 0
    assert unread_count(0, 0) == 0


def test_keys_are_hash_tagged_per_entity():
    from redis.crc import key_slot

    k = Keys("hp")
    for tenant, room, user in [("acme", "r1", "u1"), ("t-2", "room.x:9", "user_7"), ("A", "Z" * 64, "u" * 64)]:
        for base in (k.room_meta(tenant, room), k.members(tenant, room), k.user_rooms(tenant, user), k.user_reads(tenant, user)):
            # every script gets a value, its lease, its floor and its temporary build key: one cluster slot
            slots = {key_slot(x.encode()) for x in (base, Keys.lease(base), Keys.floor(base), Keys.tmp(base, "t0k3n"))}
            assert len(slots) == 1, base
        assert key_slot(k.room_meta(tenant, room).encode()) == key_slot(k.room_seq(tenant, room).encode())  # MGET meta+seq
    assert k.members("acme", "r1") == "hp:acme:{room:r1}:members"
    assert Keys.lease(k.members("acme", "r1")) == "hp:acme:{room:r1}:members:lease"
    assert k.user_reads("acme", "u1") == "hp:acme:{user:u1}:reads"
