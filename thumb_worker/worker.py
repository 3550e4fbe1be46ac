"""The thumbnail worker process: a taskkit (ARQ) worker on the `thumb` queue.

Runnable as `hotpath worker thumb` or `arq thumb_worker.worker.WorkerSettings`. On start it checks
that object storage answers and the uploads bucket exists, naming the setting to fix if not.
"""

from __future__ import annotations

import asyncio
import logging

from taskkit import task
from taskkit.fastworker import run_worker
from taskkit.worker import redis_settings_from_url, worker_settings

log = logging.getLogger("thumb_worker")
QUEUE = "thumb"


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `thumb` queue; the answer is 'pong'."""
    return "pong"


def make_client(settings):
    """A MinIO SDK client with connect/read timeouts (thumb_worker/storage.py; the SDK's default has none)."""
    from thumb_worker.storage import minio_from_settings

    return minio_from_settings(settings)


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

    return worker_settings(
        QUEUE,
        [ping],
        redis_settings=redis_settings_from_url(settings.redis_url, conn_timeout=int(max(1, settings.redis_timeout_s))),
        concurrency=settings.thumb_concurrency,
        prefix=settings.taskkit_prefix,
        on_startup=startup,
        extra={"handle_signals": True, "job_completion_wait": 8},
    )


def run(settings, *, fast: bool = True) -> None:
    """fast: taskkit's FastWorker on uvloop (batched job claims and ends on ARQ's keys); otherwise, as with
    `arq ...WorkerSettings`, ARQ's own Worker. Both can serve the same queue at once."""
    run_worker(build_worker_settings(settings), fast=fast, use_uvloop=fast)


def __getattr__(name: str):
    if name == "WorkerSettings":
        from hotpath.settings import ThumbWorkerSettings, load

        return build_worker_settings(load(ThumbWorkerSettings))
    raise AttributeError(name)
