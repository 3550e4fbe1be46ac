"""The producer: enqueue a job with idempotency and backpressure in one atomic Redis step.

Why not ARQ's `enqueue_job`: it dedups only by job id while the job or its result exists, and cannot
refuse work. Here one Lua script (taskkit/lua/enqueue.lua) checks the idempotency marker, checks
depth against the watermarks (with hysteresis), and writes ARQ's own job key and queue entry — so an
ARQ worker runs the job exactly as if ARQ had enqueued it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from arq.jobs import serialize_job

from taskkit import metrics
from taskkit.backpressure import Watermarks
from taskkit.errors import QueueFull, UnknownTask
from taskkit.idempotency import DEFAULT_WINDOW_S, Enqueued, key_for
from taskkit.keys import DEFAULT_PREFIX, Keys
from taskkit.scripts import Scripts
from taskkit.tasks import TaskSpec, spec_of

# A queued job not started within this long expires (ARQ: "job expired"); ARQ itself uses 1 day.
DEFAULT_JOB_TTL_S = 7 * 86400.0
_STATES = {1: "created", 0: "queued", 2: "recent"}


class Producer:
    """Enqueues jobs for taskkit workers. One per process; safe for concurrent use.

    `watermarks` is one Watermarks for every queue, or a mapping queue → Watermarks (queues not in it
    get the defaults); `idempotency_window_s` (default 1 h) is how long a done job's key still dedups.
    """

    def __init__(self, redis: Any, *, prefix: str = DEFAULT_PREFIX,
                 watermarks: Watermarks | Mapping[str, Watermarks] | None = None,
                 idempotency_window_s: float = DEFAULT_WINDOW_S, job_ttl_s: float = DEFAULT_JOB_TTL_S) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._watermarks = watermarks
        self.idempotency_window_s = idempotency_window_s
        self.job_ttl_s = job_ttl_s
        self._scripts = Scripts(redis)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Producer:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url), **kwargs)

    async def close(self) -> None:
        await self.redis.aclose()

    def watermarks(self, queue: str) -> Watermarks:
        wm = self._watermarks
        if wm is None:
            return Watermarks()
        if isinstance(wm, Watermarks):
            return wm
        return wm.get(queue, Watermarks())

    async def enqueue(self, task: Any, *args: Any, _queue: str | None = None,
                      _idempotency_key: str | None = None, _defer_s: float = 0.0,
                      _backpressure: bool = True, **kwargs: Any) -> Enqueued:
        """Enqueue `task` (a declared function, a TaskSpec, or a task name with `_queue=`).

        The idempotency key is `_idempotency_key`, else the task's declared `idempotency_key(*args,
        **kwargs)`. Returns Enqueued (created, or a duplicate and why); raises QueueFull(retry_after)
        when the queue is over its watermark (`_backpressure=False` skips the check, for requeues).
        """
        if isinstance(task, str):
            if _queue is None:
                raise UnknownTask(f"enqueue({task!r}): a task given by name needs _queue=")
            name, queue, key_func = task, _queue, None
        else:
            spec: TaskSpec = spec_of(task)
            name, queue, key_func = spec.name, _queue or spec.queue, spec.idempotency_key
        key = _idempotency_key if _idempotency_key is not None else key_for(key_func, args, kwargs)
        k = self.keys
        token = k.idem_token(key) if key else None
        job_id = k.idempotent_job_id(queue, key) if key else k.new_job_id(queue)
        now = int(time.time() * 1000)
        score = now + int(_defer_s * 1000)
        job = serialize_job(name, args, kwargs, None, now)
        wm = self.watermarks(queue)
        status, existing, ra_ms, depth, age_ms = await self._scripts.enqueue(
            keys=[k.arq_queue(queue), k.job(job_id), k.result(job_id),
                  k.idempotency(queue, token or "-"), k.backpressure(queue), k.queues, k.stats(queue)],
            args=[job_id, job, score, int(self.job_ttl_s * 1000) + (score - now),
                  int(self.idempotency_window_s * 1000) if key else 0,
                  wm.high, wm.low, int(wm.max_age_s * 1000), now, queue,
                  int(wm.min_retry_after_s * 1000), int(wm.max_retry_after_s * 1000), 1 if _backpressure else 0],
        )
        if status == -1:
            metrics.REJECTIONS.labels(queue).inc()
            raise QueueFull(queue, ra_ms / 1000, depth=depth, oldest_age_s=age_ms / 1000)
        existing = existing.decode() if isinstance(existing, bytes) else existing
        return Enqueued(job_id=existing, queue=queue, created=status == 1, state=_STATES[status])  # type: ignore[arg-type]
