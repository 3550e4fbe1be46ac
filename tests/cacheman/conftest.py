"""Fixtures shared by the cacheman tests.

`cache_redis` runs a test twice: on the single-node test Redis and on a local 3-master / 3-replica Cluster
(tests/cluster.py, one per session); only the correctness tests the Cluster changes use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx
import pytest

from cacheman.origin.sql import init_schema
from cacheman.redisconn import AnyRedis, RedisConfig, connect, open_redis
from tests.cacheman.cache_fakes import redis_client
from tests.cluster import LocalCluster


@pytest.fixture
async def redis(redis_url):
    """An async client on the test Redis (tests still write only under their own key prefix)."""
    client = redis_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster():
    """A local Redis Cluster (valkey-server): three masters, three replicas, 1 s node timeout."""
    cluster = LocalCluster(node_timeout_ms=1000).start()
    yield cluster
    cluster.close()


@dataclass(frozen=True)
class CacheRedis:
    """Where a parametrized test's cache lives: `kind` single | cluster."""

    kind: str
    url: str

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def config(self, timeout_s: float = 2.0) -> RedisConfig:
        return RedisConfig(url=self.url, cluster=self.cluster, timeout_s=timeout_s)

    def client(self, timeout_s: float = 2.0) -> AnyRedis:
        """The cache's client, built as the API builds it."""
        return open_redis(self.config(timeout_s))

    def env(self) -> dict[str, str]:
        return {"HOTPATH_REDIS_URL": self.url, "HOTPATH_REDIS_CLUSTER": "true" if self.cluster else "false"}

    def settings(self) -> dict:
        return {"redis_url": self.url, "redis_cluster": self.cluster}


@pytest.fixture(params=["single", "cluster"])
def cache_redis(request, redis_url) -> CacheRedis:
    if request.param == "single":
        return CacheRedis("single", redis_url)
    return CacheRedis("cluster", request.getfixturevalue("redis_cluster").url)


@pytest.fixture
async def cache_client(cache_redis):
    """The cache's async client on `cache_redis` (a RedisCluster for the cluster runs)."""
    client = cache_redis.client()
    await connect(client)  # as the API's lifespan does: the slot map is known from the first request
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory):
    """A SQLite origin with the demo data, one per test module."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('origin') / 'origin.db'}"
    asyncio.run(init_schema(url, demo=True))
    return url


@contextlib.asynccontextmanager
async def running(app):
    """The app with its lifespan run, and an httpx client speaking ASGI to it."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            yield client
