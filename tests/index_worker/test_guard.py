"""The version guard against real Redis: stale drops, tombstones, replays, leases (busy / lost), backfill skip."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from index_worker.guard import VersionGuard, newest_per_message


@dataclass(frozen=True)
class Ev:
    message_id: str
    version: int
    op: str = "upsert"
    tenant_id: str = "t1"


async def apply(guard: VersionGuard, *events: Ev) -> tuple[list[Ev], list[Ev], list[Ev]]:
    """Claim and, for what may go, confirm (the write "succeeded")."""
    claim = await guard.claim(list(events))
    await guard.confirm(claim)
    return claim.go, claim.stale, claim.busy


async def test_newer_wins_older_and_replays_are_stale(guard):
    assert (await apply(guard, Ev("m1", 1)))[0] == [Ev("m1", 1)]
    assert (await apply(guard, Ev("m1", 1)))[1] == [Ev("m1", 1)]  # replay
    assert (await apply(guard, Ev("m1", 3)))[0] == [Ev("m1", 3)]
    assert (await apply(guard, Ev("m1", 2)))[1] == [Ev("m1", 2)]  # older edit
    assert await guard.state("t1", "m1") == {"v": "3", "op": "u", "done": "3"}


async def test_delete_tombstone_drops_same_or_older_upserts(guard, aredis):
    await apply(guard, Ev("m1", 2))
    assert (await apply(guard, Ev("m1", 2, "delete")))[0] == [Ev("m1", 2, "delete")]  # a delete beats its version
    for late in (Ev("m1", 2), Ev("m1", 1), Ev("m1", 2, "delete")):
        assert (await apply(guard, late))[1] == [late]
    ttl = await aredis.ttl(guard.state_key("t1", "m1"))
    assert 3500 < ttl <= 3600  # tombstone kept for tombstone_ttl_s
    assert (await apply(guard, Ev("m1", 5)))[0] == [Ev("m1", 5)]  # a newer upsert after the delete applies
    assert await aredis.ttl(guard.state_key("t1", "m1")) == -1  # live again: no expiry


async def test_delete_before_any_upsert_still_blocks_older_upserts(guard):
    await apply(guard, Ev("m9", 4, "delete"))
    assert (await apply(guard, Ev("m9", 3)))[1] == [Ev("m9", 3)]


def test_batch_collapses_to_the_newest_event_per_message():
    winners, losers = newest_per_message(
        [Ev("a", 1), Ev("a", 3), Ev("b", 1), Ev("a", 2), Ev("a", 3), Ev("b", 1, "delete"), Ev("a", 3, tenant_id="t2")]
    )
    assert winners == [Ev("a", 3), Ev("b", 1, "delete"), Ev("a", 3, tenant_id="t2")]
    assert sorted(losers, key=repr) == sorted([Ev("a", 1), Ev("a", 2), Ev("a", 3), Ev("b", 1)], key=repr)
    with pytest.raises(ValueError, match="unknown op"):
        newest_per_message([Ev("a", 1, "edit")])


async def test_a_writer_of_another_version_waits_for_the_lease(guard):
    v3 = await guard.claim([Ev("m1", 3)])
    assert v3.go == [Ev("m1", 3)]
    v4 = await guard.claim([Ev("m1", 4)])
    assert v4.busy == [Ev("m1", 4)] and 0 < v4.retry_after_s <= 90
    dup = await guard.claim([Ev("m1", 3)])  # the same version in flight elsewhere waits too
    assert dup.busy == [Ev("m1", 3)]
    assert (await guard.confirm(v3)).confirmed == [Ev("m1", 3)]
    v4 = await guard.claim([Ev("m1", 4)])
    assert v4.go == [Ev("m1", 4)]
    await guard.confirm(v4)
    assert (await guard.claim([Ev("m1", 3)])).stale == [Ev("m1", 3)]


async def test_newer_claim_makes_an_in_flight_older_one_stale_not_busy(guard):
    v4 = await guard.claim([Ev("m1", 4)])
    v3 = await guard.claim([Ev("m1", 3)])
    assert v3.stale == [Ev("m1", 3)] and v3.busy == []
    await guard.confirm(v4)


async def test_release_lets_the_next_attempt_go(guard):
    first = await guard.claim([Ev("m1", 1)])
    await guard.release(first)
    again = await guard.claim([Ev("m1", 1)])  # not stale: never confirmed
    assert again.go == [Ev("m1", 1)]


async def test_a_write_that_outlives_its_lease_is_reported_lost(aredis, key_prefix):
    guard = VersionGuard(aredis, key_prefix + "ix:", lease_ttl_s=0.1)
    slow = await guard.claim([Ev("m1", 3)])
    await asyncio.sleep(0.25)
    fast = await guard.claim([Ev("m1", 4)])
    assert fast.go == [Ev("m1", 4)]
    assert (await guard.confirm(fast)).confirmed == [Ev("m1", 4)]
    assert (await guard.confirm(slow)).lost == [Ev("m1", 3)]
    alone = await guard.claim([Ev("m2", 1)])
    await asyncio.sleep(0.25)
    assert (await guard.confirm(alone)).late == [Ev("m2", 1)]  # expired but still the newest: recorded


async def test_mixed_batch_in_one_call(guard):
    await apply(guard, Ev("a", 5), Ev("b", 1, "delete"))
    held = await guard.claim([Ev("c", 1)])
    claim = await guard.claim([Ev("a", 4), Ev("a", 6), Ev("b", 1), Ev("c", 2), Ev("d", 1)])
    assert claim.go == [Ev("a", 6), Ev("d", 1)]
    assert set(claim.stale) == {Ev("a", 4), Ev("b", 1)}
    assert claim.busy == [Ev("c", 2)]
    await guard.confirm(held)


async def test_known_for_backfill(guard):
    await apply(guard, Ev("m1", 1), Ev("m2", 1, "delete"))
    assert await guard.known([("t1", "m1"), ("t1", "m2"), ("t1", "m3"), ("t2", "m1")]) == [True, True, False, False]
    # backfill rows carry version 0: the guard drops them for a known message even if asked
    assert (await guard.claim([Ev("m1", 0), Ev("m2", 0)])).stale == [Ev("m1", 0), Ev("m2", 0)]


def test_keys_of_one_message_share_a_hash_tag(guard):
    s, lease = guard.state_key("acme", "m1"), guard.lease_key("acme", "m1")
    assert s.endswith("{acme/m1}:g") and lease.endswith("{acme/m1}:l")
    # ids may contain ':': tenant a:b's message c is not tenant a's message b:c
    assert guard.state_key("a:b", "c") != guard.state_key("a", "b:c")
    assert guard.room_key("a:b", "c") != guard.room_key("a", "b:c") != guard.state_key("a", "b:c")
    with pytest.raises(ValueError, match="braces"):
        VersionGuard(guard.redis, "bad{prefix}:")
