"""Failover under steady load: a master of a private local Cluster is SIGKILLed while membership checks run.

Its rooms answer from the origin (`X-Cache: bypass`) — never a 5xx, the load staying under the bypass limit
(HOTPATH_CACHE_BYPASS_CONCURRENCY) — the other masters' rooms keep hitting, and its rooms hit again once its
replica is promoted. The recovery time (kill → first hit again on its slots) is measured and printed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from redis.crc import key_slot

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.keys import Keys
from hotpath.settings import ApiSettings
from tests.cacheman.cache_fakes import FakeOrigin
from tests.cacheman.conftest import running
from tests.cluster import LocalCluster

T = "acme"
SECRET = "failover-secret-0123456789-0123456789-01"
ROOMS = [f"r{i}" for i in range(30)]
WORKERS = 12  # concurrent requests, under the bypass limit (32)


def _slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.fixture
def cluster():
    c = LocalCluster(node_timeout_ms=1000).start()
    yield c
    c.close()


async def test_a_killed_master_bypasses_its_slots_and_hits_again_after_its_replica_is_promoted(cluster, key_prefix):
    prefix = key_prefix.rstrip(":")
    settings = ApiSettings(
        redis_url=cluster.url, redis_cluster=True, redis_prefix=prefix, redis_timeout_s=0.5, cache_redis_retry_s=0.5,
        jwt_keys={"t1": SECRET}, rate_limit_per_s=1_000_000, rate_limit_burst=1_000_000, cache_ttl_s=600,
    )
    origin = FakeOrigin()
    for r in ROOMS:
        origin.add_room(T, r, members={"u1": "member"})
    keys = Keys(prefix)
    victim = cluster.master_of_slot(_slot(keys.members(T, ROOMS[0])))
    on_victim = {r for r in ROOMS if cluster.master_of_slot(_slot(keys.members(T, r))) is victim}
    assert 0 < len(on_victim) < len(ROOMS)
    h = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[T], scope="cache:read", ttl_s=600)}
    log: list[tuple[float, str, int, str]] = []  # (time since the kill, room, status, X-Cache)
    app = create_app(settings, origin=origin)
    async with running(app) as api:
        for r in ROOMS:  # warm: every room cached (and replicated)
            assert (await api.get(f"/v1/{T}/rooms/{r}/members/u1", headers=h)).status_code == 200
        await asyncio.sleep(0.3)
        killed_at = [float("inf")]
        stop = asyncio.Event()

        async def worker(i: int) -> None:
            n = i
            while not stop.is_set():
                r = ROOMS[n % len(ROOMS)]
                n += WORKERS
                resp = await api.get(f"/v1/{T}/rooms/{r}/members/u1", headers=h)
                log.append((time.monotonic() - killed_at[0], r, resp.status_code, resp.headers.get("x-cache", "")))

        async def recovered() -> bool:
            """The victim's rooms were bypassed, and have hit for the last second."""
            mine = [(t, s) for t, r, _, s in log if r in on_victim and t > 0]
            if not any(s == "bypass" for _, s in mine):
                return False
            last_bypass = max(t for t, s in mine if s == "bypass")
            later = [s for t, s in mine if t > last_bypass]
            return bool(later) and mine[-1][0] - last_bypass > 1.0 and set(later) == {"hit"}

        tasks = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        await asyncio.sleep(1.0)  # steady load first
        killed_at[0] = time.monotonic()
        cluster.kill(victim)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not await recovered():
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)

    after = [e for e in log if e[0] > 0]
    statuses = Counter(code for _, _, code, _ in after)
    assert set(statuses) == {200}, statuses  # no 5xx: under the bypass limit the origin answers every bypass
    assert await recovered(), "the victim's rooms did not hit again within 25 s: " + str(Counter((r in on_victim, s) for _, r, _, s in after))
    first_bypass = min(t for t, r, _, s in after if r in on_victim and s == "bypass")
    hit_again = min(t for t, r, _, s in after if r in on_victim and s == "hit" and t > first_bypass)
    outage = [(r, s) for t, r, _, s in after if t <= hit_again]
    victim_outage = Counter(s for r, s in outage if r in on_victim)
    others_outage = Counter(s for r, s in outage if r not in on_victim)
    assert set(victim_outage) <= {"hit", "bypass", "miss", "stale"}, victim_outage
    others_hit = others_outage["hit"] / max(1, sum(others_outage.values()))
    print(f"\ncluster failover: master {victim.port} SIGKILLed under {WORKERS} concurrent requests; its slots bypassed "
          f"after {first_bypass * 1000:.0f} ms and hit again {hit_again:.2f} s after the kill (recovery time); "
          f"during the outage its rooms answered {dict(victim_outage)}, the other masters' rooms {dict(others_outage)} "
          f"({others_hit:.1%} hits); {len(after)} requests, all 200")
    assert others_hit >= 0.9, others_outage  # the other masters keep hitting
    assert hit_again < 15, hit_again
