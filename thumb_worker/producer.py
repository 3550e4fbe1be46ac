"""Enqueue thumbnail work directly (a file service, the webhook intake, a backfill): `enqueue_thumbnail`,
`enqueue_removal`, by task name, so a producer never imports the worker (nor loads libvips).
"""

from __future__ import annotations

from taskkit.idempotency import Enqueued
from taskkit.producer import JobSpec, Producer

QUEUE = "thumb"
THUMBNAIL_TASK = "thumbnail"
REMOVE_TASK = "remove_thumbnails"


def normalize_etag(etag: str) -> str:
    """An ETag without the quotes S3 and MinIO events put around it (or not)."""
    return etag.strip().strip('"')


def idempotency_key(bucket: str, key: str, etag: str | None = None, size: int | None = None) -> str:
    """The dedup key of a thumbnail job: the same object version (bucket, key, ETag) is one job."""
    return f"thumb:{bucket}/{key}@{normalize_etag(etag or '')}"


async def enqueue_thumbnail(producer: Producer, bucket: str, key: str, etag: str, size: int | None = None, *,
                            settings_hash: str | None = None) -> Enqueued:
    """Ask for the thumbnails of object `key` (version `etag`) of the uploads bucket.

    The same (bucket, key, ETag) is one job while queued and for the producer's idempotency window after it
    ran; pass `settings_hash` (ThumbConfig.settings_hash) when re-enqueueing after a settings change, so the
    job is not taken for the one already done. Raises QueueFull(retry_after) over the high watermark."""
    job = thumbnail_job(bucket, key, etag, size, settings_hash=settings_hash)
    return await producer.enqueue(THUMBNAIL_TASK, *job.args, _queue=QUEUE, _idempotency_key=job.idempotency_key)


def thumbnail_job(bucket: str, key: str, etag: str, size: int | None = None, *,
                  settings_hash: str | None = None) -> JobSpec:
    """One `thumbnail` job for Producer.enqueue_many (the intake and the backfill enqueue many at once)."""
    idem = idempotency_key(bucket, key, etag)
    if settings_hash:
        idem = f"{idem}#{settings_hash}"
    return JobSpec(args=(bucket, key, etag, size), idempotency_key=idem)


def removal_job(bucket: str, key: str) -> JobSpec:
    """One `remove_thumbnails` job for Producer.enqueue_many (no idempotency key: see enqueue_removal)."""
    return JobSpec(args=(bucket, key))


async def enqueue_removal(producer: Producer, bucket: str, key: str) -> Enqueued:
    """Ask for the thumbnails of object `key` to be removed (its source was deleted). Not deduplicated: a
    removal checks that the source is really gone, so a repeated one is harmless."""
    return await producer.enqueue(REMOVE_TASK, bucket, key, _queue=QUEUE)
