"""The API skeleton: /livez, /readyz per dependency, /metrics, request ids in headers and log lines."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from cacheman.app import create_app
from hotpath.logs import JsonFormatter
from hotpath.settings import ApiSettings
from tests.services import start_valkey


@pytest.fixture
async def sqlite_origin_url(tmp_path):
    from cacheman.origin.sql import init_schema

    url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    await init_schema(url, demo=True)
    return url


async def _client(settings):
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    return app, transport


@pytest.fixture
async def api(redis_url, sqlite_origin_url):
    settings = ApiSettings(redis_url=redis_url, origin_url=sqlite_origin_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            yield client


async def test_livez(api):
    r = await api.get("/livez")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_ok_reports_each_dependency(api):
    r = await api.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["dependencies"]["redis"]["status"] == "ok"
    assert body["dependencies"]["origin"]["status"] == "ok"


async def test_readyz_503_names_the_dependency_that_is_down(sqlite_origin_url):
    with start_valkey() as server:
        url = server.connection_url + "/0"
    # the server is stopped now: nothing listens on that port
    settings = ApiSettings(redis_url=url, origin_url=sqlite_origin_url, readyz_timeout_s=0.5, redis_timeout_s=0.3)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            r = await client.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert (body["type"], body["status"], body["dependency"]) == ("urn:hotpath:error:dependency-unavailable", 503, "redis")
    assert body["detail"].startswith("not ready: redis: ") and body["instance"] == "/readyz"
    assert body["dependencies"]["redis"]["status"] == "down"
    assert body["dependencies"]["redis"]["error"]
    assert body["dependencies"]["origin"]["status"] == "ok"


async def test_request_id_is_echoed_or_generated_and_logged(api, caplog):
    caplog.set_level(logging.INFO, logger="cacheman.access")
    r = await api.get("/readyz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = await api.get("/readyz")
    generated = r2.headers["x-request-id"]
    assert len(generated) >= 16 and generated != "abc-123"
    records = [rec for rec in caplog.records if rec.name == "cacheman.access"]
    ids = [getattr(rec, "request_id", None) for rec in records]
    assert "abc-123" in ids and generated in ids
    line = json.loads(JsonFormatter("api").format(records[ids.index("abc-123")]))
    assert line["request_id"] == "abc-123"
    assert line["route"] == "/readyz"
    assert line["status"] == 200


async def test_metrics_has_per_route_count_errors_and_latency(api):
    await api.get("/livez")
    await api.get("/livez")
    text = (await api.get("/metrics")).text
    assert 'hotpath_http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert "hotpath_http_request_seconds_bucket" in text
    assert "hotpath_http_errors_total" in text


async def test_openapi_and_docs(api):
    spec = (await api.get("/openapi.json")).json()
    assert "/readyz" in spec["paths"]
    assert (await api.get("/docs")).status_code == 200


async def test_queue_full_becomes_429_with_retry_after(redis_url, sqlite_origin_url):
    from taskkit.errors import QueueFull

    settings = ApiSettings(redis_url=redis_url, origin_url=sqlite_origin_url)
    app = create_app(settings)

    @app.post("/_test/enqueue")
    async def enqueue():
        raise QueueFull("hotpath:index", 2.3, depth=1000, oldest_age_s=4.0)

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            r = await client.post("/_test/enqueue")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3" and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert (body["type"], body["status"], body["queue"], body["retry_after_s"]) == (
        "urn:hotpath:error:queue-full", 429, "hotpath:index", 2.3)
    assert body["request_id"] == r.headers["x-request-id"] and body["instance"] == "/_test/enqueue"
    assert "nothing was enqueued" in body["detail"]


def test_origin_settings_reach_the_adapter():
    from cacheman.app import origin_options
    from cacheman.origin.base import open_origin

    s = ApiSettings(origin_url="http://a:1,http://b:2", origin_retries=4, origin_breaker_failures=9,
                    origin_max_concurrency=7, origin_timeout_s=0.7)
    origin = open_origin(s.origin_url, **origin_options(s))
    assert len(origin.instances) == 2
    assert (origin.retries, origin.max_concurrency, origin.timeout_s) == (4, 7, 0.7)
    assert all(i.breaker.failure_threshold == 9 for i in origin.instances)
    opts = origin_options(ApiSettings(origin_url="sqlite+aiosqlite:///x.db", origin_max_concurrency=3))
    assert opts == {"timeout_s": 2.0, "max_concurrency": 3}
