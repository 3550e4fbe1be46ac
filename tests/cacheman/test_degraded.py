"""Degraded modes with real services: a private Valkey stopped and restarted (bypass, then recovery), the dbman
double killed and restarted (stale-if-error, 503 naming the origin, then recovery), and the bypass limit."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time

import pytest

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.errors import DependencyUnavailable, OriginUnavailable
from cacheman.origin.http import HttpOrigin
from cacheman.origin.sql import SqlOrigin
from hotpath.settings import ApiSettings
from tests.cacheman.cache_fakes import FakeOrigin, make_cache, redis_client
from tests.cacheman.conftest import running
from tests.services import free_port, start_valkey, wait_port

SECRET = "degraded-test-secret-0123456789-0123456789"
T = "acme"
H = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[T], scope="cache:read cache:write", ttl_s=3600)}


async def _until(fn, within_s: float = 8.0):
    deadline = time.monotonic() + within_s
    while True:
        res = await fn()
        if res is not None:
            return res
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


@pytest.fixture
def valkey_port():
    return free_port()


async def test_redis_down_answers_from_the_origin_then_recovers_without_restart(sqlite_url, valkey_port):
    port = valkey_port
    settings = ApiSettings(
        redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.3, cache_redis_retry_s=0.3, origin_url=sqlite_url,
        jwt_keys={"t1": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000,
    )
    origin = SqlOrigin(sqlite_url)
    server = start_valkey(port=port)
    server.__enter__()
    try:
        app = create_app(settings, origin=origin)
        async with running(app) as api:
            url = f"/v1/{T}/rooms/room-01/members/user-005"  # user-005 owns room-01 in the demo data
            first = await api.get(url, headers=H)
            assert first.status_code == 200 and first.headers["x-cache"] == "miss"
            assert first.json() == {"room_id": "room-01", "user_id": "user-005", "role": "owner"}
            assert (await api.get(url, headers=H)).headers["x-cache"] == "hit"

            server.__exit__(None, None, None)  # stop Redis
            server = None
            t0 = time.monotonic()
            down = [await api.get(url, headers=H) for _ in range(20)]
            assert {r.status_code for r in down} == {first.status_code}
            assert {r.headers["x-cache"] for r in down} == {"bypass"}
            assert all(r.json() == first.json() for r in down)
            assert {r.headers["age"] for r in down} == {"0"}  # each answer was loaded from the origin just now
            assert time.monotonic() - t0 < 3.0, "each request paid a Redis timeout instead of bypassing"
            assert (await api.get(f"/v1/{T}/rooms/room-02", headers=H)).headers["x-cache"] == "bypass"

            server = start_valkey(port=port)  # Redis is back on the same port: no API restart
            server.__enter__()

            async def back():
                r = await api.get(url, headers=H)
                return r if r.headers["x-cache"] in ("miss", "hit") else None

            await _until(back)
            again = await api.get(url, headers=H)
            assert again.headers["x-cache"] == "hit" and again.json() == first.json()
    finally:
        if server is not None:
            server.__exit__(None, None, None)
        await origin.aclose()


async def test_bypass_is_bounded_by_the_concurrency_limit():
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    origin = FakeOrigin()
    origin.add_room(T, "r1")
    origin.delay = 0.1
    cache, _ = make_cache(dead, origin, "hptest:bypass:", bypass_concurrency=3, bypass_wait_s=5.0)
    for i in range(15):
        origin.add_room(T, f"r{i}")
    results = await asyncio.gather(*(cache.room(T, f"r{i}") for i in range(15)))
    assert {r.status for r in results} == {"bypass"}
    assert origin.max_in_flight == 3
    # Concurrent requests for one key share one origin call even while Redis is down.
    origin.calls.clear()
    same = await asyncio.gather(*(cache.room(T, "r1") for _ in range(20)))
    assert {r.status for r in same} == {"bypass"} and origin.calls["get_room"] == 1
    # With no room to wait, the excess is refused with 503 naming Redis rather than piling onto the origin.
    origin.max_in_flight = 0
    impatient, _ = make_cache(dead, origin, "hptest:bypass:", bypass_concurrency=2, bypass_wait_s=0.01)
    outcomes = await asyncio.gather(*(impatient.room(T, f"r{i}") for i in range(10)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, DependencyUnavailable)]
    assert refused and all(o.dependency == "redis" for o in refused)
    assert origin.max_in_flight <= 2
    # Both down: 503 naming the origin, saying Redis is down too.
    origin.down = True
    with pytest.raises(OriginUnavailable, match="Redis is unreachable"):
        await cache.room(T, "r1")
    await dead.aclose()


def _start_double(sqlite_url: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cacheman.origin.double", "--origin-url", sqlite_url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def test_origin_down_serves_stale_else_503_then_recovers_without_restart(redis_url, key_prefix, sqlite_url):
    port = free_port()
    double = _start_double(sqlite_url, port)
    origin = HttpOrigin([f"http://127.0.0.1:{port}"], timeout_s=0.5, retries=0, breaker_failures=2, breaker_open_s=0.3)
    settings = ApiSettings(
        redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), jwt_keys={"t1": SECRET},
        rate_limit_per_s=100_000, rate_limit_burst=100_000, cache_ttl_s=0.3, cache_ttl_jitter=0.0,
    )
    try:
        app = create_app(settings, origin=origin)
        async with running(app) as api:
            t_fill = time.monotonic()
            fresh = await api.get(f"/v1/{T}/rooms/room-01", headers=H)
            t_filled = time.monotonic()
            assert fresh.status_code == 200 and fresh.headers["x-cache"] == "miss"
            members = await api.get(f"/v1/{T}/rooms/room-01/members", headers=H)
            assert members.status_code == 200

            _kill(double)  # the origin dies
            await asyncio.sleep(0.4)  # and the cached entries are past their freshness
            t_ask = time.monotonic()
            stale = await api.get(f"/v1/{T}/rooms/room-01", headers=H)
            t_answered = time.monotonic()
            assert stale.status_code == 200 and stale.headers["x-cache"] == "stale" and stale.json() == fresh.json()
            # Age counts whole seconds since the fill (about 0.4 s ago): 0, unless this machine stalled.
            assert math.floor(t_ask - t_filled) <= int(stale.headers["age"]) <= math.floor(t_answered - t_fill)
            stale_members = await api.get(f"/v1/{T}/rooms/room-01/members", headers=H)
            assert stale_members.headers["x-cache"] == "stale" and stale_members.json() == members.json()
            never = await api.get(f"/v1/{T}/rooms/room-02", headers=H)
            assert never.status_code == 503 and never.headers["content-type"] == "application/problem+json"
            body = never.json()
            assert (body["type"], body["status"], body["dependency"]) == ("urn:hotpath:error:dependency-unavailable", 503, "origin")
            assert "nothing cached to serve instead" in body["detail"] and body["request_id"] == never.headers["x-request-id"]

            double = _start_double(sqlite_url, port)  # the origin is back: no API restart

            async def back():
                r = await api.get(f"/v1/{T}/rooms/room-02", headers=H)
                return r if r.status_code == 200 else None

            assert (await _until(back)).headers["x-cache"] == "miss"
            refreshed = await api.get(f"/v1/{T}/rooms/room-01", headers=H)
            assert refreshed.headers["x-cache"] == "miss" and refreshed.json() == fresh.json()  # the expired copy is refilled
    finally:
        _kill(double)
        await origin.aclose()


async def test_a_hung_redis_costs_one_probe_per_window_not_one_timeout_per_request():
    """Redis accepts connections and never answers (a partition): after the first timeout, requests bypass
    at once; when the window ends exactly one request probes Redis while the others keep bypassing."""
    connections = 0

    async def blackhole(reader, writer):
        nonlocal connections
        connections += 1
        await reader.read()  # never answers

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    origin = FakeOrigin()
    origin.add_room(T, "r1")
    cache, _ = make_cache(hung, origin, "hptest:hung:", redis_retry_s=0.4)
    try:
        assert (await cache.room(T, "r1")).status == "bypass"  # paid one timeout
        assert connections == 1
        t0 = time.monotonic()
        burst = await asyncio.gather(*(cache.room(T, "r1") for _ in range(50)))
        assert {r.status for r in burst} == {"bypass"} and time.monotonic() - t0 < 0.15
        assert connections == 1  # nobody touched Redis inside the window
        await asyncio.sleep(0.45)
        burst = await asyncio.gather(*(cache.room(T, "r1") for _ in range(50)))
        assert {r.status for r in burst} == {"bypass"}
        assert connections == 2  # one probe, not fifty
    finally:
        server.close()
        await hung.aclose()
