"""The index worker under faults, as real processes: Milvus stopped mid-run (the retry queue fills with growing
delays, nothing is lost, a restart indexes everything), Milvus hung (SIGSTOP: calls time out, jobs retry), the
worker SIGKILLed mid-batch (restarted: the collection holds exactly the last version of each live message), and
intake faster than the worker (429 + Retry-After, depth bounded, everything accepted indexed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict

import pytest
from redis.asyncio import Redis

from hotpath.api import build_api
from index_worker.intake import enqueue_index_events
from taskkit import Inspector, Keys, Producer
from taskkit.retry import RetryPolicy
from tests.cacheman.cache_fakes import FakeOrigin
from tests.cacheman.conftest import running
from tests.index_worker.harness import (
    Worker,
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
from tests.index_worker.test_pipeline import A, api_settings, token, up


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def events(prefix: str, n: int) -> list[dict]:
    return [up(f"{prefix}{i}", 1, f"message {prefix} {i}") for i in range(n)]


async def count(store, tenant: str = A) -> int:
    try:
        return await store.count(tenant)
    except Exception:  # Milvus restarting: not yet
        return -1


async def test_milvus_down_mid_run_retries_with_growing_delays_and_loses_nothing(own_milvus, redis, redis_url,
                                                                                  key_prefix, tmp_path):
    collection = collection_name()
    env = worker_env(redis_url, key_prefix, own_milvus.uri, collection)
    policy = RetryPolicy(base_s=float(env["HOTPATH_INDEX_BACKOFF_BASE_S"]), cap_s=float(env["HOTPATH_INDEX_BACKOFF_CAP_S"]))
    producer = Producer(redis, prefix=key_prefix)
    store = store_for(own_milvus.uri, collection, timeout_s=2)
    inspector = Inspector(redis, prefix=key_prefix)
    try:
        async with workers(1, env, tmp_path) as [worker]:
            await enqueue_index_events(producer, A, events("a", 60))
            await until(lambda: _eq(count(store), 60), 30, "first part indexed")
            own_milvus.stop()
            await enqueue_index_events(producer, A, events("b", 60))
            delays: dict[int, list[float]] = defaultdict(list)
            seen: set[tuple[str, int]] = set()
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and max(delays, default=0) < 4:
                for rec in await inspector.list("retry"):
                    if (rec.job_id, rec.attempts) not in seen and rec.next_run_ms:
                        seen.add((rec.job_id, rec.attempts))
                        delays[rec.attempts].append((rec.next_run_ms - rec.last_failed_ms) / 1000)
                        assert rec.error_type == "MilvusTransient", (rec.error_type, rec.message)
                await asyncio.sleep(0.2)
            assert max(delays) >= 4, dict(delays)
            assert await inspector.count("dead") == 0  # transient: retried, never dead-lettered
            for attempt, ds in delays.items():  # full jitter under a ceiling that doubles per attempt
                assert all(0 <= d <= policy.ceiling(attempt) + 0.01 for d in ds), (attempt, ds)
            late = [d for a, ds in delays.items() if a >= 3 for d in ds]
            assert max(late) > max(delays[1]), dict(delays)  # the delays grow
            own_milvus.start()  # same port and data dir: the collection comes back NotLoad and is reloaded
            await until(lambda: _eq(count(store), 120), 90, "everything indexed after the restart")
            await until(lambda: queue_idle(redis, key_prefix), 30, "queue drained")
            assert await inspector.count("dead") == 0
        got = await rows(store, A, [f"b{i}" for i in range(60)])
        assert len(got) == 60 and all(r["version"] == 1 for r in got.values())
        assert "Traceback" not in worker.text()  # pymilvus's own error logs are one line, without traceback
    finally:
        await store.close()


async def test_milvus_hung_calls_time_out_and_jobs_retry(own_milvus, redis, redis_url, key_prefix, tmp_path):
    collection = collection_name()
    env = worker_env(redis_url, key_prefix, own_milvus.uri, collection)
    producer = Producer(redis, prefix=key_prefix)
    store = store_for(own_milvus.uri, collection, timeout_s=2)
    inspector = Inspector(redis, prefix=key_prefix)
    try:
        async with workers(1, env, tmp_path):
            await enqueue_index_events(producer, A, events("a", 30))
            await until(lambda: _eq(count(store), 30), 30, "first part indexed")
            os.kill(own_milvus.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                await enqueue_index_events(producer, A, events("b", 30))
                retried = await until(lambda: inspector.list("retry"), 30, "jobs in the retry queue")
                # Each call is bounded (1 s deadline, at most 2 × 1 + 1 s by the store): a batch fails, not hangs.
                assert time.monotonic() - started < 20
                # The batch's quick retries meet the leases its timed-out write keeps (that write may still land):
                # Busy, transient, naming the timeout; or the timeout itself.
                assert {r.error_type for r in retried} <= {"MilvusTransient", "Busy"}, [r.message for r in retried]
                assert all("DEADLINE_EXCEEDED" in r.message for r in retried), [r.message for r in retried]
            finally:
                os.kill(own_milvus.proc.pid, signal.SIGCONT)
            await until(lambda: _eq(count(store), 60), 90, "everything indexed after SIGCONT")
            await until(lambda: queue_idle(redis, key_prefix), 30, "queue drained")
            assert await inspector.count("dead") == 0
    finally:
        await store.close()


async def test_worker_killed_mid_batch_then_restarted_indexes_each_live_message_once(redis, redis_url, key_prefix,
                                                                                     milvus_uri, tmp_path):
    collection = collection_name()
    # A short task timeout: ARQ re-runs a killed job once its in-progress key expires (timeout + 1 + 10 s).
    env = worker_env(redis_url, key_prefix, milvus_uri, collection, HOTPATH_INDEX_TASK_TIMEOUT_S=3)
    tenants = [A, "globex"]
    log, final = event_log(tenants, messages=400, seed=21)
    store = store_for(milvus_uri, collection)
    try:
        await enqueue_raw(redis, key_prefix, shuffled_with_duplicates(log, seed=22))
        first = await Worker(env, tmp_path / "first.log").start().ready()
        await until(lambda: _gt(store.count(), 0), 30, "indexing under way", every=0.02)
        first.kill()  # SIGKILL, mid-run: jobs in flight, a batch half written
        indexed_at_kill = await store.count()
        assert indexed_at_kill < len(final), "the worker finished before the kill: give it more events"
        async with workers(1, env, tmp_path):
            await until(lambda: queue_idle(redis, key_prefix), 120, "every job done after the restart")
        assert await store.count() == len(final)
        for tenant in tenants:
            want = {mid: ev for (t, mid), ev in final.items() if t == tenant}
            got = await rows(store, tenant, list(want))
            assert {m: (r["version"], r["text"]) for m, r in got.items()} == {m: (e.version, e.text) for m, e in want.items()}
        assert await Inspector(redis, prefix=key_prefix).count("dead") == 0
    finally:
        await store.drop_collection()
        await store.close()


async def test_intake_faster_than_the_worker_is_refused_with_429_and_nothing_accepted_is_lost(
        redis, redis_url, key_prefix, milvus_uri, tmp_path):
    collection = collection_name()
    high, low = 40, 15
    env = worker_env(redis_url, key_prefix, milvus_uri, collection, HOTPATH_INDEX_CONCURRENCY=8)
    app = build_api(api_settings(redis_url, key_prefix, milvus_uri, collection, index_queue_high=high,
                                 index_queue_low=low), origin=FakeOrigin())
    store = store_for(milvus_uri, collection)
    queue_key = Keys(key_prefix).arq_queue("index")
    accepted, refused, depths, n = 0, [], [], 0
    try:
        async with workers(1, env, tmp_path), running(app) as api:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (len(refused) < 20 or accepted < 3 * high):
                batch = {"events": [up(f"m{n + i}", 1, f"message {n + i}") for i in range(8)]}
                res = await api.post(f"/v1/{A}/index", headers=token(), json=batch)
                if res.status_code == 202:
                    assert res.json() == {"accepted": 8, "duplicates": 0}
                    accepted += 8
                    n += 8
                else:
                    assert res.status_code == 429 and res.json()["type"] == "urn:hotpath:error:queue-full", res.text
                    refused.append(int(res.headers["retry-after"]))
                depths.append(await redis.zcard(queue_key))
            assert len(refused) >= 20 and accepted >= 3 * high, (len(refused), accepted)  # both happened
            assert all(ra >= 1 for ra in refused)
            assert max(depths) <= high  # admitted only whole and under the high watermark
            await until(lambda: _eq(store.count(A), accepted), 60, "every accepted event indexed")
            await until(lambda: queue_idle(redis, key_prefix), 30, "queue drained")
        got = await rows(store, A, [f"m{i}" for i in range(accepted)])
        assert len(got) == accepted
    finally:
        await store.drop_collection()
        await store.close()


async def _eq(coro, want: int) -> bool:
    return await coro == want


async def _gt(coro, floor: int) -> bool:
    return await coro > floor
