"""The health exporter against real Redis and a real worker process: a live worker's record is fresh, and after a
SIGKILL its age keeps growing and the queue counts no live worker, though the dead worker reports nothing itself;
the ages keep growing while Redis cannot be read; queues named up front are reported before any worker starts."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from taskkit import Watermarks
from taskkit.exporter import CurrentExporter, HealthExporter
from tests.taskkit.app_worker import QUEUE
from tests.taskkit.harness import start_app_worker, wait_until

INTERVAL_S = 0.5  # app_worker's health_interval_s
LIVE_WITHIN_S = 3 * INTERVAL_S


def samples(exporter: HealthExporter) -> dict[tuple[str, tuple], float]:
    """What a scrape shows: the exposition text parsed back (name, sorted labels) → value."""
    registry = CollectorRegistry()
    slot = CurrentExporter()
    registry.register(slot)
    slot.attach(exporter)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def queue_value(exporter: HealthExporter, name: str, queue: str = QUEUE) -> float | None:
    return samples(exporter).get((name, (("queue", queue),)))


async def test_a_killed_worker_goes_stale_while_it_reports_nothing(redis, redis_url, tk_prefix, tmp_path):
    exporter = HealthExporter(prefix=tk_prefix, queues=("other",), live_within_s=LIVE_WITHIN_S, interval_s=0.1)
    await exporter.refresh(redis)
    assert queue_value(exporter, "taskkit_queue_workers", "other") == 0  # named up front, no worker yet
    with open(tmp_path / "worker.log", "wb") as log:
        proc = start_app_worker(redis_url, tk_prefix, log, fast=True)
        try:
            async def live() -> bool:
                await exporter.refresh(redis)
                return queue_value(exporter, "taskkit_queue_workers") == 1
            await wait_until(live, within=20)
            age = queue_value(exporter, "taskkit_queue_health_age_seconds")
            assert age is not None and age <= LIVE_WITHIN_S
            [(worker_labels, _)] = [(k[1], v) for k, v in samples(exporter).items()
                                    if k[0] == "taskkit_worker_health_age_seconds"]
            assert dict(worker_labels)["queue"] == QUEUE and str(proc.pid) in dict(worker_labels)["worker"]
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # no clean stop: the record is not removed
            proc.wait(timeout=10)
    killed_at = time.time()
    exporter.start(redis)
    try:
        await wait_until(lambda: queue_value(exporter, "taskkit_queue_workers") == 0, within=10)
        await asyncio.sleep(0.5)
        stale_age = queue_value(exporter, "taskkit_queue_health_age_seconds")
        assert stale_age is not None and stale_age > LIVE_WITHIN_S
        assert stale_age >= time.time() - killed_at  # at least as old as the kill: no heartbeat came after it
        assert samples(exporter)[("taskkit_health_read_age_seconds", ())] < 1  # the loop keeps reading
    finally:
        await exporter.stop()


class _DownRedis:
    async def smembers(self, key):
        raise RedisConnectionError("connection refused")


async def test_ages_keep_growing_while_redis_cannot_be_read(redis, tk_prefix):
    now = [1_000_000.0]
    await redis.zadd(f"{tk_prefix}workers:{QUEUE}", {"w1": (now[0] - 2) * 1000})
    await redis.sadd(f"{tk_prefix}queues", QUEUE)
    exporter = HealthExporter(prefix=tk_prefix, clock=lambda: now[0], interval_s=0.01,
                              watermarks={QUEUE: Watermarks(high=30, low=10)})
    await exporter.refresh(redis)
    assert queue_value(exporter, "taskkit_queue_health_age_seconds") == pytest.approx(2)
    assert queue_value(exporter, "taskkit_queue_workers") == 1
    assert (queue_value(exporter, "taskkit_queue_high_watermark"), queue_value(exporter, "taskkit_queue_low_watermark")) \
        == (30, 10)
    now[0] += 60
    task = asyncio.create_task(exporter.run(_DownRedis()))  # every read fails: logged, the loop goes on
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    got = samples(exporter)
    assert got[("taskkit_queue_health_age_seconds", (("queue", QUEUE),))] == pytest.approx(62)
    assert got[("taskkit_worker_health_age_seconds", (("queue", QUEUE), ("worker", "w1")))] == pytest.approx(62)
    assert got[("taskkit_queue_workers", (("queue", QUEUE),))] == 0
    assert got[("taskkit_health_read_age_seconds", ())] == pytest.approx(60)
