"""The thumbnail worker process: a taskkit (ARQ) worker on the `thumb` queue.

Runnable as `hotpath worker thumb` or `arq thumb_worker.worker.WorkerSettings`. On start it checks
that object storage answers and the uploads bucket exists, naming the setting to fix if not.
Everything both workers share is taskkit's `service_worker_settings`; this module holds only what is
the thumbnail worker's own.
"""

from __future__ import annotations

import asyncio
import logging

from taskkit import task
from taskkit.worker import service_worker_settings
from thumb_worker.storage import minio_from_settings

log = logging.getLogger("thumb_worker")
QUEUE = "thumb"


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `thumb` queue; the answer is 'pong'."""
    return "pong"


async def _check_storage(settings) -> None:
    client = minio_from_settings(settings)
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
    """The ARQ WorkerSettings class of the thumb queue, from ThumbWorkerSettings."""
    return service_worker_settings(QUEUE, [ping], settings, concurrency=settings.thumb_concurrency,
                                   check=_check_storage)


def __getattr__(name: str):
    # `arq thumb_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import ThumbWorkerSettings, load

        return build_worker_settings(load(ThumbWorkerSettings))
    raise AttributeError(name)
