"""Fixtures of the index worker tests: a fresh Milvus collection per test (dropped afterwards) on the session's
Milvus Lite server, an async Redis client, a version guard under the test's key prefix, and `own_milvus`: a private
Milvus Lite server for the tests that stop, hang or restart it (never the session's)."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
import redis.asyncio as aioredis

from index_worker.embed.hashing import HashEmbedder
from index_worker.guard import VersionGuard
from index_worker.store import MilvusStore
from tests.services import MilvusLite

DIM = 32


@pytest.fixture
def own_milvus():
    server = MilvusLite().start()
    try:
        yield server
    finally:
        if server.proc and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)  # never leave it stopped
        server.close()


@pytest.fixture
async def store(milvus_uri: str):
    s = MilvusStore(milvus_uri, collection=f"t_{uuid.uuid4().hex[:12]}", dim=DIM, timeout_s=10, text_max_bytes=2000)
    await s.ensure_collection()
    yield s
    try:
        await s.drop_collection()
    finally:
        await s.close()


@pytest.fixture
async def aredis(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def guard(aredis, key_prefix: str) -> VersionGuard:
    return VersionGuard(aredis, key_prefix + "ix:", lease_ttl_s=90, tombstone_ttl_s=3600)


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder(DIM)
