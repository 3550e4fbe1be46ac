"""Issue 8 end to end: events posted to the composed API (or enqueued with the producer function) are indexed by
real `hotpath worker index` processes in Milvus Lite, and found by the search route and `hotpath search`.

Upsert, edit, delete, delete_room; two tenants with the same message ids; the whole event log replayed shuffled
with duplicates on two workers at once; a poison event dead-lettered alone; the worker's /metrics.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from cacheman.auth import mint_token
from hotpath.api import build_api
from hotpath.settings import ApiSettings
from index_worker.intake import enqueue_index_events
from taskkit import Inspector, Producer
from tests.cacheman.conftest import running
from tests.index_worker.harness import (
    BIN,
    DIM,
    SECRET,
    collection_name,
    enqueue_raw,
    queue_idle,
    rows,
    store_for,
    until,
    worker_env,
    workers,
)
from tests.index_worker.replay import event_log, shuffled_with_duplicates
from tests.services import free_port

A, B = "acme", "globex"


def token(tenants=(A, B), scope="cache:read index:write") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=list(tenants), scope=scope,
                                                    ttl_s=600)}


def up(mid: str, version: int, text: str, room: str = "r1", **kw) -> dict:
    return {"op": "upsert", "room_id": room, "message_id": mid, "version": version, "text": text, "sender": "u1",
            "created_at": "2026-11-26T12:00:00Z", **kw}


@pytest.fixture
def collection():
    return collection_name()


@pytest.fixture
async def store(milvus_uri, collection):
    s = store_for(milvus_uri, collection)
    yield s
    try:
        await s.drop_collection()
    finally:
        await s.close()


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def api_settings(redis_url, key_prefix, milvus_uri, collection, **kw) -> ApiSettings:
    return ApiSettings(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), taskkit_prefix=key_prefix,
                       jwt_keys={"t1": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000,
                       milvus_uri=milvus_uri, milvus_collection=collection, embedder="hash", embedder_dim=DIM,
                       index_text_max_bytes=2000, **kw)


@pytest.fixture
async def api(redis_url, key_prefix, milvus_uri, collection):
    from tests.cacheman.cache_fakes import FakeOrigin

    app = build_api(api_settings(redis_url, key_prefix, milvus_uri, collection), origin=FakeOrigin())
    async with running(app) as client:
        client.app = app
        yield client


async def test_upsert_edit_delete_and_tenant_isolation_through_the_worker(api, store, redis, redis_url, key_prefix,
                                                                          milvus_uri, collection, tmp_path):
    env = worker_env(redis_url, key_prefix, milvus_uri, collection, HOTPATH_INDEX_METRICS_PORT=free_port())
    first = {"events": [up("m1", 1, "the deploy is done"), up("m2", 1, "lunch at noon"),
                        up("m3", 1, "old room chatter", room="r9")]}
    for tenant in (A, B):  # the same message ids in both tenants
        res = await api.post(f"/v1/{tenant}/index", headers=token(), json=first)
        assert (res.status_code, res.json()) == (202, {"accepted": 3, "duplicates": 0}), res.text
    again = await api.post(f"/v1/{A}/index", headers=token(), json=first)
    assert again.json() == {"accepted": 0, "duplicates": 3}  # a replay of the same versions
    edits = {"events": [up("m1", 2, "the deploy is rolled back"), {"op": "delete", "message_id": "m2", "version": 2},
                        up("m2", 1, "lunch at noon"), {"op": "delete_room", "room_id": "r9"}]}
    res = await api.post(f"/v1/{A}/index", headers=token(), json=edits)
    assert res.json() == {"accepted": 3, "duplicates": 1}  # the edit and the delete are new versions, not duplicates

    async with workers(1, env, tmp_path) as [worker]:
        await until(lambda: queue_idle(redis, key_prefix), 60, "index queue drained")
        got_a = await rows(store, A, ["m1", "m2", "m3"])
        assert {m: (r["version"], r["text"], r["model"]) for m, r in got_a.items()} == {
            "m1": (2, "the deploy is rolled back", "hash@1")}
        got_b = await rows(store, B, ["m1", "m2", "m3"])
        assert {m: (r["version"], r["text"]) for m, r in got_b.items()} == {
            "m1": (1, "the deploy is done"), "m2": (1, "lunch at noon"), "m3": (1, "old room chatter")}
        assert (await store.count(A), await store.count(B)) == (1, 3)

        # Search: tenant A's only, with score, room, sender and time.
        res = await api.get(f"/v1/{A}/search", params={"q": "deploy done", "limit": 10}, headers=token())
        assert res.status_code == 200, res.text
        hits = res.json()["hits"]
        assert [(h["message_id"], h["version"], h["room_id"], h["sender"], h["created_at"]) for h in hits] == [
            ("m1", 2, "r1", "u1", "2026-11-26T12:00:00.000Z")]
        assert 0 < hits[0]["score"] <= 1.0001
        res = await api.get(f"/v1/{B}/search", params={"q": "lunch", "room": "r1"}, headers=token())
        assert {h["message_id"] for h in res.json()["hits"]} == {"m1", "m2"}  # room r9 excluded
        res = await api.get(f"/v1/{B}/search", params={"q": "lunch"}, headers=token(tenants=(A,)))
        assert res.status_code == 403 and res.json()["type"] == "urn:hotpath:error:tenant-forbidden"

        # A message indexed a moment ago is found, by the CLI too.
        res = await api.post(f"/v1/{B}/index", headers=token(), json={"events": [up("m9", 1, "fresh kiwi news")]})
        assert res.status_code == 202

        async def found():
            r = await api.get(f"/v1/{B}/search", params={"q": "kiwi"}, headers=token())
            return r.json()["hits"] and r.json()["hits"][0]["message_id"] == "m9"

        await until(found, 20, "a fresh message is searchable")
        cli_env = {k: v for k, v in env.items() if k != "HOTPATH_INDEX_METRICS_PORT"}
        cli = subprocess.run([str(BIN / "hotpath"), "search", "--tenant", B, "kiwi", "--json", "--limit", "2"],
                             env=cli_env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        out = json.loads(cli.stdout)
        assert out["hits"][0]["message_id"] == "m9" and len(out["hits"]) == 2
        table = subprocess.run([str(BIN / "hotpath"), "search", "--tenant", A, "deploy"], env=cli_env,
                               capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "rolled back" in table.stdout and "globex" not in table.stdout

        # The worker's own /metrics: the index counters and taskkit's `index` queue series.
        text = httpx.get(f"http://127.0.0.1:{env['HOTPATH_INDEX_METRICS_PORT']}/metrics", timeout=5).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        # A: m1 v2 (v1 too, unless one batch held both); B: m1 m2 m3 m9.
        assert samples[("hotpath_index_events_total", (("outcome", "indexed"),))] >= 5
        assert samples[("hotpath_index_events_total", (("outcome", "deleted"),))] == 1
        for name in ("hotpath_index_embed_seconds_bucket", "hotpath_index_milvus_seconds_bucket",
                     'taskkit_batch_size_count{batcher="index"}', 'taskkit_jobs_completed_total{queue="index"',
                     "hotpath_index_batch_events_count", 'hotpath_index_events_total{outcome="room_deleted"} 1.0'):
            assert name in text, name
    assert "Traceback" not in worker.text()


async def test_replay_shuffled_with_duplicates_on_two_workers(store, redis, redis_url, key_prefix, milvus_uri,
                                                             collection, tmp_path):
    tenants = [A, B]
    log, final = event_log(tenants, messages=60, seed=11)
    events = shuffled_with_duplicates(log, seed=12)
    env = worker_env(redis_url, key_prefix, milvus_uri, collection)
    async with workers(2, env, tmp_path) as procs:
        half = len(events) // 2
        await enqueue_raw(redis, key_prefix, events[:half])
        await enqueue_raw(redis, key_prefix, events[half:])  # while the first half is being indexed
        await until(lambda: queue_idle(redis, key_prefix), 90, "replay drained")
    assert await store.count() == len(final)
    for tenant in tenants:
        want = {mid: ev for (t, mid), ev in final.items() if t == tenant}
        got = await rows(store, tenant, list(want))
        assert {m: (r["version"], r["text"]) for m, r in got.items()} == {m: (e.version, e.text) for m, e in want.items()}
    assert await Inspector(redis, prefix=key_prefix).count("dead") == 0
    done = [json.loads(line) for p in procs for line in p.text().splitlines() if line.startswith("{")]
    assert not [d for d in done if d["level"] == "ERROR"], [d for d in done if d["level"] == "ERROR"][:3]


async def test_poison_vector_is_dead_lettered_alone_the_rest_indexed(store, redis, redis_url, key_prefix, milvus_uri,
                                                                    collection, tmp_path):
    producer = Producer(redis, prefix=key_prefix)
    events = [up(f"m{i}", 1, f"message number {i}") for i in range(20)]
    events[7] = up("m7", 1, "wrong dimension", vector=[0.5] * (DIM + 1))
    done = await enqueue_index_events(producer, A, events, text_max_bytes=2000)  # dim unchecked: the worker checks
    assert (done.accepted, done.duplicates) == (20, 0)
    env = worker_env(redis_url, key_prefix, milvus_uri, collection)
    async with workers(1, env, tmp_path):
        await until(lambda: queue_idle(redis, key_prefix), 60, "queue drained")
        inspector = Inspector(redis, prefix=key_prefix)
        dead = await until(lambda: inspector.list("dead"), 10, "the poison event dead-lettered")
    assert len(dead) == 1
    [rec] = dead
    assert rec.args[0]["message_id"] == "m7" and rec.error_kind == "permanent" and rec.attempts == 1
    assert "m7" in rec.message and f"vector has {DIM + 1} dimensions, the index has {DIM}" in rec.message, rec.message
    assert await store.count(A) == 19
    assert "m7" not in await rows(store, A, [f"m{i}" for i in range(20)])
