"""The retry queue: every job waiting for its next attempt, visible with payload, attempts, last error
and next run time.

ARQ already holds the job itself (its queue score is the next run time); taskkit adds an index
(`retry:<queue>` sorted by next run) and a record hash per job, written by one Lua script that also
raises the TTL of ARQ's job and try-counter keys so a retry a week out does not end as "job expired".
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from taskkit.keys import Keys
from taskkit.records import JobRecord, failure_fields, payload_json
from taskkit.scripts import Scripts

# How long past its next run a waiting job's keys are kept (same margin ARQ gives a fresh job).
KEEP_EXTRA_MS = 86_400_000
PAGE = 200


class RetryQueue:
    """Read and change the retry queue of any queue under one key prefix."""

    def __init__(self, redis: Any, keys: Keys, scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts or Scripts(redis)

    async def schedule(self, *, queue: str, job_id: str, task: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any], attempt: int, exc: BaseException, kind: str,
                       delay_s: float, enqueued_ms: int, idempotency_key: str | None = None) -> int:
        """Record failed attempt `attempt` and keep the job's keys alive past its next run.

        Returns the job key's TTL in ms after the call (-2 if ARQ's job key is gone).
        """
        k = self.keys
        now = int(time.time() * 1000)
        next_run = now + int(delay_s * 1000)
        keep = int(delay_s * 1000) + KEEP_EXTRA_MS
        fields = {"job_id": job_id, "queue": queue, "task": task, "payload": payload_json(args, kwargs),
                  "attempts": attempt, "last_failed_ms": now, "next_run_ms": next_run,
                  "enqueued_ms": enqueued_ms, **failure_fields(exc, kind)}
        flat: list[Any] = []
        for f, v in fields.items():
            flat += [f, v]
        idem = k.idempotency(queue, idempotency_key) if idempotency_key else k.idempotency(queue, "-")
        return await self.scripts.retry(
            keys=[k.retry_index(queue), k.retry_record(queue, job_id), k.job(job_id), k.arq_retry(job_id),
                  idem, k.stats(queue)],
            args=[job_id, next_run, keep, now, 1 if idempotency_key else 0, *flat],
        )

    async def clear(self, queue: str, job_id: str) -> None:
        """Forget a job's retry record (it succeeded)."""
        async with self.redis.pipeline(transaction=False) as p:
            p.zrem(self.keys.retry_index(queue), job_id)
            p.delete(self.keys.retry_record(queue, job_id))
            await p.execute()

    async def size(self, queue: str) -> int:
        return await self.redis.zcard(self.keys.retry_index(queue))

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        h = await self.redis.hgetall(self.keys.retry_record(queue, job_id))
        return JobRecord.from_hash("retry", h) if h else None

    async def iter(self, queue: str) -> AsyncIterator[JobRecord]:
        """All waiting jobs of a queue, soonest next run first (paged through the index)."""
        async for rec in _iter_index(self.redis, self.keys.retry_index(queue),
                                     lambda j: self.keys.retry_record(queue, j), "retry"):
            yield rec

    async def run_now(self, queue: str, job_id: str) -> int:
        """Move a waiting job's next run to now. 1 done, 0 not waiting, -1 running right now."""
        k = self.keys
        return await self.scripts.retry_now(
            keys=[k.retry_index(queue), k.retry_record(queue, job_id), k.arq_queue(queue), k.job(job_id),
                  k.in_progress(job_id)],
            args=[job_id, int(time.time() * 1000)],
        )

    async def drop(self, queue: str, job_id: str) -> int:
        """Delete a waiting job and its ARQ keys. 1 dropped, 0 not waiting, -1 running right now."""
        k = self.keys
        return await self.scripts.retry_drop(
            keys=[k.retry_index(queue), k.retry_record(queue, job_id), k.arq_queue(queue), k.job(job_id),
                  k.arq_retry(job_id), k.in_progress(job_id)],
            args=[job_id],
        )


async def _iter_index(redis: Any, index: str, record_key, kind: str) -> AsyncIterator[JobRecord]:
    """Page through a sorted-set index and its record hashes; drops index entries whose record is gone."""
    start = 0
    while True:
        ids = await redis.zrange(index, start, start + PAGE - 1)
        if not ids:
            return
        async with redis.pipeline(transaction=False) as p:
            for j in ids:
                p.hgetall(record_key(j.decode()))
            hashes = await p.execute()
        for j, h in zip(ids, hashes, strict=True):
            if h:
                yield JobRecord.from_hash(kind, h)
            elif kind == "retry":
                # record expired with its job: stale index entry
                await redis.zrem(index, j)
                start -= 1
        start += PAGE
