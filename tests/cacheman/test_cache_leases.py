"""Read-through with leases against a real Redis: stale set, single-flight, cross-process leases, negative
entries, TTL jitter, and membership sets that are never seen half-built."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import pytest

from cacheman import metrics as m
from cacheman.entry import jittered_ttl_ms
from cacheman.errors import OriginUnavailable
from cacheman.events import Event
from cacheman.keys import Keys
from tests.cacheman.cache_fakes import FakeClock, FakeOrigin, make_cache, redis_client
from tests.services import free_port

T = "acme"



def _value(metric) -> float:
    return metric._value.get()


async def test_miss_then_hit_costs_one_origin_call(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="general", members={"u1": "admin"})
    cache, _ = make_cache(redis, origin, key_prefix)
    first = await cache.room(T, "r1")
    second = await cache.room(T, "r1")
    assert (first.status, second.status) == ("miss", "hit")
    assert second.value["name"] == "general"
    assert origin.calls["get_room"] == 1


# ---------------------------------------------------------------- stale set

@pytest.mark.parametrize("entity", ["room", "members", "user_rooms"])
async def test_stale_set_fill_that_began_before_an_invalidation_never_writes_its_old_value(cache_client, key_prefix, entity):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="old", members={"u1": "admin"})
    origin.add_room(T, "r2", name="other", members={})
    cache, events = make_cache(cache_client, origin, key_prefix)
    keys = Keys(key_prefix)
    key = {"room": keys.room_meta(T, "r1"), "members": keys.members(T, "r1"), "user_rooms": keys.user_rooms(T, "u1")}[entity]

    origin.gate = asyncio.Event()  # the origin answers, then holds the fill until we let it go
    if entity == "room":
        fill = asyncio.create_task(cache.room(T, "r1"))
    elif entity == "members":
        fill = asyncio.create_task(cache.members(T, "r1"))
    else:
        fill = asyncio.create_task(cache.user_rooms(T, "u1"))
    await asyncio.wait_for(origin.entered.wait(), 5)  # the fill has read the OLD state from the origin

    # The change commits at the origin, then its event lands. No version: only the lease protects.
    if entity == "room":
        origin.rooms[(T, "r1")].name = "new"
        ev = Event(id="e1", type="room.updated", room_id="r1")
    elif entity == "members":
        origin.set_member(T, "r1", "u2", "member")
        ev = Event(id="e1", type="member.added", room_id="r1", user_id="u2")
    else:
        origin.set_member(T, "r2", "u1", "member")
        ev = Event(id="e1", type="member.added", room_id="r2", user_id="u1")
    [res] = await events.apply(T, [ev])
    assert res.result == "applied"

    origin.gate.set()
    origin.gate = None
    await fill  # its caller started before the change: it may see the old value
    assert await cache_client.exists(key) == 0, "the fill that began before the invalidation wrote its old value"

    after = {"room": cache.room, "members": cache.members}.get(entity)
    res = await (after(T, "r1") if after else cache.user_rooms(T, "u1"))
    assert res.status == "miss"
    if entity == "room":
        assert res.value["name"] == "new"
    elif entity == "members":
        assert {mb["user_id"] for mb in res.value["members"]} == {"u1", "u2"}
    else:
        assert res.value == ["r1", "r2"]


async def test_fill_older_than_an_applied_versioned_event_is_refused(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="v1", version=1)
    cache, events = make_cache(redis, origin, key_prefix)
    [res] = await events.apply(T, [Event(id="e", type="room.updated", room_id="r1", version=5)])
    assert res.result == "applied"
    # A lagging origin still answers version 1: the caller gets it, the cache does not keep it.
    first = await cache.room(T, "r1")
    assert first.value["version"] == 1
    assert await redis.exists(Keys(key_prefix).room_meta(T, "r1")) == 0


# ---------------------------------------------------------------- single-flight and leases

async def test_single_flight_one_origin_call_and_no_lease_polling_inside_a_process(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={f"u{i}": "member" for i in range(10)})
    origin.delay = 0.2
    cache, _ = make_cache(redis, origin, key_prefix)
    waits_before = _value(m.LEASE_WAITS.labels("members"))
    results = await asyncio.gather(*(cache.member_role(T, "r1", f"u{i % 12}") for i in range(300)))
    assert origin.calls["get_members"] == 1
    assert _value(m.LEASE_WAITS.labels("members")) == waits_before, "in-process misses polled the lease instead of sharing a future"
    assert sum(1 for r, _ in results if r.value == "member") == 250


async def test_lease_makes_two_processes_share_one_origin_call(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="busy")
    origin.delay = 0.3
    a, _ = make_cache(redis, origin, key_prefix)
    b, _ = make_cache(redis, origin, key_prefix)  # its own single-flight map: a second process
    waits_before = _value(m.LEASE_WAITS.labels("room"))
    results = await asyncio.gather(*(c.room(T, "r1") for c in (a, b) for _ in range(100)))
    assert origin.calls["get_room"] == 1
    assert all(r.value["name"] == "busy" for r in results)
    assert _value(m.LEASE_WAITS.labels("room")) > waits_before


async def test_a_dead_lease_holder_is_replaced_when_its_lease_expires(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="x")
    cache, _ = make_cache(redis, origin, key_prefix, lease_wait_s=5.0)
    key = Keys(key_prefix).room_meta(T, "r1")
    await redis.set(Keys.lease(key), "holder-that-died", px=300)
    t0 = time.monotonic()
    res = await cache.room(T, "r1")
    assert res.value["name"] == "x" and res.status == "miss"
    assert 0.25 <= time.monotonic() - t0 < 2.0
    assert origin.calls["get_room"] == 1
    assert await redis.exists(key) == 1


async def test_waiters_go_to_the_origin_after_the_wait_bound_without_writing(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="x")
    cache, _ = make_cache(redis, origin, key_prefix, lease_wait_s=0.3)
    key = Keys(key_prefix).room_meta(T, "r1")
    await redis.set(Keys.lease(key), "a-very-slow-holder", px=60_000)
    t0 = time.monotonic()
    res = await cache.room(T, "r1")
    assert res.value["name"] == "x" and res.status == "miss"
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert await redis.exists(key) == 0  # only the lease holder writes


# ---------------------------------------------------------------- negative entries and TTLs

async def test_not_found_is_cached_briefly(redis, key_prefix):
    origin = FakeOrigin()
    cache, _ = make_cache(redis, origin, key_prefix, negative_ttl_s=0.4)
    first = await cache.room(T, "ghost")
    assert first.value is None and first.status == "miss"
    pttl = await redis.pttl(Keys(key_prefix).room_meta(T, "ghost"))
    assert 0 < pttl <= 400
    origin.add_room(T, "ghost", name="now exists")
    second = await cache.room(T, "ghost")
    assert second.value is None and second.status == "hit"  # the negative entry answered
    await asyncio.sleep(0.45)
    third = await cache.room(T, "ghost")
    assert third.value["name"] == "now exists" and third.status == "miss"
    assert origin.calls["get_room"] == 2


def test_jittered_ttl_is_spread_within_its_bounds():
    rng = random.Random(7)
    draws = [jittered_ttl_ms(100.0, 0.2, rng) for _ in range(2000)]
    assert min(draws) >= 80_000 and max(draws) <= 120_000
    assert statistics.pstdev(draws) > 10_000  # uniform over 40 s has a stdev of ~11.5 s
    assert len(set(draws)) > 1900
    assert jittered_ttl_ms(100.0, 0.0) == 100_000


async def test_keys_filled_together_expire_apart(redis, key_prefix):
    origin = FakeOrigin()
    for i in range(40):
        origin.add_room(T, f"r{i}")
    cache, _ = make_cache(redis, origin, key_prefix, ttl_s=100.0, ttl_jitter=0.2, stale_ttl_s=0.0)
    await asyncio.gather(*(cache.room(T, f"r{i}") for i in range(40)))
    keys = Keys(key_prefix)
    pttls = [await redis.pttl(keys.room_meta(T, f"r{i}")) for i in range(40)]
    assert all(79_000 <= p <= 120_000 for p in pttls), pttls
    assert max(pttls) - min(pttls) > 10_000, "TTLs were not jittered"


# ---------------------------------------------------------------- membership sets

async def test_membership_set_is_never_seen_half_built(redis, key_prefix):
    n = 5000
    origin = FakeOrigin()
    origin.add_room(T, "big", members={f"user-{i}": "member" for i in range(n)})
    cache, events = make_cache(redis, origin, key_prefix)
    key = Keys(key_prefix).members(T, "big")
    seen: set[int] = set()
    stop = asyncio.Event()
    async def watch():
        while not stop.is_set():
            seen.add(await redis.hlen(key))

    watcher = asyncio.create_task(watch())
    for i in range(6):
        await events.apply(T, [Event(id=f"e{i}", type="room.updated", room_id="big")])
        await events.apply(T, [Event(id=f"m{i}", type="member.role_changed", room_id="big", user_id="user-1")])
        res = await cache.members(T, "big")
        assert len(res.value["members"]) == n
    stop.set()
    await watcher
    full = n + 3  # the members plus #f, #s, #v
    assert seen <= {0, full}, f"a reader saw a partial set: sizes {sorted(seen)[:10]}"
    assert full in seen
    assert [k async for k in redis.scan_iter(match=key_prefix + "*:tmp:*")] == []


async def test_membership_check_tells_absent_user_from_uncached_set(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "owner"})
    cache, _ = make_cache(redis, origin, key_prefix)
    first, exists = await cache.member_role(T, "r1", "nobody")
    assert (first.value, exists, first.status) == (None, True, "miss")
    second, exists = await cache.member_role(T, "r1", "nobody")
    assert (second.value, exists, second.status) == (None, True, "hit")  # the sentinel answered "built, absent"
    owner, _ = await cache.member_role(T, "r1", "u1")
    assert (owner.value, owner.status) == ("owner", "hit")
    ghost, exists = await cache.member_role(T, "ghost-room", "u1")
    assert (ghost.value, exists) == (None, False)
    assert origin.calls["get_members"] == 2


async def test_batches_use_one_origin_call_for_all_misses(cache_client, cache_redis, key_prefix):
    origin = FakeOrigin()
    for i in range(50):
        origin.add_room(T, f"r{i}", members={"u1": "member"})
    cache, _ = make_cache(cache_client, origin, key_prefix)
    ids = [f"r{i}" for i in range(50)] + ["nope"]
    if cache_redis.cluster:  # the batch spans slots on every master
        assert len({cache.rt.topology.node_of(Keys(key_prefix).room_meta(T, r)) for r in ids}) == 3
    found, missing, status, _ = await cache.rooms_batch(T, ids)
    assert (len(found), missing, status) == (50, ["nope"], "miss")
    assert origin.calls["get_rooms"] == 1
    found, missing, status, age = await cache.rooms_batch(T, ids)
    assert (len(found), missing, status, age) == (50, ["nope"], "hit", 0)
    assert origin.calls["get_rooms"] == 1
    rows, status, _ = await cache.memberships_batch(T, [("r1", "u1"), ("r1", "u2"), ("r2", "u1")])
    assert [(r, u, role) for r, u, role, _ in rows] == [("r1", "u1", "member"), ("r1", "u2", None), ("r2", "u1", "member")]
    checks = [(f"r{i}", "u1") for i in range(50)]
    rows, status, _ = await cache.memberships_batch(T, checks)
    assert [role for _, _, role, _ in rows] == ["member"] * 50
    rows, status, _ = await cache.memberships_batch(T, checks)
    assert status == "hit" and origin.calls["get_members"] == 50


async def test_a_membership_hit_is_one_redis_command(redis, key_prefix, monkeypatch):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "admin"})
    cache, _ = make_cache(redis, origin, key_prefix)
    await cache.member_role(T, "r1", "u1")  # fill
    sent: list[tuple] = []
    real = redis.execute_command

    async def counting(*args, **kwargs):
        sent.append(args[:2])
        return await real(*args, **kwargs)

    monkeypatch.setattr(redis, "execute_command", counting)
    for user in ("u1", "someone-else"):
        sent.clear()
        res, _ = await cache.member_role(T, "r1", user)
        assert res.status == "hit"
        assert sent == [("HMGET", Keys(key_prefix).members(T, "r1"))]


async def test_stale_if_error_never_serves_a_value_an_applied_event_replaced(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", name="old", members={"u1": "admin"})
    cache, events = make_cache(redis, origin, key_prefix, ttl_s=0.1, ttl_jitter=0.0)
    await cache.room(T, "r1")
    await cache.member_role(T, "r1", "u1")
    await asyncio.sleep(0.15)
    origin.down = True
    assert (await cache.room(T, "r1")).status == "stale"  # expired, origin down: the old copy, flagged
    await events.apply(T, [Event(id="e1", type="room.updated", room_id="r1"),
                           Event(id="e2", type="member.removed", room_id="r1", user_id="u1")])
    with pytest.raises(OriginUnavailable, match="nothing cached"):
        await cache.room(T, "r1")  # the event removed it: 503, not the replaced value
    with pytest.raises(OriginUnavailable):
        await cache.member_role(T, "r1", "u1")


async def test_batch_answers_report_the_age_of_their_oldest_entry(redis, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "member"})
    origin.add_room(T, "r2", members={"u2": "member"})
    clock = FakeClock()  # ages are whole seconds: a real clock on a loaded machine could read 2
    cache, _ = make_cache(redis, origin, key_prefix, clock=clock)
    await cache.rooms_batch(T, ["r1"])
    await cache.memberships_batch(T, [("r1", "u1")])
    clock.advance(1500)
    _, _, status, age = await cache.rooms_batch(T, ["r1", "r2"])  # r1 cached a second ago, r2 a miss
    assert (status, age) == ("miss", 1)
    _, status, age = await cache.memberships_batch(T, [("r1", "u1"), ("r2", "u2")])
    assert (status, age) == ("miss", 1)
    _, _, status, age = await cache.rooms_batch(T, ["r2"])
    assert (status, age) == ("hit", 0)


# ---------------------------------------------------------------- batches fill like single lookups

def _rooms(origin: FakeOrigin, n: int) -> list[str]:
    ids = [f"r{i}" for i in range(1, n + 1)]
    for r in ids:
        origin.add_room(T, r, name=f"name-{r}")
    return ids


async def test_a_batch_waits_for_a_lease_another_process_holds_and_loads_only_its_own(redis, key_prefix):
    origin = FakeOrigin()
    _rooms(origin, 3)
    cache, _ = make_cache(redis, origin, key_prefix)
    other, _ = make_cache(redis, origin, key_prefix)  # a second process, filling r1
    r1 = other.room_spec(T, "r1")
    await redis.set(Keys.lease(r1.key), "other-token", px=60_000)
    batch = asyncio.create_task(cache.rooms_batch(T, ["r1", "r2", "r3"]))
    async with asyncio.timeout(5):
        while origin.calls["get_rooms"] == 0:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the batch is polling r1's lease
    assert not batch.done()
    origin.rooms[(T, "r1")].name = "filled-by-the-other-process"
    await other.rt.leases.store([(r1, await r1.load())], "other-token")
    found, missing, status, _ = await batch
    assert origin.rooms_asked == [["r2", "r3"]], "the batch loaded a key whose lease another process holds"
    assert origin.calls["get_room"] == 1  # the other process's own load, above
    assert found["r1"]["name"] == "filled-by-the-other-process" and found["r2"]["name"] == "name-r2"
    assert (missing, status) == ([], "miss")
    assert await redis.exists(*(Keys(key_prefix).room_meta(T, r) for r in ("r1", "r2", "r3"))) == 3


async def test_batch_waiters_go_to_the_origin_after_the_wait_bound_without_writing(redis, key_prefix):
    origin = FakeOrigin()
    _rooms(origin, 3)
    cache, _ = make_cache(redis, origin, key_prefix, lease_wait_s=0.3)
    keys = Keys(key_prefix)
    await redis.set(Keys.lease(keys.room_meta(T, "r1")), "a-very-slow-holder", px=60_000)
    t0 = time.monotonic()
    found, missing, status, _ = await cache.rooms_batch(T, ["r1", "r2", "r3"])
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert (sorted(found), missing, status) == (["r1", "r2", "r3"], [], "miss")
    assert origin.rooms_asked == [["r2", "r3"], ["r1"]]
    assert await redis.exists(keys.room_meta(T, "r1")) == 0  # only the lease holder writes
    assert await redis.exists(keys.room_meta(T, "r2"), keys.room_meta(T, "r3")) == 2


async def test_a_batch_and_single_lookups_share_fills_in_flight(redis, key_prefix):
    origin = FakeOrigin()
    _rooms(origin, 3)
    cache, _ = make_cache(redis, origin, key_prefix)
    waits_before = _value(m.LEASE_WAITS.labels("room"))
    origin.gate = asyncio.Event()
    single = asyncio.create_task(cache.room(T, "r1"))
    await asyncio.wait_for(origin.entered.wait(), 5)
    batch = asyncio.create_task(cache.rooms_batch(T, ["r1", "r2"]))
    async with asyncio.timeout(5):
        while not origin.rooms_asked:
            await asyncio.sleep(0.005)
    late = asyncio.create_task(cache.room(T, "r2"))  # joins the batch's fill of r2
    await asyncio.sleep(0.02)
    origin.gate.set()
    (found, _, status, _), one, two = await asyncio.gather(batch, single, late)
    assert origin.calls["get_room"] == 1 and origin.rooms_asked == [["r2"]]
    assert _value(m.LEASE_WAITS.labels("room")) == waits_before, "in-process fills polled a lease instead of sharing"
    assert (one.status, two.status, status) == ("miss", "miss", "miss")
    assert found["r1"] == one.value and found["r2"] == two.value


async def test_batch_serves_stale_per_key_when_the_origin_is_down_and_gives_the_leases_back(redis, key_prefix):
    origin = FakeOrigin()
    _rooms(origin, 3)
    clock = FakeClock()
    cache, _ = make_cache(redis, origin, key_prefix, clock=clock, ttl_s=10.0, ttl_jitter=0.0)
    await cache.rooms_batch(T, ["r1", "r2"])
    await redis.set(Keys(key_prefix).room_seq(T, "r2"), 42)  # a message event the stale copy predates
    clock.advance(11_000)  # both expired, both kept for stale-if-error
    origin.down = True
    found, missing, status, age = await cache.rooms_batch(T, ["r1", "r2"])
    assert (sorted(found), missing, status, age) == (["r1", "r2"], [], "stale", 11)
    assert found["r2"]["last_seq"] == 42
    with pytest.raises(OriginUnavailable, match="nothing cached"):
        await cache.rooms_batch(T, ["r1", "r3"])  # r3 was never cached: nothing to serve for it
    assert [k async for k in redis.scan_iter(match=key_prefix + "*:lease")] == []
    origin.down = False
    found, _, status, _ = await cache.rooms_batch(T, ["r1", "r2", "r3"])
    assert status == "miss" and origin.rooms_asked[-1] == ["r1", "r2", "r3"]



async def test_with_redis_down_a_batch_is_one_bounded_origin_call():
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    origin = FakeOrigin()
    ids = _rooms(origin, 5)
    cache, _ = make_cache(dead, origin, "hptest:batch-bypass:", bypass_concurrency=1, bypass_wait_s=5.0)
    try:
        found, missing, status, age = await cache.rooms_batch(T, [*ids, "nope"])
        assert (sorted(found), missing, status, age) == (ids, ["nope"], "bypass", 0)
        assert origin.rooms_asked == [[*ids, "nope"]]
        # Redis stays in its down window: the next batch goes straight to the origin, again once.
        found, _, status, _ = await cache.rooms_batch(T, ids[:2])
        assert (sorted(found), status, origin.rooms_asked[-1]) == (ids[:2], "bypass", ids[:2])
    finally:
        await dead.aclose()
