"""Fixtures that provide real services; every test works under its own key prefix / schema.

- `redis_url`: HOTPATH_TEST_REDIS_URL, else 127.0.0.1:6379 when reachable, else an embedded Valkey.
- `pg_url`: PostgreSQL at 127.0.0.1:5432 database `test` (HOTPATH_TEST_PG_URL overrides), else an explicit skip
  (a failure under CI=true: a CI run must not go green by skipping).
- `pg_schema`: a fresh schema for one test, dropped afterwards.
- `milvus_uri`: a Milvus Lite server on a temp dir (one per session).
- `s3_endpoint`: a moto S3 server (one per session).
- `key_prefix`: a unique Redis key prefix for one test; keys under it (and ARQ keys of job ids under it) are
  deleted afterwards (SCAN, never KEYS).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping

import pytest

from tests.services import MilvusLite, S3Server, port_open, redis_ping, start_valkey

DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_TEST_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("HOTPATH_TEST_REDIS_URL")
    if url:
        yield url
        return
    if redis_ping(DEFAULT_TEST_REDIS):
        yield DEFAULT_TEST_REDIS
        return
    with start_valkey() as server:
        yield server.connection_url + "/0"


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"hptest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        # The test's own keys, and ARQ's job/result/in-progress/retry keys, whose job ids carry the prefix.
        for pattern in (prefix + "*", "arq:*:" + prefix + "*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
    finally:
        client.close()


def resolve_pg_url(environ: Mapping[str, str], default_port_open: bool) -> str:
    """HOTPATH_TEST_PG_URL, else the default when 127.0.0.1:5432 answers; otherwise skip, or fail under CI=true."""
    if environ.get("HOTPATH_TEST_PG_URL"):
        return environ["HOTPATH_TEST_PG_URL"]
    if default_port_open:
        return DEFAULT_TEST_PG
    reason = "PostgreSQL is not reachable at 127.0.0.1:5432 and HOTPATH_TEST_PG_URL is unset"
    if environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI=true: start PostgreSQL there or set HOTPATH_TEST_PG_URL", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_url() -> str:
    return resolve_pg_url(os.environ, port_open("127.0.0.1", 5432))


@pytest.fixture
async def pg_schema(pg_url: str):
    """A fresh PostgreSQL schema for one test; yields its name and drops it afterwards."""
    import asyncpg

    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    schema = f"hptest_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    yield schema
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def milvus_uri() -> Iterator[str]:
    server = MilvusLite().start()
    try:
        yield server.uri
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = S3Server().start()
    try:
        yield server.endpoint
    finally:
        server.stop()
