"""Fixtures shared by the cacheman tests."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from cacheman.origin.sql import init_schema
from tests.cacheman.cache_fakes import redis_client


@pytest.fixture
async def redis(redis_url):
    """An async client on the test Redis (tests still write only under their own key prefix)."""
    client = redis_client(redis_url)
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
