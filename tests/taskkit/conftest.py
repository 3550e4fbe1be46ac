"""Fixtures for taskkit tests: a per-test key prefix that also covers ARQ's own keys, an async Redis
client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from arq.connections import RedisSettings


@pytest.fixture
def tk_prefix(key_prefix: str, redis_url: str) -> Iterator[str]:
    """`key_prefix`, plus cleanup of ARQ's job/result/retry/in-progress keys of jobs under it."""
    yield key_prefix
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"arq:*:{key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i:i + 500])
    finally:
        client.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[object]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def arq_redis(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


@pytest.fixture(params=["arq-worker", "fastworker"])
def worker_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on ARQ's own Worker and once on taskkit's FastWorker (harness.running_worker)."""
    from tests.taskkit import harness

    monkeypatch.setattr(harness, "FAST", request.param == "fastworker")
    return request.param
