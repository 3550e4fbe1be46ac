"""Metrics and the health record: counters by error class, gauges of shared state refreshed by the
health loop, and a per-worker health record in Redis that expires when the worker is gone."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from taskkit import (
    Batcher,
    Inspector,
    PermanentError,
    Producer,
    QueueFull,
    RetryPolicy,
    TransientError,
    Watermarks,
    task,
    worker_settings,
)
from taskkit import metrics as tk_metrics
from taskkit.keys import Keys
from taskkit.worker import redis_settings_from_url
from tests.taskkit.harness import running_worker, wait_until

Q = "metricsq"


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@task(queue=Q, retry=RetryPolicy(max_attempts=2, base_s=0.05, jitter="none"))
async def m_task(ctx, mode: str) -> str:
    if mode == "permanent":
        raise PermanentError("nope")
    if mode == "flaky" and ctx["attempt"] == 1:
        raise TransientError("later")
    if mode == "batch":
        return await ctx["batcher"].submit(mode)
    return mode


async def _echo(items):
    return list(items)


@pytest.mark.usefixtures("worker_kind")
async def test_metrics_and_health_record(redis, redis_url, tk_prefix):
    before = {
        "done": metric("taskkit_jobs_completed_total", queue=Q, task="m_task"),
        "retried": metric("taskkit_jobs_retried_total", queue=Q, task="m_task", error="TransientError"),
        "dead": metric("taskkit_jobs_dead_total", queue=Q, task="m_task", error="PermanentError"),
        "rejected": metric("taskkit_backpressure_rejections_total", queue=Q),
        "batches": metric("taskkit_batch_size_count", batcher="m"),
    }
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=4, low=1))
    for mode in ("ok", "flaky", "permanent", "batch"):
        await prod.enqueue(m_task, mode)
    with pytest.raises(QueueFull):
        await prod.enqueue(m_task, "ok")  # depth 4 = high watermark
    assert metric("taskkit_backpressure_rejections_total", queue=Q) == before["rejected"] + 1

    async def startup(ctx):
        ctx["batcher"] = Batcher(_echo, name="m", max_items=8, linger_s=0.01)

    cls = worker_settings(Q, [m_task], redis_settings=redis_settings_from_url(redis_url), prefix=tk_prefix,
                          health_interval_s=0.2, on_startup=startup)
    k = Keys(tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    async def shared_state() -> dict:
        """What the health loop publishes: the worker's record, the queue's stats, the gauges."""
        workers = await redis.zrange(k.workers(Q), 0, -1)
        rec = {a.decode(): b.decode() for a, b in (await redis.hgetall(k.health(Q, workers[0].decode()))).items()
               } if len(workers) == 1 else {}
        stats = (await ins.stats(Q))[0]
        return {
            "workers": len(workers), "record": {f: rec.get(f) for f in ("queue", "completed", "dead", "retried")},
            "stats": (stats.workers, stats.completed, stats.dead, stats.rejected),
            "gauges": (metric("taskkit_dead_letter_size", queue=Q), metric("taskkit_queue_depth", queue=Q),
                       metric("taskkit_jobs_in_flight", queue=Q)),
        }

    # gauges are process-wide: clear what an earlier test left, so only this worker's ticks can set them
    tk_metrics.DLQ_SIZE.labels(Q).set(-1)
    tk_metrics.QUEUE_DEPTH.labels(Q).set(-1)
    want = {"workers": 1, "record": {"queue": Q, "completed": "3", "dead": "1", "retried": "1"},
            "stats": (1, 3, 1, 1), "gauges": (1, 0, 0)}
    async with running_worker(cls):
        await wait_until(lambda: metric("taskkit_jobs_completed_total", queue=Q, task="m_task")
                         == before["done"] + 3, within=10)
        # the health loop (every 0.2 s) publishes the new state: poll for it rather than sleep and hope
        deadline = time.monotonic() + 10
        while (state := await shared_state()) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert state == want
        hkey = k.health(Q, (await redis.zrange(k.workers(Q), 0, -1))[0].decode())
        assert int(await redis.hget(hkey, "updated_ms")) > time.time() * 1000 - 1000  # refreshed every 0.2 s
        assert 0 < await redis.pttl(hkey) <= 600  # expires if the worker dies
    assert metric("taskkit_jobs_retried_total", queue=Q, task="m_task", error="TransientError") == before["retried"] + 1
    assert metric("taskkit_jobs_dead_total", queue=Q, task="m_task", error="PermanentError") == before["dead"] + 1
    assert metric("taskkit_batch_size_count", batcher="m") == before["batches"] + 1
    assert not await redis.exists(hkey)  # a clean stop removes the record
