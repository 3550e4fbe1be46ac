"""Unread never drifts: random interleavings of duplicated and reordered message.created / read.updated
events with concurrent fills (and expiries) always end with the cached unread equal to the origin's."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheman.events import Event
from cacheman.keys import Keys
from tests.cacheman.cache_fakes import FakeOrigin, make_cache

T = "acme"
ROOMS = ("r1", "r2", "r3")
USER = "u1"

change = st.one_of(
    st.tuples(st.just("message.created"), st.sampled_from(ROOMS), st.integers(1, 40)),
    st.tuples(st.just("read.updated"), st.sampled_from(ROOMS), st.integers(1, 40)),
)
# A delivery step: deliver the event at this index of the outbox (mod its length), read (fill), or expire.
step = st.one_of(
    st.tuples(st.just("deliver"), st.integers(0, 10_000)),
    st.tuples(st.just("read"), st.just(0)),
    st.tuples(st.just("expire"), st.just(0)),
)
_counter = itertools.count()


@pytest.fixture
def ctx(cache_redis, key_prefix):
    return {"redis": cache_redis, "prefix": key_prefix}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(change, min_size=1, max_size=25), schedule=st.lists(step, max_size=60), yields=st.lists(st.integers(0, 3), min_size=1, max_size=8), origin_yields=st.integers(0, 6))
async def test_cached_unread_always_ends_equal_to_the_origin(ctx, changes, schedule, yields, origin_yields):
    redis = ctx["redis"].client()
    prefix = f"{ctx['prefix']}{next(_counter)}:"
    origin = FakeOrigin()
    for r in ROOMS:
        origin.add_room(T, r, members={USER: "member"})
    origin.yields_after_read = origin_yields  # fills stay in flight while events land
    cache, events = make_cache(redis, origin, prefix)
    outbox: list[Event] = []
    delivered: set[str] = set()
    ys = itertools.cycle(yields)

    async def commit_and_emit(i: int, kind: str, room: str, seq: int) -> None:
        # The origin commits (monotonically), then the outbox holds the event.
        if kind == "message.created":
            rm = origin.rooms[(T, room)]
            origin.rooms[(T, room)] = rm.model_copy(update={"last_seq": max(rm.last_seq, seq)})
            outbox.append(Event(id=f"e{i}", type=kind, room_id=room, seq=seq))
        else:
            origin.reads[(T, room, USER)] = max(origin.reads.get((T, room, USER), 0), seq)
            outbox.append(Event(id=f"e{i}", type=kind, room_id=room, user_id=USER, seq=seq))

    async def reader() -> None:
        for _ in range(4):
            await cache.unread(T, USER)
            for _ in range(next(ys)):
                await asyncio.sleep(0)

    async def producer() -> None:
        for i, (kind, room, seq) in enumerate(changes):
            await commit_and_emit(i, kind, room, seq)
            for _ in range(next(ys)):
                await asyncio.sleep(0)

    async def deliverer() -> None:
        for action, n in schedule:
            if action == "deliver" and outbox:
                ev = outbox[n % len(outbox)]  # duplicates and any order
                await events.apply(T, [ev])
                delivered.add(ev.id)
            elif action == "read":
                await cache.unread(T, USER)
            elif action == "expire":
                await redis.delete(Keys(prefix).user_reads(T, USER))
            for _ in range(next(ys)):
                await asyncio.sleep(0)

    try:
        await asyncio.gather(producer(), deliverer(), reader(), reader())
        # At least once: whatever was not delivered yet arrives now (late, reordered); nothing is redelivered.
        await events.apply(T, [ev for ev in reversed(outbox) if ev.id not in delivered])
        expected = origin.unread(T, USER)
        got = (await cache.unread(T, USER)).value
        assert got == expected
        # also after the cached read state expires and is refilled
        await redis.delete(Keys(prefix).user_reads(T, USER))
        assert (await cache.unread(T, USER)).value == expected
    finally:
        await redis.aclose()


async def test_a_read_event_landing_during_a_fill_is_merged_not_overwritten(cache_redis, key_prefix):
    redis = cache_redis.client()
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={USER: "member"}, last_seq=10)
    origin.reads[(T, "r1", USER)] = 2
    cache, events = make_cache(redis, origin, key_prefix)
    try:
        origin.gate = asyncio.Event()
        fill = asyncio.create_task(cache.unread(T, USER))
        await asyncio.wait_for(origin.entered.wait(), 5)  # the fill read last_read_seq = 2
        origin.reads[(T, "r1", USER)] = 8  # committed after the fill's read ...
        await events.apply(T, [Event(id="e", type="read.updated", room_id="r1", user_id=USER, seq=8)])  # ... and applied
        origin.gate.set()
        origin.gate = None
        await fill
        res = await cache.unread(T, USER)
        assert res.status == "hit"
        assert res.value == origin.unread(T, USER) == {"total": 2, "rooms": {"r1": 2}}
    finally:
        await redis.aclose()
