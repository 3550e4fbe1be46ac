"""Both workers come from taskkit's one builder (service_worker_settings): the same Redis, prefix,
signal handling and start-up check wiring, and only their queue, tasks, check and concurrency differ."""

from __future__ import annotations

import asyncio

import pytest

import index_worker.worker as index_mod
import thumb_worker.worker as thumb_mod
from hotpath.settings import IndexWorkerSettings, ThumbWorkerSettings, load
from taskkit.keys import Keys
from taskkit.worker import SHUTDOWN_DRAIN_S


@pytest.mark.parametrize(
    ("mod", "cls", "concurrency_var", "tasks"),
    [(index_mod, IndexWorkerSettings, "index_concurrency", ["ping", "index_event"]),
     (thumb_mod, ThumbWorkerSettings, "thumb_concurrency", ["ping", "thumbnail", "remove_thumbnails"])],
    ids=["index", "thumb"],
)
def test_each_worker_is_the_shared_builder_plus_what_differs(mod, cls, concurrency_var, tasks):
    settings = load(cls, redis_url="redis://127.0.0.1:6399/3", redis_timeout_s=2.5, taskkit_prefix="hpb:",
                    **{concurrency_var: 7})
    ws = mod.build_worker_settings(settings)
    assert ws.queue_name == Keys("hpb:").arq_queue(mod.QUEUE) and ws.taskkit_queue == mod.QUEUE
    assert ws.max_jobs == 7
    assert (ws.redis_settings.host, ws.redis_settings.port, ws.redis_settings.database) == ("127.0.0.1", 6399, 3)
    assert ws.redis_settings.conn_timeout == 2
    assert ws.handle_signals is True and ws.job_completion_wait == SHUTDOWN_DRAIN_S
    assert [f.name for f in ws.functions] == tasks


# The check each worker runs at start: the index worker's runtime start (embedder, collection, batcher), the
# thumbnail worker's service start (buckets, storage, a decoder).
@pytest.mark.parametrize(("mod", "cls", "target", "check"), [(index_mod, IndexWorkerSettings, index_mod.IndexRuntime, "start"),
                                                               (thumb_mod, ThumbWorkerSettings, thumb_mod.ThumbService, "start")],
                         ids=["index", "thumb"])
def test_startup_runs_the_workers_own_check_with_its_settings(mod, cls, target, check, redis_url, key_prefix, monkeypatch):
    from redis.asyncio import Redis

    settings = load(cls, redis_url=redis_url, taskkit_prefix=key_prefix)
    checked = []

    async def fake_check(*args) -> None:  # the real checks need Milvus / S3: tests/workers/test_worker_processes.py
        checked.append(args[-1])  # (a method's self comes first)

    monkeypatch.setattr(target, check, fake_check)
    ws = mod.build_worker_settings(settings)

    async def go():
        redis = Redis.from_url(redis_url)
        ctx = {"redis": redis}
        try:
            await ws.on_startup(ctx)
            await ws.on_shutdown(ctx)
        finally:
            await redis.aclose()
        return ctx

    ctx = asyncio.run(go())
    assert checked == [settings] and ctx["settings"] is settings and ctx["taskkit"].queue == mod.QUEUE
