"""The index worker process: a taskkit (ARQ) worker on the `index` queue.

Runnable as `hotpath worker index` or `arq index_worker.worker.WorkerSettings` (the latter reads the
same HOTPATH_* settings at import). On start it checks that Milvus answers, so a wrong
HOTPATH_MILVUS_URI is reported at once with the variable's name. Everything both workers share is
taskkit's `service_worker_settings`; this module holds only what is the index worker's own.
"""

from __future__ import annotations

import asyncio
import logging

from taskkit import task
from taskkit.worker import service_worker_settings

log = logging.getLogger("index_worker")
QUEUE = "index"


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `index` queue; the answer is 'pong'."""
    return "pong"


async def _check_milvus(settings) -> None:
    from pymilvus import MilvusClient

    uri, timeout_s = settings.milvus_uri, settings.milvus_timeout_s

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
    """The ARQ WorkerSettings class of the index queue, from IndexWorkerSettings."""
    return service_worker_settings(QUEUE, [ping], settings, concurrency=settings.index_concurrency,
                                   check=_check_milvus)


def __getattr__(name: str):
    # `arq index_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import IndexWorkerSettings, load

        return build_worker_settings(load(IndexWorkerSettings))
    raise AttributeError(name)
