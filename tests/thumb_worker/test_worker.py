"""Through a real `hotpath worker thumb` process: hostile sources dead-lettered at once with their reason
while the worker goes on serving; S3 hung mid-job → retried, then done; memory flat across 200 mixed jobs."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import pytest
from redis.asyncio import Redis

from taskkit import Inspector, Producer
from tests.services import S3Server
from thumb_worker.producer import enqueue_thumbnail
from thumb_worker.storage import make_minio

from . import images
from .worker_proc import outcome, rss_kb, start_worker, stop_worker, tree

pytestmark = pytest.mark.timeout(120)


def put(s3, bucket: str, key: str, data: bytes) -> str:
    return s3.put_object(bucket, key, io.BytesIO(data), len(data)).etag


@pytest.fixture
async def redis(redis_url):
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


async def test_hostile_sources_are_dead_lettered_once_with_their_reason(s3, s3_endpoint, buckets, redis, redis_url,
                                                                        key_prefix, tmp_path):
    up, th = buckets
    hostile = {
        "bomb.png": (images.png_declaring(30000, 30000), "30000×30000 = 900 MP, limit 50 MP (HOTPATH_THUMB_MAX_PIXELS)"),
        "truncated.jpg": (images.photo(800, 600).jpegsave_buffer()[:5000], "corrupt or truncated"),
        "notes.jpg": (b"just some text, named like a photo\n" * 10, "not an image"),
        "logo.svg": (images.SVG, "SVG is not an allowed format"),
        "empty.jpg": (b"", "empty (zero-byte)"),
        "anim.gif": (images.animated_gif(800, 700, 100), "800×700 × 100 frames = 56 MP, limit 50 MP"),
        "huge.jpg": (b"\xff\xd8\xff" + os.urandom(2_100_000), "limit 2.0 MB (2000000 bytes) (HOTPATH_THUMB_MAX_BYTES)"),
    }
    order = ["first.jpg", *hostile, "last.jpg"]
    etags = {k: put(s3, up, k, images.photo(500, 400).jpegsave_buffer()) for k in ("first.jpg", "last.jpg")}
    etags |= {k: put(s3, up, k, data) for k, (data, _) in hostile.items()}
    proc = start_worker(redis_url, key_prefix, s3_endpoint, buckets, tmp_path / "w.log", thumb_max_bytes=2_000_000,
                        thumb_concurrency=2)
    producer = Producer(redis, prefix=key_prefix)
    try:
        ids = {k: (await enqueue_thumbnail(producer, up, k, etags[k])).job_id for k in order}
        results = {k: await outcome(redis, key_prefix, ids[k]) for k in order}
    finally:
        assert await stop_worker(proc) == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert results["first.jpg"][0] == "ok" and results["first.jpg"][1]["status"] == "made"
    assert results["last.jpg"][0] == "ok" and results["last.jpg"][1]["status"] == "made"  # still serving
    ops = Inspector(redis, prefix=key_prefix)
    dead = {r.args[1]: r for r in await ops.list("dead")}
    assert sorted(dead) == sorted(hostile)
    for key, (_, reason) in hostile.items():
        rec = dead[key]
        assert rec.attempts == 1 and rec.error_kind == "permanent" and rec.error_type == "Rejected", rec
        assert reason in rec.message, (key, rec.message)
        assert results[key][0] == "failed"
    assert await ops.list("retry") == []  # nothing was retried
    made = sorted(o.object_name for o in s3.list_objects(th, recursive=True))
    assert made == sorted(f"{k}/{s}.webp" for k in ("first.jpg", "last.jpg") for s in (64, 256, 1024))


async def test_s3_hung_mid_job_is_retried_then_done(redis, redis_url, key_prefix, tmp_path):
    server = S3Server().start()
    try:
        s3 = make_minio(server.endpoint, "minioadmin", "minioadmin")
        pair = ("up-fault", "th-fault")
        for b in pair:
            s3.make_bucket(b)
        etag = put(s3, pair[0], "p.jpg", images.photo(640, 480).jpegsave_buffer())
        proc = start_worker(redis_url, key_prefix, server.endpoint, pair, tmp_path / "w.log", thumb_s3_timeout_s=1)
        producer = Producer(redis, prefix=key_prefix)
        ops = Inspector(redis, prefix=key_prefix)
        try:
            warm = await enqueue_thumbnail(producer, pair[0], "p.jpg", etag)  # the worker is up and serving
            assert (await outcome(redis, key_prefix, warm.job_id))[1]["status"] == "made"
            for size in (64, 256, 1024):
                s3.remove_object(pair[1], f"p.jpg/{size}.webp")
            os.kill(server.proc.pid, signal.SIGSTOP)  # hung: connections accepted, never answered
            try:
                job = await producer.enqueue("thumbnail", pair[0], "p.jpg", etag, _queue="thumb",
                                             _idempotency_key="after-fault")
                deadline = time.monotonic() + 30
                while not (retrying := await ops.list("retry")):
                    assert time.monotonic() < deadline, (tmp_path / "w.log").read_text()[-3000:]
                    await asyncio.sleep(0.2)
                assert retrying[0].error_kind == "transient" and "unavailable" in retrying[0].message
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            status, result = await outcome(redis, key_prefix, job.job_id, timeout=60)
        finally:
            assert await stop_worker(proc) == 0
        assert status == "ok" and result["status"] == "made", result
        assert await ops.list("dead") == [] and await ops.list("retry") == []
        assert sorted(o.object_name for o in s3.list_objects(pair[1], recursive=True)) == [
            "p.jpg/1024.webp", "p.jpg/256.webp", "p.jpg/64.webp"]
    finally:
        server.stop()


async def test_memory_stays_flat_across_200_mixed_jobs(s3, s3_endpoint, buckets, redis, redis_url, key_prefix,
                                                       tmp_path):
    up, _ = buckets
    kinds = [
        images.jpeg_with_orientation(images.photo(900, 600), 6),
        images.photo(700, 500, alpha=True).pngsave_buffer(),
        images.animated_gif(300, 200, 4),
        images.photo(800, 600).webpsave_buffer(),
        images.photo(640, 480).heifsave_buffer(compression="av1", effort=0),
        images.photo(1200, 900).jpegsave_buffer(),
        images.png_declaring(30000, 30000),  # refused from its header
        b"not an image" * 100,
    ]
    keys = [f"mix/{i:03d}-{i % len(kinds)}" for i in range(200)]
    etags = {k: put(s3, up, k, kinds[i % len(kinds)]) for i, k in enumerate(keys)}
    proc = start_worker(redis_url, key_prefix, s3_endpoint, buckets, tmp_path / "w.log", thumb_concurrency=2)
    producer = Producer(redis, prefix=key_prefix)
    samples = []
    try:
        for n in (50, 150):  # warm up (decoders started, allocator settled), then the rest
            batch = range(0, 50) if n == 50 else range(50, 200)
            ids = [(await enqueue_thumbnail(producer, up, keys[i], etags[keys[i]])).job_id for i in batch]
            done = [await outcome(redis, key_prefix, j, timeout=90) for j in ids]
            assert [s for s, _ in done] == ["ok" if i % len(kinds) < 6 else "failed" for i in batch]
            pids = tree(proc.pid)
            samples.append((len(pids), sum(rss_kb(p) for p in pids), sum(rss_kb(p, "VmHWM") for p in pids)))
    finally:
        assert await stop_worker(proc) == 0
    (n1, rss1, _), (n2, rss2, hwm2) = samples
    print(f"worker + decoders: after 50 jobs {rss1 / 1024:.0f} MB, after 200 {rss2 / 1024:.0f} MB, "
          f"peak sum {hwm2 / 1024:.0f} MB ({n2} processes)")
    assert n1 == n2 == 3  # the worker and its 2 decoders, none replaced
    assert rss2 - rss1 < 25 * 1024, "memory grew across jobs (a libvips cache or a leak)"
    assert hwm2 < 900 * 1024
