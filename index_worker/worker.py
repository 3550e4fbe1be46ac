"""The index worker process: an ARQ worker on the `hotpath:index` queue.

Runnable as `hotpath worker index` or `arq index_worker.worker.WorkerSettings` (the latter reads the
same HOTPATH_* settings at import). On start it checks that Milvus answers, so a wrong
HOTPATH_MILVUS_URI is reported at once with the variable's name.
"""

from __future__ import annotations

import asyncio
import logging

from arq.connections import RedisSettings
from arq.worker import run_worker

log = logging.getLogger("index_worker")
QUEUE = "hotpath:index"


async def ping(ctx) -> str:
    """Liveness probe task: `enqueue_job('ping', _queue_name='hotpath:index')` answers 'pong'."""
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
    """An ARQ WorkerSettings class for these settings."""

    async def startup(ctx) -> None:
        ctx["settings"] = settings
        await _check_milvus(settings.milvus_uri, settings.milvus_timeout_s)

    class WorkerSettings:
        functions = [ping]
        queue_name = QUEUE
        redis_settings = RedisSettings.from_dsn(settings.redis_url)
        max_jobs = settings.index_concurrency
        on_startup = startup
        handle_signals = True
        job_completion_wait = 8

    WorkerSettings.redis_settings.conn_timeout = int(max(1, settings.redis_timeout_s))
    return WorkerSettings


def run(settings) -> None:
    run_worker(build_worker_settings(settings))


def __getattr__(name: str):
    # `arq index_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import IndexWorkerSettings, load

        return build_worker_settings(load(IndexWorkerSettings))
    raise AttributeError(name)
