"""The index worker process: a taskkit (ARQ) worker on the `index` queue.

Runnable as `hotpath worker index` or `arq index_worker.worker.WorkerSettings` (the latter reads the
same HOTPATH_* settings at import). On start it checks that Milvus answers, so a wrong
HOTPATH_MILVUS_URI is reported at once with the variable's name.
"""

from __future__ import annotations

import asyncio
import logging

from taskkit import task
from taskkit.fastworker import run_worker
from taskkit.worker import redis_settings_from_url, worker_settings

log = logging.getLogger("index_worker")
QUEUE = "index"


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `index` queue; the answer is 'pong'."""
    return "pong"


async def _check_milvus(uri: str, timeout_s: float) -> None:
    from pymilvus import MilvusClient

    def connect() -> list[str]:
        client = MilvusClient(uri=uri, timeout=timeout_s)
        try:
            return client.list_collections()
        finally:
            client.close()

    try:
        collections = await asyncio.wait_for(asyncio.to_thread(connect), timeout_s + 1)
    except Exception as exc:
        raise RuntimeError(f"Milvus at {uri} does not answer ({type(exc).__name__}: {exc}); check HOTPATH_MILVUS_URI") from exc
    log.info("milvus reachable", extra={"uri": uri, "collections": len(collections)})


def build_worker_settings(settings) -> type:
    """The ARQ WorkerSettings class of the index queue (taskkit: retries, dead letters, health record)."""

    async def startup(ctx) -> None:
        ctx["settings"] = settings
        await _check_milvus(settings.milvus_uri, settings.milvus_timeout_s)

    return worker_settings(
        QUEUE,
        [ping],
        redis_settings=redis_settings_from_url(settings.redis_url, conn_timeout=int(max(1, settings.redis_timeout_s))),
        concurrency=settings.index_concurrency,
        prefix=settings.taskkit_prefix,
        on_startup=startup,
        extra={"handle_signals": True, "job_completion_wait": 8},
    )


def run(settings, *, fast: bool = True) -> None:
    """fast: taskkit's FastWorker on uvloop (batched job claims and ends on ARQ's keys); otherwise, as with
    `arq ...WorkerSettings`, ARQ's own Worker. Both can serve the same queue at once."""
    run_worker(build_worker_settings(settings), fast=fast, use_uvloop=fast)


def __getattr__(name: str):
    # `arq index_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import IndexWorkerSettings, load

        return build_worker_settings(load(IndexWorkerSettings))
    raise AttributeError(name)
