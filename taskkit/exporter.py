"""Worker health as another process sees it: a Prometheus collector reporting how old each queue's worker health
records are, how many workers are live, and the queues' watermarks (served by the API's /metrics).

Why not in the worker: a dead or hung worker exports nothing, so no gauge of its own can say it went stale. Every
worker writes a heartbeat to Redis (`Runtime.tick`: sorted set `workers:{queue}`, worker id → last tick, ms); a
process that outlives it reads those every `interval_s` and computes the ages at scrape time, so an age keeps
growing after the last heartbeat, even while Redis cannot be read. Ages are wall-clock differences: keep hosts on NTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from taskkit.backpressure import Watermarks
from taskkit.keys import DEFAULT_PREFIX, Keys
from taskkit.worker import DEFAULT_HEALTH_INTERVAL_S

log = logging.getLogger("taskkit.exporter")

# A worker whose last heartbeat is older than this is not live: the bound its peers trim the set with (worker.py).
LIVE_WITHIN_S = 3 * DEFAULT_HEALTH_INTERVAL_S


class HealthExporter:
    """Reads every queue's worker heartbeats from Redis every `interval_s` (`start` / `stop` the loop, or await
    `refresh`), and reports them as Prometheus gauges (`collect`, at scrape time).

    `queues` are always reported, with 0 live workers before any worker of theirs ever started; the queues that
    workers registered in Redis are added. `watermarks` (the producers' limits) are reported as they are.
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, queues: Sequence[str] = (),
                 watermarks: Mapping[str, Watermarks] | None = None, interval_s: float = DEFAULT_HEALTH_INTERVAL_S,
                 live_within_s: float = LIVE_WITHIN_S, clock: Callable[[], float] = time.time) -> None:
        self.keys = Keys(prefix)
        self.queues = tuple(queues)
        self.watermarks = dict(watermarks or {})
        self.interval_s = interval_s
        self.live_within_s = live_within_s
        self.clock = clock
        self.heartbeats: dict[str, dict[str, float]] = {q: {} for q in self.queues}  # queue → worker → last tick, s
        self.read_at: float | None = None  # last successful read, s
        self.started_at = clock()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, redis: Any) -> None:
        """Read the heartbeats of every queue (one round trip for the queue index, one for all the sets)."""
        names = sorted(set(self.queues) | {m.decode() for m in await redis.smembers(self.keys.queues)})
        async with redis.pipeline(transaction=False) as p:
            for q in names:
                p.zrange(self.keys.workers(q), 0, -1, withscores=True)
            sets = await p.execute()
        self.heartbeats = {q: {w.decode(): ms / 1000 for w, ms in members} for q, members in zip(names, sets, strict=True)}
        self.read_at = self.clock()

    async def run(self, redis: Any) -> None:
        """Refresh forever; a Redis failure is logged once per outage and the last heartbeats are kept (they age)."""
        failing = False
        while True:
            try:
                await self.refresh(redis)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("worker heartbeats not read (%s: %s); their ages keep growing until Redis answers",
                                type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("worker heartbeats read again")
                failing = False
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # stop() cancelled us inside a Redis call that ended normally all the same (seen with redis-py 5.3
                # in the API's teardown): honour it, or stop() would wait forever
                raise asyncio.CancelledError
            await asyncio.sleep(self.interval_s)

    def start(self, redis: Any) -> None:
        """Run the refresh loop in a task of the running event loop (the API's lifespan)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(redis), name="taskkit-health-exporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        worker_age = GaugeMetricFamily(
            "taskkit_worker_health_age_seconds",
            "Seconds since each listed worker last refreshed its health record (a dead worker stays listed until a "
            "live peer drops it, 3 health intervals later).", labels=["queue", "worker"])
        queue_age = GaugeMetricFamily(
            "taskkit_queue_health_age_seconds",
            "Seconds since the freshest health record of any worker of the queue (grows while none is alive; "
            "absent when none is listed: see taskkit_queue_workers).", labels=["queue"])
        live = GaugeMetricFamily(
            "taskkit_queue_workers", "Workers of the queue whose health record is fresh (refreshed within 3 health "
            "intervals).", labels=["queue"])
        for q, beats in sorted(self.heartbeats.items()):
            ages = {w: max(0.0, now - t) for w, t in beats.items()}
            for w, age in sorted(ages.items()):
                worker_age.add_metric([q, w], age)
            if ages:
                queue_age.add_metric([q], min(ages.values()))
            live.add_metric([q], sum(1 for a in ages.values() if a <= self.live_within_s))
        yield from (worker_age, queue_age, live)
        high = GaugeMetricFamily("taskkit_queue_high_watermark", "Depth at which producers start refusing jobs (429).",
                                 labels=["queue"])
        low = GaugeMetricFamily("taskkit_queue_low_watermark", "Depth at which refusing producers admit jobs again.",
                                labels=["queue"])
        for q, wm in sorted(self.watermarks.items()):
            high.add_metric([q], wm.high)
            low.add_metric([q], wm.low)
        yield from (high, low)
        yield GaugeMetricFamily(
            "taskkit_health_read_age_seconds",
            "Seconds since this process last read the worker heartbeats from Redis (since its start before the first).",
            value=now - (self.read_at if self.read_at is not None else self.started_at))


class CurrentExporter:
    """A collector reporting one HealthExporter at a time, the one most recently attached: registered once per
    registry, so a process that builds several apps (the tests do) never reports a family twice."""

    def __init__(self) -> None:
        self.exporter: HealthExporter | None = None

    def attach(self, exporter: HealthExporter) -> None:
        self.exporter = exporter

    def detach(self, exporter: HealthExporter) -> None:
        if self.exporter is exporter:
            self.exporter = None

    def collect(self) -> Iterator[Metric]:
        if self.exporter is not None:
            yield from self.exporter.collect()


__all__ = ["LIVE_WITHIN_S", "CurrentExporter", "HealthExporter"]
