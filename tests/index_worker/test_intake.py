"""The index intake of the composed API against real Redis: bad input is a 4xx problem with nothing enqueued;
idempotency per (tenant, op, message, version); the whole request refused with 429 + Retry-After over the high
watermark; 503 naming the queue when its Redis is down, and naming Milvus when the search cannot reach it; the
API's /metrics carries the producer's rejections. The producer function validates the same shape."""

from __future__ import annotations

import pydantic
import pytest
from redis.asyncio import Redis

from hotpath.api import build_api
from index_worker.intake import enqueue_index_events
from taskkit import Keys, Producer, QueueFull
from tests.cacheman.cache_fakes import FakeOrigin
from tests.cacheman.conftest import running
from tests.index_worker.harness import DIM, collection_name
from tests.index_worker.test_pipeline import A, B, api_settings, token, up
from tests.services import free_port

PROBLEM = "application/problem+json"


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def api(redis_url, key_prefix, milvus_uri):
    settings = api_settings(redis_url, key_prefix, milvus_uri, collection_name(), index_queue_high=30, index_queue_low=10,
                            max_body_bytes=4 * 1024 * 1024)
    app = build_api(settings, origin=FakeOrigin())
    async with running(app) as client:
        client.app = app
        yield client


async def depth(redis: Redis, prefix: str) -> int:
    return await redis.zcard(Keys(prefix).arq_queue("index"))


def _big(n: int) -> dict:
    return {"events": [up(f"m{i}", 1, "x") for i in range(n)]}


BAD = [
    ("missing text", {"events": [{k: v for k, v in up("m1", 1, "x").items() if k != "text"}]}, "text", "missing"),
    ("empty text", {"events": [up("m1", 1, "")]}, "text", "string_too_short"),
    ("oversized text", {"events": [up("m1", 1, "é" * 1001)]}, "text", "value_error"),  # 2,002 bytes > 2,000
    ("unknown op", {"events": [{"op": "archive", "message_id": "m1", "version": 1}]}, "events", "union_tag_invalid"),
    ("wrong vector dimension", {"events": [up("m1", 1, "x", vector=[0.1] * (DIM - 1))]}, "vector", "value_error"),
    ("vector of strings", {"events": [up("m1", 1, "x", vector=["a"] * DIM)]}, "vector", "float_parsing"),
    ("negative version", {"events": [{"op": "delete", "message_id": "m1", "version": -1}]}, "version", "greater_than_equal"),
    ("bad message id", {"events": [up("m 1", 1, "x")]}, "message_id", "string_pattern_mismatch"),
    ("created_at without zone", {"events": [up("m1", 1, "x") | {"created_at": "2026-11-26T12:00:00"}]}, "created_at",
     "timezone_aware"),
    ("no events", {"events": []}, "events", "too_short"),
    ("1,001 events", _big(1001), "events", "too_long"),
]


@pytest.mark.parametrize(("case", "body", "field", "kind"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_a_422_problem_and_nothing_is_enqueued(api, redis, key_prefix, case, body, field, kind):
    # A valid event beside the bad one: the request is refused whole.
    if body["events"] and len(body["events"]) < 1000:
        body = {"events": [up("ok", 1, "fine"), *body["events"]]}
    res = await api.post(f"/v1/{A}/index", headers=token(), json=body)
    assert res.status_code == 422 and res.headers["content-type"] == PROBLEM, res.text
    problem = res.json()
    assert problem["type"] == "urn:hotpath:error:validation-failed" and problem["instance"] == f"/v1/{A}/index"
    assert any(field in map(str, e["loc"]) and e["type"] == kind for e in problem["errors"]), problem["errors"]
    assert len(res.content) < 20_000  # the input is not echoed back
    assert await depth(redis, key_prefix) == 0


async def test_oversized_text_names_the_limit(api):
    res = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up("m1", 1, "é" * 1001)]})
    assert "2002 bytes" in res.json()["detail"] and "HOTPATH_INDEX_TEXT_MAX_BYTES" in res.json()["detail"]


async def test_wrong_tenant_scope_and_anonymous_are_refused(api, redis, key_prefix):
    body = {"events": [up("m1", 1, "x")]}
    other = await api.post(f"/v1/{B}/index", headers=token(tenants=(A,)), json=body)
    assert other.status_code == 403 and other.json()["type"] == "urn:hotpath:error:tenant-forbidden"
    read_only = await api.post(f"/v1/{A}/index", headers=token(scope="cache:read"), json=body)
    assert read_only.status_code == 403 and read_only.json()["type"] == "urn:hotpath:error:scope-missing"
    anon = await api.post(f"/v1/{A}/index", json=body)
    assert anon.status_code == 401 and anon.headers["content-type"] == PROBLEM
    bad_tenant = await api.post("/v1/bad%20tenant/index", headers=token(tenants=("*",)), json=body)
    assert bad_tenant.status_code == 422
    assert await depth(redis, key_prefix) == 0


async def test_an_edit_is_never_a_duplicate_a_replay_always_is(api):
    body = {"events": [up("m1", 1, "a"), up("m1", 1, "a"), {"op": "delete", "message_id": "m1", "version": 1}]}
    res = await api.post(f"/v1/{A}/index", headers=token(), json=body)
    assert res.json() == {"accepted": 2, "duplicates": 1}  # the upsert twice in one request; its delete is new
    res = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up("m1", 2, "b"), up("m1", 1, "a")]})
    assert res.json() == {"accepted": 1, "duplicates": 1}
    res = await api.post(f"/v1/{B}/index", headers=token(), json={"events": [up("m1", 1, "a")]})
    assert res.json() == {"accepted": 1, "duplicates": 0}  # another tenant's m1
    room = {"events": [{"op": "delete_room", "room_id": "r1", "version": 4}, {"op": "delete_room", "room_id": "r1"}]}
    assert (await api.post(f"/v1/{A}/index", headers=token(), json=room)).json() == {"accepted": 2, "duplicates": 0}
    again = await api.post(f"/v1/{A}/index", headers=token(), json=room)
    assert again.json() == {"accepted": 1, "duplicates": 1}  # without a version a room deletion is never deduplicated


async def test_over_the_watermark_the_whole_request_is_refused_with_retry_after(api, redis, key_prefix):
    # high 30, low 10, no worker: 25 fit; 10 more would pass the high watermark, so none of them is enqueued.
    first = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up(f"a{i}", 1, "x") for i in range(25)]})
    assert first.json() == {"accepted": 25, "duplicates": 0}
    res = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up(f"b{i}", 1, "x") for i in range(10)]})
    assert res.status_code == 429 and res.headers["content-type"] == PROBLEM
    body = res.json()
    assert body["type"] == "urn:hotpath:error:queue-full" and body["queue"] == "index"
    assert int(res.headers["retry-after"]) >= 1 and body["retry_after_s"] > 0
    assert await depth(redis, key_prefix) == 25
    small = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up(f"c{i}", 1, "x") for i in range(5)]})
    assert small.status_code == 202  # too big was refused without closing the queue; this one fits whole
    assert await depth(redis, key_prefix) == 30
    metrics = (await api.get("/metrics")).text
    assert 'taskkit_backpressure_rejections_total{queue="index"}' in metrics


async def test_the_producer_function_validates_the_same_shape(redis, key_prefix):
    producer = Producer(redis, prefix=key_prefix)
    with pytest.raises(pydantic.ValidationError, match="text"):
        await enqueue_index_events(producer, A, [{"op": "upsert", "room_id": "r", "message_id": "m", "version": 1}])
    with pytest.raises(ValueError, match="tenant"):
        await enqueue_index_events(producer, "bad tenant", [up("m1", 1, "x")])
    with pytest.raises(pydantic.ValidationError, match="dimensions"):
        await enqueue_index_events(producer, A, [up("m1", 1, "x", vector=[1.0])], dim=DIM)
    assert await depth(redis, key_prefix) == 0
    done = await enqueue_index_events(producer, A, [up("m1", 1, "x"), up("m1", 1, "x")])
    assert (done.accepted, done.duplicates) == (1, 1)
    full = Producer(redis, prefix=key_prefix, watermarks=__import__("taskkit").Watermarks(high=2, low=1))
    with pytest.raises(QueueFull):
        await enqueue_index_events(full, A, [up(f"n{i}", 1, "x") for i in range(2)])


async def test_queue_redis_down_is_a_503_naming_the_queue(redis_url, key_prefix, milvus_uri):
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    app = build_api(api_settings(redis_url, key_prefix, milvus_uri, collection_name()), origin=FakeOrigin(), queue_redis=dead)
    async with running(app) as api:
        res = await api.post(f"/v1/{A}/index", headers=token(), json={"events": [up("m1", 1, "x")]})
    await dead.aclose()
    assert res.status_code == 503 and res.headers["content-type"] == PROBLEM, res.text
    body = res.json()
    assert (body["type"], body["dependency"], body["queue"]) == ("urn:hotpath:error:dependency-unavailable", "queue", "index")
    assert "nothing was enqueued" in body["detail"]


async def test_search_with_milvus_down_is_a_503_naming_milvus(redis_url, key_prefix):
    settings = api_settings(redis_url, key_prefix, f"http://127.0.0.1:{free_port()}", collection_name(),
                            milvus_timeout_s=1)
    app = build_api(settings, origin=FakeOrigin())
    async with running(app) as api:
        res = await api.get(f"/v1/{A}/search", params={"q": "hello"}, headers=token())
        assert res.status_code == 503 and res.headers["content-type"] == PROBLEM, res.text
        assert (res.json()["type"], res.json()["dependency"]) == ("urn:hotpath:error:dependency-unavailable", "milvus")
        bad = await api.get(f"/v1/{A}/search", params={"q": "", "limit": 0}, headers=token())
        assert bad.status_code == 422 and {tuple(e["loc"]) for e in bad.json()["errors"]} == {("query", "q"), ("query", "limit")}


async def test_the_search_embedder_is_built_on_the_first_search_only(redis_url, key_prefix, milvus_uri):
    settings = api_settings(redis_url, key_prefix, milvus_uri, collection_name())
    app = build_api(settings, origin=FakeOrigin())
    async with running(app) as api:
        assert (await api.get("/livez")).status_code == 200
        assert app.state.searcher.embedder is None and app.state.searcher.store is None
        res = await api.get(f"/v1/{A}/search", params={"q": "hello"}, headers=token())
        assert (res.status_code, res.json()) == (200, {"hits": []})
        assert app.state.searcher.embedder is not None
        await app.state.searcher.store.drop_collection()
