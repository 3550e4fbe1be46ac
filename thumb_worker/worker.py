"""The thumbnail worker process: a taskkit (ARQ) worker on the `thumb` queue running `thumbnail` and
`remove_thumbnails` (thumb_worker/job.py) with decoder processes (thumb_worker/decoder.py).

Runnable as `hotpath worker thumb` or `arq thumb_worker.worker.WorkerSettings`. On start it checks that the
buckets differ, that object storage answers and both buckets exist, and that a decoder starts with libvips
configured, naming the setting to fix if not; it serves /metrics on HOTPATH_THUMB_METRICS_PORT. Everything both
workers share is taskkit's `service_worker_settings`; this module holds only what is the thumbnail worker's own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taskkit import RetryPolicy, task
from taskkit.worker import service_worker_settings
from thumb_worker import metrics
from thumb_worker.config import ThumbConfig
from thumb_worker.decoder import DecoderPool
from thumb_worker.job import ThumbJobs
from thumb_worker.producer import QUEUE, REMOVE_TASK, THUMBNAIL_TASK, idempotency_key
from thumb_worker.storage import DEFAULT_CONNECT_TIMEOUT_S, minio_from_settings

log = logging.getLogger("thumb_worker")
# S3 down or slow: retried with backoff for ~8 minutes in all (full jitter, 2 s doubling, capped at 2 min).
RETRY = RetryPolicy(max_attempts=8, base_s=2.0, cap_s=120.0)
# The outer bound of one job; the decode itself is bounded by HOTPATH_THUMB_TIME_LIMIT_S (at most 240 s).
TASK_TIMEOUT_S = 300.0


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `thumb` queue; the answer is 'pong'."""
    return "pong"


@task(queue=QUEUE, name=THUMBNAIL_TASK, retry=RETRY, timeout=TASK_TIMEOUT_S, idempotency_key=idempotency_key)
async def thumbnail(ctx, bucket: str, key: str, etag: str | None = None, size: int | None = None) -> dict[str, Any]:
    """Make the thumbnails of object `key` of the uploads bucket (a no-op when they are current)."""
    return await ctx["thumb"].jobs.make(bucket, key, etag, size)


@task(queue=QUEUE, name=REMOVE_TASK, retry=RETRY, timeout=60)
async def remove_thumbnails(ctx, bucket: str, key: str) -> dict[str, Any]:
    """Remove the thumbnails of object `key`, whose source was deleted from the uploads bucket."""
    return await ctx["thumb"].jobs.remove(bucket, key)


class ThumbService:
    """The worker process's S3 client, decoder pool and jobs: built at start-up, closed at shutdown."""

    def __init__(self, config: ThumbConfig) -> None:
        self.config = config
        self.jobs: ThumbJobs | None = None

    async def start(self, settings) -> None:
        cfg = self.config
        metrics.serve(cfg.metrics_host, cfg.metrics_port)
        client = minio_from_settings(settings, connect_timeout_s=min(DEFAULT_CONNECT_TIMEOUT_S, cfg.s3_timeout_s),
                                     read_timeout_s=cfg.s3_timeout_s)
        try:
            exists = await asyncio.to_thread(client.bucket_exists, cfg.uploads_bucket)
        except Exception as exc:
            raise RuntimeError(f"object storage at {settings.s3_endpoint} does not answer ({type(exc).__name__}: "
                               f"{exc}); check HOTPATH_S3_ENDPOINT and the S3 keys") from exc
        if not exists:
            raise RuntimeError(f"bucket {cfg.uploads_bucket!r} does not exist at {settings.s3_endpoint}; "
                               "create it or set HOTPATH_UPLOADS_BUCKET")
        pool = DecoderPool(cfg.spec, size=cfg.concurrency, time_limit_s=cfg.time_limit_s)
        self.jobs = ThumbJobs(client, pool, cfg)
        await self.jobs.check()
        info = await pool.start()
        log.info("thumbnail worker ready", extra={"endpoint": settings.s3_endpoint, "libvips": info.get("libvips"),
                                                  "sizes": list(cfg.spec.sizes), "format": cfg.spec.format})

    async def stop(self, ctx: dict[str, Any]) -> None:
        if self.jobs is not None:
            await self.jobs.pool.close()


def build_worker_settings(settings, **kwargs: Any) -> type:
    """The ARQ WorkerSettings class of the thumb queue, from ThumbWorkerSettings.

    Raises ValueError at once when the settings cannot work (the same bucket for uploads and thumbnails)."""
    service = ThumbService(ThumbConfig.from_settings(settings))
    extra = {"ctx": {"thumb": service}, **kwargs.pop("extra", {})}
    return service_worker_settings(QUEUE, [ping, thumbnail, remove_thumbnails], settings,
                                   concurrency=settings.thumb_concurrency, check=service.start,
                                   on_shutdown=service.stop, extra=extra, **kwargs)


def __getattr__(name: str):
    # `arq thumb_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import ThumbWorkerSettings, load

        return build_worker_settings(load(ThumbWorkerSettings))
    raise AttributeError(name)
