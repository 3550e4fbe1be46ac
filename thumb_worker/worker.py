"""The thumbnail worker process: an ARQ worker on the `hotpath:thumb` queue.

Runnable as `hotpath worker thumb` or `arq thumb_worker.worker.WorkerSettings`. On start it checks
that object storage answers and the uploads bucket exists, naming the setting to fix if not.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

from arq.connections import RedisSettings
from arq.worker import run_worker

log = logging.getLogger("thumb_worker")
QUEUE = "hotpath:thumb"


async def ping(ctx) -> str:
    """Liveness probe task: `enqueue_job('ping', _queue_name='hotpath:thumb')` answers 'pong'."""
    return "pong"


def make_client(settings):
    """A MinIO SDK client with connect/read timeouts (the SDK's default has none)."""
    import urllib3
    from minio import Minio

    u = urlparse(settings.s3_endpoint)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=urllib3.Retry(total=2, backoff_factor=0.2))
    return Minio(u.netloc, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                 secure=u.scheme == "https", region=settings.s3_region, http_client=http)


async def _check_storage(settings) -> None:
    client = make_client(settings)
    try:
        exists = await asyncio.to_thread(client.bucket_exists, settings.uploads_bucket)
    except Exception as exc:
        raise RuntimeError(f"object storage at {settings.s3_endpoint} does not answer ({type(exc).__name__}: {exc}); "
                           "check HOTPATH_S3_ENDPOINT and the S3 keys") from exc
    if not exists:
        raise RuntimeError(f"bucket {settings.uploads_bucket!r} does not exist at {settings.s3_endpoint}; "
                           "create it or set HOTPATH_UPLOADS_BUCKET")
    log.info("object storage reachable", extra={"endpoint": settings.s3_endpoint})


def build_worker_settings(settings) -> type:
    async def startup(ctx) -> None:
        ctx["settings"] = settings
        await _check_storage(settings)

    class WorkerSettings:
        functions = [ping]
        queue_name = QUEUE
        redis_settings = RedisSettings.from_dsn(settings.redis_url)
        max_jobs = settings.thumb_concurrency
        on_startup = startup
        handle_signals = True
        job_completion_wait = 8

    return WorkerSettings


def run(settings) -> None:
    run_worker(build_worker_settings(settings))


def __getattr__(name: str):
    if name == "WorkerSettings":
        from hotpath.settings import ThumbWorkerSettings, load

        return build_worker_settings(load(ThumbWorkerSettings))
    raise AttributeError(name)
