"""The storage-event intake of the composed API (`POST /v1/storage-events`) against real Redis: MinIO's documented
webhook body, URL-escaped keys, ignored events and buckets, the shared token (401 in the error contract), every
error status the route declares validated against the published Problem schema, and once end to end: a created
event → a job → a real worker process → thumbnails in moto."""

from __future__ import annotations

import copy
import io
from urllib.parse import quote_plus

import httpx
import pydantic
import pytest
from arq.jobs import Job
from fastapi.routing import APIRoute
from redis.asyncio import Redis

from hotpath.api import build_api
from hotpath.settings import ApiSettings
from taskkit import Keys, Producer, QueueFull, Watermarks
from tests.cacheman.cache_fakes import FakeOrigin
from tests.cacheman.conftest import running
from tests.cacheman.test_problems import Raising, check_problem
from tests.cacheman.test_routes import PUBLIC, all_routes
from tests.services import free_port
from thumb_worker.intake import EXAMPLE, PATH, enqueue_storage_events
from thumb_worker.producer import idempotency_key

from . import images
from .worker_proc import outcome, start_worker, stop_worker

TOKEN = "storage-webhook-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOADS = "uploads-intake"
MAX_BODY = 64 * 1024
# A key with a space, a slash, a plus sign and non-ASCII letters; MinIO escapes it as Go's url.QueryEscape does.
KEY = "photos/été 2026/café + 日本.jpg"


def minio_event(key: str = KEY, *, name: str = "s3:ObjectCreated:Put", bucket: str = UPLOADS,
                etag: str = "5fc7298143efe1276d39a3466d4e255f", size: int = 1843200) -> dict:
    """The body MinIO POSTs to a notify_webhook target (docs/bucket/notifications; the event struct of
    internal/event): one record, the key query-escaped, EventName and Key (bucket/escaped key) beside it."""
    body = copy.deepcopy(EXAMPLE)
    escaped = quote_plus(key, safe="")
    body["EventName"], body["Key"] = name, f"{bucket}/{escaped}"
    rec = body["Records"][0]
    rec["eventName"] = name
    rec["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    obj = rec["s3"]["object"]
    if name.startswith("s3:ObjectRemoved:"):  # MinIO sends no size, eTag or content type for a removal
        rec["s3"]["object"] = {"key": escaped, "sequencer": obj["sequencer"]}
    else:
        obj.update(key=escaped, eTag=etag, size=size)
    return body


def settings(redis_url: str, key_prefix: str, **kw) -> ApiSettings:
    base = dict(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), taskkit_prefix=key_prefix,
                jwt_keys={"t1": "intake-test-jwt-secret-0123456789-0123456789"}, embedder="hash", embedder_dim=8,
                uploads_bucket=UPLOADS, storage_webhook_token=TOKEN, max_body_bytes=MAX_BODY)
    return ApiSettings(**(base | kw))


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def api(redis_url, key_prefix):
    app = build_api(settings(redis_url, key_prefix, thumb_queue_high=5, thumb_queue_low=2), origin=FakeOrigin())
    async with running(app) as client:
        client.app = app
        yield client


async def depth(redis: Redis, prefix: str) -> int:
    return await redis.zcard(Keys(prefix).arq_queue("thumb"))


async def job_of(redis: Redis, prefix: str, bucket: str, key: str, etag: str):
    """The queued thumbnail job of (bucket, key, etag): its id is derived from the idempotency key."""
    keys = Keys(prefix)
    job_id = keys.idempotent_job_id("thumb", idempotency_key(bucket, key, etag))
    return job_id, await Job(job_id, redis, _queue_name=keys.arq_queue("thumb")).info()


async def test_a_created_object_with_an_escaped_key_is_one_job_and_a_replay_a_duplicate(api, redis, key_prefix):
    body = minio_event()
    assert "%C3%A9t%C3%A9+2026%2Fcaf%C3%A9+%2B+" in body["Records"][0]["s3"]["object"]["key"]  # escaped as MinIO does
    res = await api.post(PATH, headers=AUTH, json=body)
    assert (res.status_code, res.json()) == (202, {"accepted": 1, "duplicates": 0, "ignored": 0, "reasons": []})
    _, info = await job_of(redis, key_prefix, UPLOADS, KEY, "5fc7298143efe1276d39a3466d4e255f")
    assert (info.function, info.args) == ("thumbnail", (UPLOADS, KEY, "5fc7298143efe1276d39a3466d4e255f", None))
    again = await api.post(PATH, headers=AUTH, json=body)
    assert again.json() == {"accepted": 0, "duplicates": 1, "ignored": 0, "reasons": []}
    quoted = minio_event(etag='"5fc7298143efe1276d39a3466d4e255f"')  # the same ETag in quotes: the same version
    assert (await api.post(PATH, headers=AUTH, json=quoted)).json()["duplicates"] == 1
    changed = await api.post(PATH, headers=AUTH, json=minio_event(etag="0123456789abcdef0123456789abcdef"))
    assert changed.json()["accepted"] == 1  # a new version of the object: a new job
    assert await depth(redis, key_prefix) == 2


async def test_other_events_and_buckets_are_acknowledged_and_ignored(api, redis, key_prefix):
    body = minio_event(name="s3:ObjectAccessed:Get")
    body["Records"] += minio_event(bucket="thumbnails")["Records"] + minio_event(name="s3:Replication:OperationFailed")["Records"]
    res = await api.post(PATH, headers=AUTH, json=body)
    assert res.status_code == 202, res.text
    out = res.json()
    assert (out["accepted"], out["duplicates"], out["ignored"]) == (0, 0, 3)
    assert out["reasons"] == [
        "record 0: event s3:ObjectAccessed:Get is neither a creation nor a removal",
        f"record 1: bucket 'thumbnails' is not the uploads bucket {UPLOADS!r} (HOTPATH_UPLOADS_BUCKET)",
        "record 2: event s3:Replication:OperationFailed is neither a creation nor a removal",
    ]
    assert await depth(redis, key_prefix) == 0


async def test_a_removed_object_is_a_removal_job(api, redis, key_prefix):
    body = minio_event(name="s3:ObjectRemoved:Delete")
    body["Records"] += minio_event("other.png", name="s3:ObjectCreated:CompleteMultipartUpload")["Records"]
    res = await api.post(PATH, headers=AUTH, json=body)
    assert res.json() == {"accepted": 2, "duplicates": 0, "ignored": 0, "reasons": []}
    jobs = [await Job(j.decode(), redis, _queue_name=Keys(key_prefix).arq_queue("thumb")).info()
            for j in await redis.zrange(Keys(key_prefix).arq_queue("thumb"), 0, -1)]
    assert sorted((j.function, j.args[:2]) for j in jobs) == [("remove_thumbnails", (UPLOADS, KEY)),
                                                              ("thumbnail", (UPLOADS, "other.png"))]


@pytest.mark.parametrize(("headers", "says"), [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer not-the-token-0123456789"}, "not the storage webhook token"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "not the storage webhook token"),
    ({"Authorization": TOKEN}, "must be `Bearer <token>`"),
    ({"Authorization": f"Basic {TOKEN}"}, "must be `Bearer <token>`"),
], ids=["missing", "wrong", "longer", "no-scheme", "basic"])
async def test_a_bad_or_missing_token_is_a_401_problem_and_nothing_is_enqueued(api, redis, key_prefix, headers, says):
    spec = (await api.get("/openapi.json")).json()
    res = await api.post(PATH, headers=headers, json=minio_event())
    body = check_problem(spec, res, 401, PATH, "unauthorized")
    assert says in body["detail"] and TOKEN not in res.text
    assert res.headers["www-authenticate"].startswith('Bearer realm="hotpath"')
    assert await depth(redis, key_prefix) == 0


async def test_a_jwt_of_the_api_is_not_the_webhook_token(api, redis, key_prefix):
    from cacheman.auth import mint_token

    jwt = mint_token("intake-test-jwt-secret-0123456789-0123456789", kid="t1", sub="ops", tenants="*",
                     scope="cache:read cache:write index:write ops")
    res = await api.post(PATH, headers={"Authorization": f"Bearer {jwt}"}, json=minio_event())
    assert res.status_code == 401 and await depth(redis, key_prefix) == 0


async def test_without_a_configured_token_the_webhook_is_off(redis_url, key_prefix, redis):
    app = build_api(settings(redis_url, key_prefix, storage_webhook_token=""), origin=FakeOrigin())
    async with running(app) as api:
        res = await api.post(PATH, headers={"Authorization": "Bearer "}, json=minio_event())
        assert res.status_code == 401 and "HOTPATH_STORAGE_WEBHOOK_TOKEN" in res.json()["detail"]
        res = await api.post(PATH, headers=AUTH, json=minio_event())
        assert res.status_code == 401 and "webhook is off" in res.json()["detail"]
    assert await depth(redis, key_prefix) == 0
    with pytest.raises(pydantic.ValidationError, match="at least 16 characters"):
        settings(redis_url, key_prefix, storage_webhook_token="short")


BAD = [
    ("no records", {"EventName": "s3:ObjectCreated:Put"}, ["body", "Records"]),
    ("empty records", {"Records": []}, ["body", "Records"]),
    ("no key", {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": UPLOADS}, "object": {}}}]},
     ["body", "Records", 0, "s3", "object", "key"]),
    ("escapes not UTF-8", minio_event("x") | {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {
        "bucket": {"name": UPLOADS}, "object": {"key": "bad%FF.jpg", "eTag": "e"}}}]},
     ["body", "Records", 0, "s3", "object", "key"]),
    ("key over 1024 bytes", minio_event("é" * 513), ["body", "Records", 0, "s3", "object", "key"]),
    ("negative size", minio_event(size=-1), ["body", "Records", 0, "s3", "object", "size"]),
]


@pytest.mark.parametrize(("case", "body", "loc"), BAD, ids=[b[0] for b in BAD])
async def test_a_body_not_in_minio_shape_is_a_422_problem(api, redis, key_prefix, case, body, loc):
    spec = (await api.get("/openapi.json")).json()
    res = await api.post(PATH, headers=AUTH, json=body)
    problem = check_problem(spec, res, 422, PATH, "validation-failed")
    assert [e["loc"] for e in problem["errors"]] == [loc], problem["errors"]
    assert await depth(redis, key_prefix) == 0


async def test_over_the_high_watermark_the_request_is_refused_with_retry_after(api, redis, key_prefix):
    body = minio_event("a.jpg")
    body["Records"] += [minio_event(f"{k}.jpg")["Records"][0] for k in "bcd"]
    assert (await api.post(PATH, headers=AUTH, json=body)).json()["accepted"] == 4  # high 5
    spec = (await api.get("/openapi.json")).json()
    two = minio_event("e.jpg")
    two["Records"] += minio_event("f.jpg")["Records"]
    res = await api.post(PATH, headers=AUTH, json=two)
    problem = check_problem(spec, res, 429, PATH, "queue-full")
    assert problem["queue"] == "thumb" and problem["retry_after_s"] > 0
    assert await depth(redis, key_prefix) == 4  # nothing of the refused request was enqueued
    many = minio_event("g0.jpg")
    many["Records"] = [minio_event(f"g{i}.jpg")["Records"][0] for i in range(6)]  # more than high could ever hold
    res = await api.post(PATH, headers=AUTH, json=many)
    problem = check_problem(spec, res, 422, PATH, "validation-failed")
    assert "HOTPATH_THUMB_QUEUE_HIGH" in problem["detail"]


async def test_the_route_answers_every_error_it_declares_with_the_published_problem_schema(redis_url, key_prefix):
    """The route × status walk of tests/cacheman/test_problems.py, for this route (it walks create_app's routes,
    and this one has no {tenant}: it is authenticated by the webhook token, not a JWT)."""
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    app = build_api(settings(redis_url, key_prefix, thumb_queue_high=2, thumb_queue_low=1), origin=FakeOrigin())
    async with running(app) as api:
        spec = (await api.get("/openapi.json")).json()
        declared = sorted(int(s) for s in spec["paths"][PATH]["post"]["responses"] if int(s) >= 400)
        assert declared == [401, 413, 422, 429, 500, 503]
        state = app.state
        checked = []
        for status in declared:
            if status == 401:
                res, kind = await api.post(PATH, json=minio_event()), "unauthorized"
            elif status == 413:
                big = b'{"Records": ["' + b"x" * MAX_BODY + b'"]}'
                res = await api.post(PATH, headers=AUTH | {"content-type": "application/json"}, content=big)
                kind = "payload-too-large"
            elif status == 422:
                res, kind = await api.post(PATH, headers=AUTH, json={}), "validation-failed"
            elif status == 429:
                full = minio_event("q0.jpg")
                full["Records"] += minio_event("q1.jpg")["Records"]
                assert (await api.post(PATH, headers=AUTH, json=full)).status_code == 202
                res, kind = await api.post(PATH, headers=AUTH, json=minio_event("q2.jpg")), "queue-full"
            else:
                saved = state.thumb_producer
                state.thumb_producer = (Raising(RuntimeError("a bug"), awaited=True) if status == 500
                                        else Producer(dead, prefix=key_prefix))
                try:
                    res = await api.post(PATH, headers=AUTH, json=minio_event("r.jpg"))
                finally:
                    state.thumb_producer = saved
                kind = "internal" if status == 500 else "dependency-unavailable"
            problem = check_problem(spec, res, status, PATH, kind)
            if status == 503:
                assert (problem["dependency"], problem["queue"]) == ("queue", "thumb")
            checked.append(status)
    await dead.aclose()
    assert checked == declared


def test_every_api_route_outside_the_tenant_walk_is_this_one():
    """The cross-tenant walk (tests/cacheman/test_routes.py) covers routes under /v1/{tenant}; the only other
    non-public route of the composed API is the webhook, whose auth is tested above."""
    app = build_api(ApiSettings(jwt_keys={"t1": "x" * 40}, embedder="hash", embedder_dim=8))
    others = [r.path for r in all_routes(app.routes) if r.path not in PUBLIC and "{tenant}" not in r.path]
    assert others == [PATH]
    route = next(r for r in all_routes(app.routes) if r.path == PATH)
    assert isinstance(route, APIRoute) and route.methods == {"POST"}


async def test_the_producer_function_takes_the_same_body(redis, key_prefix):
    producer = Producer(redis, prefix=key_prefix)
    with pytest.raises(pydantic.ValidationError, match="Records"):
        await enqueue_storage_events(producer, {"Key": "x"}, UPLOADS)
    done = await enqueue_storage_events(producer, minio_event(), UPLOADS)
    assert (done.accepted, done.duplicates, done.ignored) == (1, 0, 0)
    other = await enqueue_storage_events(producer, minio_event(), "another-bucket")
    assert (other.accepted, other.ignored) == (0, 1)
    full = Producer(redis, prefix=key_prefix, watermarks=Watermarks(high=2, low=1))
    await enqueue_storage_events(full, minio_event("x.jpg"), UPLOADS)
    with pytest.raises(QueueFull):
        await enqueue_storage_events(full, minio_event("y.jpg"), UPLOADS)


@pytest.mark.timeout(120)
async def test_a_created_event_becomes_thumbnails_end_to_end(s3, s3_endpoint, buckets, redis, redis_url, key_prefix,
                                                             tmp_path):
    up, th = buckets
    data = images.jpeg_with_orientation(images.photo(1200, 800), 6)
    etag = s3.put_object(up, KEY, io.BytesIO(data), len(data), content_type="image/jpeg").etag
    app = build_api(settings(redis_url, key_prefix, uploads_bucket=up), origin=FakeOrigin())
    async with running(app) as api:
        res = await api.post(PATH, headers=AUTH, json=minio_event(bucket=up, etag=etag, size=len(data)))
    assert res.json()["accepted"] == 1, res.text
    job_id, _ = await job_of(redis, key_prefix, up, KEY, etag)
    metrics_port = free_port()
    proc = start_worker(redis_url, key_prefix, s3_endpoint, buckets, tmp_path / "w.log", thumb_metrics_port=metrics_port)
    try:
        status, result = await outcome(redis, key_prefix, job_id, timeout=90)
        async with httpx.AsyncClient() as client:  # the worker's own /metrics (HOTPATH_THUMB_METRICS_PORT)
            scraped = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        assert await stop_worker(proc) == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert status == "ok" and result["status"] == "made", result
    sizes = {t["key"]: (t["width"], t["height"]) for t in result["thumbnails"]}
    assert sizes == {f"{KEY}/64.webp": (43, 64), f"{KEY}/256.webp": (171, 256), f"{KEY}/1024.webp": (683, 1024)}
    assert sorted(o.object_name for o in s3.list_objects(th, recursive=True)) == sorted(sizes)
    for line in ('hotpath_thumbnails_made_total{size="64"} 1.0', 'hotpath_thumbnail_sources_total{outcome="made"} 1.0',
                 'taskkit_jobs_completed_total{queue="thumb",task="thumbnail"} 1.0'):
        assert line in scraped, line
    assert 'hotpath_thumbnail_pipeline_seconds_count{stage="total"} 1.0' in scraped
