"""Fixtures shared by the cacheman tests."""

from __future__ import annotations

import pytest

from tests.cacheman.cache_fakes import redis_client


@pytest.fixture
async def redis(redis_url):
    """An async client on the test Redis (tests still write only under their own key prefix)."""
    client = redis_client(redis_url)
    yield client
    await client.aclose()
