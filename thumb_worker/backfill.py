"""Backfill: list the uploads bucket, find the sources whose thumbnails are not current (missing, made from another
ETag or with other settings) and enqueue a `thumbnail` job for each, waiting whenever the queue is full.

Why here and not in the CLI: `hotpath thumbs backfill` (once, with a progress bar) and `hotpath dev`'s periodic
scan (moto sends no bucket notifications) run the same code, and the tests call it directly. "Current" is decided
by ThumbJobs.current — the same `stat` of each thumbnail's provenance metadata the worker uses to skip a replay —
so the backfill and the worker can never disagree about what is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskkit.errors import QueueFull
from taskkit.producer import JobSpec, Producer
from thumb_worker.job import ThumbJobs
from thumb_worker.producer import QUEUE, THUMBNAIL_TASK, thumbnail_job

PAGE = 100  # objects listed, checked and enqueued together
CHECKS = 16  # thumbnail `stat` checks in flight at once


@dataclass
class BackfillStats:
    """What a scan saw and did so far (the progress callback gets it after each page and each wait)."""

    listed: int = 0  # source objects listed
    current: int = 0  # whose thumbnails are current
    known: int = 0  # skipped without a check: this version was checked or enqueued by an earlier scan (`seen`)
    enqueued: int = 0  # thumbnail jobs created
    duplicates: int = 0  # not created: the same job is queued or was just done
    waits: int = 0  # times the queue was full and the scan waited
    waited_s: float = 0.0
    waiting: bool = False  # waiting on a full queue right now


async def backfill(jobs: ThumbJobs, producer: Producer, *, prefix: str = "", seen: set[tuple[str, str]] | None = None,
                   progress: Callable[[BackfillStats], None] | None = None,
                   sleep: Callable[[float], Any] = asyncio.sleep) -> BackfillStats:
    """Enqueue every source under `prefix` of the uploads bucket whose thumbnails are not current.

    Each job is keyed by bucket, key, ETag and the settings hash, so a job already queued (or just done) for that
    version is a duplicate, not a second job. On QueueFull the scan waits the queue's Retry-After and tries the
    same page again: it never fails on backpressure. `seen` (kept across calls by a periodic scan) holds the
    versions already checked or enqueued, which are then skipped without a `stat` — so a source its job refused
    (dead-lettered) is not sent again on every scan. S3 and Redis failures propagate (TransientError, RedisError)."""
    cfg = jobs.config
    bucket = cfg.uploads_bucket
    stats = BackfillStats()
    limit = asyncio.Semaphore(CHECKS)
    page_size = max(1, min(PAGE, producer.watermarks(QUEUE).high))

    async def is_current(name: str, etag: str) -> bool:
        async with limit:
            return await jobs.current(name, etag)

    async for versions in jobs.sources(prefix, page_size):
        stats.listed += len(versions)
        fresh = [v for v in versions if seen is None or v not in seen]
        stats.known += len(versions) - len(fresh)
        done = await asyncio.gather(*(is_current(name, etag) for name, etag in fresh))
        todo = [thumbnail_job(bucket, name, etag, settings_hash=cfg.settings_hash)
                for (name, etag), ok in zip(fresh, done, strict=True) if not ok]
        stats.current += len(fresh) - len(todo)
        await _enqueue(producer, todo, stats, progress, sleep)
        if seen is not None:
            seen.update(fresh)
        if progress:
            progress(stats)
    return stats


async def _enqueue(producer: Producer, todo: list[JobSpec], stats: BackfillStats,
                   progress: Callable[[BackfillStats], None] | None, sleep: Callable[[float], Any]) -> None:
    while todo:
        try:
            out = await producer.enqueue_many(THUMBNAIL_TASK, todo, queue=QUEUE)
        except QueueFull as exc:
            stats.waits += 1
            stats.waiting = True
            if progress:
                progress(stats)
            await sleep(exc.retry_after)
            stats.waited_s += exc.retry_after
            continue
        stats.waiting = False
        stats.enqueued += out.accepted
        stats.duplicates += out.duplicates
        return
