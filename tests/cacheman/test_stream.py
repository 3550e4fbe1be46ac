"""The events stream consumer on a real Redis Stream: ack only after apply, claiming a dead consumer's
pending entries, poison entries to the dead stream, and the consumer started by the API lifespan."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.errors import DependencyUnavailable
from cacheman.stream import StreamConsumer
from hotpath.settings import ApiSettings
from tests.cacheman.cache_fakes import FakeOrigin, make_cache

T = "acme"



def entry(event: dict, tenant: str = T) -> dict:
    return {"tenant": tenant, "event": orjson.dumps(event)}


class FlakyApplier:
    """Fails the first `failures` applies like Redis being unreachable, then applies for real."""

    def __init__(self, inner, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def apply(self, tenant, events, *, source="stream"):
        if self.failures > 0:
            self.failures -= 1
            raise DependencyUnavailable("redis", "injected failure")
        return await self.inner.apply(tenant, events, source=source)


async def _pending(redis, stream: str, group: str) -> int:
    return (await redis.xpending(stream, group))["pending"]


async def test_an_entry_is_acked_only_after_it_is_applied(cache_client, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", last_seq=1)
    cache, events = make_cache(cache_client, origin, key_prefix)
    stream = key_prefix + "events"
    consumer = StreamConsumer(cache_client, FlakyApplier(events, failures=1), stream=stream, consumer="c1", block_ms=10)
    await consumer.ensure_group()
    await cache_client.xadd(stream, entry({"id": "e1", "type": "message.created", "room_id": "r1", "seq": 7}))
    with pytest.raises(DependencyUnavailable):
        await consumer.run_once()
    assert await _pending(cache_client, stream, "cacheman") == 1  # read, not applied, so not acked
    assert (await cache.room(T, "r1")).value["last_seq"] == 1
    assert await consumer.run_once() == 1  # retried from its own pending list
    assert await _pending(cache_client, stream, "cacheman") == 0
    assert (await cache.room(T, "r1")).value["last_seq"] == 7


async def test_pending_entries_of_a_dead_consumer_are_claimed_by_a_live_one(cache_client, key_prefix):
    origin = FakeOrigin()
    origin.add_room(T, "r1", members={"u1": "member", "u2": "member"})
    cache, events = make_cache(cache_client, origin, key_prefix)
    stream = key_prefix + "events"
    live = StreamConsumer(cache_client, events, stream=stream, consumer="live", claim_idle_ms=200, block_ms=10)
    await live.ensure_group()
    assert (await cache.member_role(T, "r1", "u1"))[0].value == "member"
    origin.set_member(T, "r1", "u1", None)
    await cache_client.xadd(stream, entry({"id": "e1", "type": "member.removed", "room_id": "r1", "user_id": "u1"}))
    await cache_client.xadd(stream, entry({"id": "e2", "type": "message.created", "room_id": "r1", "seq": 3}))
    # A consumer reads both and dies before acking.
    got = await cache_client.xreadgroup("cacheman", "dead", {stream: ">"}, count=10)
    assert len(got[0][1]) == 2
    assert await live.run_once() == 0  # not idle long enough yet: still the dead consumer's
    await asyncio.sleep(0.25)
    assert await live.run_once() == 2
    assert await _pending(cache_client, stream, "cacheman") == 0
    res, _ = await cache.member_role(T, "r1", "u1")
    assert res.value is None and res.status == "miss"
    assert (await cache.room(T, "r1")).value["last_seq"] == 3


async def test_entries_that_can_never_apply_go_to_the_dead_stream(cache_client, key_prefix):
    _, events = make_cache(cache_client, FakeOrigin(), key_prefix)
    stream = key_prefix + "events"
    consumer = StreamConsumer(cache_client, events, stream=stream, consumer="c1", block_ms=10)
    await consumer.ensure_group()
    await cache_client.xadd(stream, {"tenant": T, "event": b"{not json"})
    await cache_client.xadd(stream, entry({"id": "e", "type": "read.updated", "room_id": "r1"}))  # lacks user_id, seq
    await cache_client.xadd(stream, entry({"id": "ok", "type": "room.updated", "room_id": "r1"}, tenant="bad tenant"))
    await cache_client.xadd(stream, entry({"id": "ok", "type": "room.updated", "room_id": "r1"}))
    assert await consumer.run_once() == 1
    assert await _pending(cache_client, stream, "cacheman") == 0
    dead = await cache_client.xrange(stream + ":dead")
    assert len(dead) == 3
    assert b"needs user_id and seq" in dead[1][1][b"error"]


async def test_consumers_of_gone_processes_are_pruned_once_idle_and_empty(cache_client, key_prefix):
    _, events = make_cache(cache_client, FakeOrigin(), key_prefix)
    stream = key_prefix + "events"
    live = StreamConsumer(cache_client, events, stream=stream, consumer="live", block_ms=10)
    await live.ensure_group()
    await cache_client.xadd(stream, entry({"id": "e", "type": "room.updated", "room_id": "r1"}))
    await cache_client.xreadgroup("cacheman", "gone-with-pending", {stream: ">"}, count=1)  # holds an entry
    await cache_client.xgroup_createconsumer(stream, "cacheman", "gone-empty")  # holds nothing
    live.prune_idle_ms = 50
    await asyncio.sleep(0.1)
    assert await live.prune_consumers() == ["gone-empty"]
    assert {c["name"] for c in await cache_client.xinfo_consumers(stream, "cacheman")} == {b"gone-with-pending"}


async def test_the_api_lifespan_runs_the_consumer(cache_client, cache_redis, key_prefix):
    secret = "stream-secret-0123456789-0123456789-01"
    origin = FakeOrigin()
    origin.add_room(T, "r1", last_seq=1)
    stream = key_prefix + "events"
    settings = ApiSettings(
        **cache_redis.settings(), redis_prefix=key_prefix.rstrip(":"), jwt_keys={"k": secret}, events_stream_enabled=True,
        events_stream=stream, events_stream_consumer="api-1", rate_limit_per_s=100_000, rate_limit_burst=100_000,
    )
    app = create_app(settings, origin=origin)
    headers = {"Authorization": "Bearer " + mint_token(secret, kid="k", sub="t", tenants=[T], scope="cache:read", ttl_s=60)}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            assert (await api.get(f"/v1/{T}/rooms/r1", headers=headers)).json()["last_seq"] == 1
            await cache_client.xadd(stream, entry({"id": "e1", "type": "message.created", "room_id": "r1", "seq": 42}))
            for _ in range(50):
                if (await api.get(f"/v1/{T}/rooms/r1", headers=headers)).json()["last_seq"] == 42:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the stream event was not applied by the API's consumer")
            for _ in range(50):  # the ack follows the apply by one round trip
                if await _pending(cache_client, stream, "cacheman") == 0:
                    break
                await asyncio.sleep(0.02)
            assert await _pending(cache_client, stream, "cacheman") == 0
