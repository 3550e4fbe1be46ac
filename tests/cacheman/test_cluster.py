"""What changes on a Redis Cluster, on the single node and on the local Cluster alike: scripts survive a node
that lost its script cache (NOSCRIPT → reloaded), events over HTTP and batches spanning every master, and the
per-node health windows (a failing node's keys bypass, the others' keys do not)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.events import Event
from cacheman.health import RedisHealth
from cacheman.keys import Keys
from cacheman.redisconn import RedisConfig, Topology, is_cluster, open_redis, seed_nodes
from hotpath.settings import ApiSettings
from tests.cacheman.cache_fakes import FakeOrigin, make_cache
from tests.cacheman.conftest import running

T = "acme"
SECRET = "cluster-test-secret-0123456789-0123456789"


async def _flush_scripts(client) -> int:
    """SCRIPT FLUSH on every node (a promoted replica has no script cache either); returns the nodes flushed."""
    if not is_cluster(client):
        await client.script_flush()
        return 1
    nodes = client.get_nodes()
    for node in nodes:
        plain = aioredis.Redis(host=node.host, port=int(node.port))
        await plain.script_flush()
        await plain.aclose()
    return len(nodes)


async def test_scripts_run_again_after_a_node_lost_its_script_cache(cache_client, cache_redis, key_prefix):
    origin = FakeOrigin()
    for i in range(12):
        origin.add_room(T, f"r{i}", members={"u1": "member"})
    cache, events = make_cache(cache_client, origin, key_prefix)
    ids = [f"r{i}" for i in range(12)]
    await cache.rooms_batch(T, ids)  # every script used once: cached on the nodes
    assert (await cache.member_role(T, "r0", "u1"))[0].value == "member"
    assert await _flush_scripts(cache_client) == (6 if cache_redis.cluster else 1)

    # one script call (EVALSHA → NOSCRIPT → EVAL), then pipelined ones across every node
    origin.set_member(T, "r0", "u1", None)
    [res] = await events.apply(T, [Event(id="e0", type="member.removed", room_id="r0", user_id="u1")])
    assert res.result == "applied"
    await _flush_scripts(cache_client)
    results = await events.apply(T, [Event(id=f"u{i}", type="room.updated", room_id=f"r{i}") for i in range(12)])
    assert [r.result for r in results] == ["applied"] * 12
    await _flush_scripts(cache_client)
    found, missing, status, _ = await cache.rooms_batch(T, ids)  # lease acquire + fill, pipelined, after a flush
    assert (len(found), missing, status) == (12, [], "miss")
    found, _, status, _ = await cache.rooms_batch(T, ids)
    assert status == "hit"
    await _flush_scripts(cache_client)
    role, _ = await cache.member_role(T, "r0", "u1")  # a single-key fill after a flush
    assert (role.value, role.status) == (None, "miss")
    assert (await cache.member_role(T, "r0", "u1"))[0].status == "hit"


async def test_events_over_http_and_batches_across_every_master(cache_redis, key_prefix, sqlite_url):
    settings = ApiSettings(**cache_redis.settings(), redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url,
                           jwt_keys={"t1": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000)
    h = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[T], scope="cache:read cache:write", ttl_s=600)}
    rooms = [f"room-{i:02d}" for i in range(1, 11)]
    app = create_app(settings)
    async with running(app) as api:
        if cache_redis.cluster:
            topo = Topology(app.state.redis)
            assert len({topo.node_of(Keys(settings.redis_prefix).room_meta(T, r)) for r in rooms}) == 3
        got = (await api.post(f"/v1/{T}/rooms:batchGet", json={"room_ids": rooms}, headers=h))
        assert got.status_code == 200 and got.headers["x-cache"] == "miss" and len(got.json()["rooms"]) == 10
        seqs = {r: got.json()["rooms"][r]["last_seq"] for r in rooms}
        events = [{"id": f"m{i}", "type": "message.created", "room_id": r, "seq": seqs[r] + 5} for i, r in enumerate(rooms)]
        posted = await api.post(f"/v1/{T}/events", json={"events": events}, headers=h)
        assert posted.status_code == 200 and posted.json()["applied"] == 10, posted.text
        again = await api.post(f"/v1/{T}/rooms:batchGet", json={"room_ids": rooms}, headers=h)
        assert again.headers["x-cache"] == "hit"  # the cached rooms, their seq keys raised on every node
        assert {r: again.json()["rooms"][r]["last_seq"] for r in rooms} == {r: seqs[r] + 5 for r in rooms}
        checks = [{"room_id": r, "user_id": "user-001"} for r in rooms]
        first = await api.post(f"/v1/{T}/memberships:check", json={"checks": checks}, headers=h)
        second = await api.post(f"/v1/{T}/memberships:check", json={"checks": checks}, headers=h)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json() and second.headers["x-cache"] == "hit"


REFUSED = RedisConnectionError("Error 111 connecting to 127.0.0.1:7000. Connect call failed.")


def test_health_windows_are_per_node():
    health = RedisHealth(60.0, lambda key: key.split("/")[0])
    health.failed("n1/a", REFUSED)
    assert not health.usable("n1/b") and health.usable("n2/a")
    assert health.down == ["n1"]
    health.ok("n1/c")
    assert health.usable("n1/b") and health.down == []
    # A connection that dropped (RedisCluster cuts every node's connections when one fails) opens no window.
    health.failed("n2/a", RedisConnectionError("Connection closed by server."))
    health.failed("n2/a", RedisConnectionError("connection to 127.0.0.1:7001 was closed while in use"))
    assert health.usable("n2/a") and health.down == []


def test_seed_nodes_and_the_single_node_refusal():
    nodes, kwargs = seed_nodes("redis://u:pw@h1:7000,h2:7001, redis://h3")
    assert nodes == [("h1", 7000), ("h2", 7001), ("h3", 6379)]
    assert kwargs == {"ssl": False, "username": "u", "password": "pw"}
    for bad, needle in (("redis://h1:7000/2", "database 0"),):
        try:
            seed_nodes(bad)
        except ValueError as exc:
            assert needle in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")
    try:
        open_redis(RedisConfig(url="redis://h1:7000,redis://h2:7000", cluster=False))
    except ValueError as exc:
        assert "HOTPATH_REDIS_CLUSTER" in str(exc)
    else:
        raise AssertionError("several nodes accepted without HOTPATH_REDIS_CLUSTER")


async def test_a_membership_check_on_a_down_node_bypasses_while_the_others_hit(cache_client, cache_redis, key_prefix):
    """The window of one node (as after a failed call) sends only its keys to the origin."""
    origin = FakeOrigin()
    rooms = [f"r{i}" for i in range(12)]
    for r in rooms:
        origin.add_room(T, r, members={"u1": "member"})
    cache, _ = make_cache(cache_client, origin, key_prefix, redis_retry_s=60.0)
    for r in rooms:
        await cache.member_role(T, r, "u1")
    keys = Keys(key_prefix)
    victim = keys.members(T, "r0")
    cache.rt.redis_failed(victim, REFUSED)
    down = {r for r in rooms if not cache.rt.redis_usable(keys.members(T, r))}
    if cache_redis.cluster:
        assert "r0" in down and 0 < len(down) < len(rooms)  # one master's rooms, not all
    else:
        assert down == set(rooms)  # one node: one window
    statuses = {r: (await cache.member_role(T, r, "u1"))[0].status for r in rooms}
    assert {r for r, s in statuses.items() if s == "bypass"} == down
    assert {s for r, s in statuses.items() if r not in down} <= {"hit"}
    rows, status, _ = await cache.memberships_batch(T, [(r, "u1") for r in rooms])
    assert [role for _, _, role, _ in rows] == ["member"] * 12 and status == "bypass"
