"""The backfill scan against moto and real Redis: it enqueues exactly the sources whose thumbnails are missing,
made from another ETag or with other settings; a queued job is not enqueued twice; a full queue makes it wait, not
fail; a periodic scan checks each version once. And `hotpath thumbs backfill` as a command."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from arq.jobs import Job
from redis.asyncio import Redis

from taskkit import Keys, Producer, Watermarks
from thumb_worker.backfill import backfill
from thumb_worker.spec import ThumbSpec

from . import images

HOTPATH = str(Path(sys.executable).parent / "hotpath")


def put(s3, bucket: str, key: str, data: bytes) -> str:
    return s3.put_object(bucket, key, io.BytesIO(data), len(data)).etag


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def queued(redis: Redis, prefix: str) -> list[tuple]:
    """(function, key, etag) of every job in the thumb queue."""
    keys = Keys(prefix)
    out = []
    for jid in await redis.zrange(keys.arq_queue("thumb"), 0, -1):
        info = await Job(jid.decode(), redis, _queue_name=keys.arq_queue("thumb")).info()
        out.append((info.function, info.args[1], info.args[2]))
    return sorted(out)


@pytest.fixture
async def sources(s3, buckets, jobs):
    """current.jpg has current thumbnails; changed.png had them, then a new version was uploaded; new/missing.jpg
    never had any. Returns their ETags."""
    up, _ = buckets
    etags = {"current.jpg": put(s3, up, "current.jpg", images.photo(300, 200).jpegsave_buffer()),
             "changed.png": put(s3, up, "changed.png", images.photo(200, 300).pngsave_buffer())}
    for key in etags:
        assert (await jobs.make(up, key))["status"] == "made"
    etags["changed.png"] = put(s3, up, "changed.png", images.photo(210, 300).pngsave_buffer())
    etags["new/missing.jpg"] = put(s3, up, "new/missing.jpg", images.photo(320, 240).jpegsave_buffer())
    return etags


async def test_only_sources_without_current_thumbnails_are_enqueued_once(jobs, sources, redis, key_prefix):
    producer = Producer(redis, prefix=key_prefix)
    stats = await backfill(jobs, producer)
    assert (stats.listed, stats.current, stats.enqueued, stats.duplicates, stats.waits) == (3, 1, 2, 0, 0)
    assert await queued(redis, key_prefix) == [("thumbnail", "changed.png", sources["changed.png"]),
                                               ("thumbnail", "new/missing.jpg", sources["new/missing.jpg"])]
    again = await backfill(jobs, producer)  # the jobs are still queued: duplicates, not second jobs
    assert (again.enqueued, again.duplicates) == (0, 2)
    only = await backfill(jobs, producer, prefix="new/")
    assert (only.listed, only.duplicates) == (1, 1)
    assert len(await queued(redis, key_prefix)) == 2


async def test_changed_settings_make_every_source_stale(s3, jobs, sources, redis, key_prefix):
    other = dataclasses.replace(jobs.config, spec=ThumbSpec(quality=60))
    jobs.config = other
    stats = await backfill(jobs, Producer(redis, prefix=key_prefix))
    assert (stats.current, stats.enqueued) == (0, 3)


async def test_a_full_queue_makes_the_scan_wait_not_fail(s3, buckets, jobs, redis, key_prefix):
    up, _ = buckets
    for i in range(5):
        put(s3, up, f"s{i}.jpg", images.photo(64 + i, 48).jpegsave_buffer())
    producer = Producer(redis, prefix=key_prefix, watermarks=Watermarks(high=2, low=1))
    waits = []

    async def drain(seconds: float) -> None:  # stands in for a worker emptying the queue while the scan waits
        waits.append(seconds)
        await redis.delete(Keys(key_prefix).arq_queue("thumb"))

    stats = await backfill(jobs, producer, sleep=drain)
    # pages of 2 (the high watermark): the 1st fits, the 2nd and 3rd each find the queue full once.
    assert (stats.listed, stats.enqueued, stats.waits, stats.waiting) == (5, 5, 2, False)
    assert all(w >= 1 for w in waits) and stats.waited_s == sum(waits)


async def test_a_periodic_scan_checks_each_version_once(s3, buckets, jobs, sources, redis, key_prefix):
    producer = Producer(redis, prefix=key_prefix)
    seen: set[tuple[str, str]] = set()
    first = await backfill(jobs, producer, seen=seen)
    assert (first.known, first.enqueued) == (0, 2)
    await redis.delete(Keys(key_prefix).arq_queue("thumb"))  # as if the jobs ran (and, say, were dead-lettered)
    second = await backfill(jobs, producer, seen=seen)
    assert (second.listed, second.known, second.enqueued, second.current) == (3, 3, 0, 0)  # no stat, no job
    etag = put(s3, buckets[0], "current.jpg", images.photo(301, 200).jpegsave_buffer())  # a new version
    third = await backfill(jobs, producer, seen=seen)
    assert (third.known, third.enqueued) == (2, 1)
    assert await queued(redis, key_prefix) == [("thumbnail", "current.jpg", etag)]


def _env(redis_url: str, prefix: str, endpoint: str, buckets: tuple[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_REDIS_URL=redis_url, HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_S3_ENDPOINT=endpoint,
               HOTPATH_UPLOADS_BUCKET=buckets[0], HOTPATH_THUMBNAILS_BUCKET=buckets[1])
    return env


async def test_the_command_enqueues_and_says_what_it_did(sources, s3_endpoint, buckets, redis, redis_url, key_prefix,
                                                         tmp_path):
    env = _env(redis_url, key_prefix, s3_endpoint, buckets)
    done = subprocess.run([HOTPATH, "thumbs", "backfill", "--bucket", buckets[0]], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 sources listed: 2 enqueued, 0 already queued, 1 current in "), done.stdout
    assert [k for _, k, _ in await queued(redis, key_prefix)] == ["changed.png", "new/missing.jpg"]
    wrong = subprocess.run([HOTPATH, "thumbs", "backfill", "--bucket", "elsewhere"], env=env, capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "HOTPATH_UPLOADS_BUCKET" in wrong.stderr and "Traceback" not in wrong.stderr
    gone = subprocess.run([HOTPATH, "thumbs", "backfill"], env=env | {"HOTPATH_UPLOADS_BUCKET": "no-such-bucket-x"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert gone.returncode == 1 and "'no-such-bucket-x' does not exist" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr
