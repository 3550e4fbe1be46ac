"""The dead-letter queue: exhausted and permanent failures, kept for people to look at and requeue.

Each dead job is a record hash (payload, error type, message, traceback, attempts, first and last
failure time, the pickled ARQ job for requeue) plus an entry in `dlq:<queue>` sorted by death time.
Bounded by count and age in the same Lua script that adds to it (defaults: 10,000 jobs per queue,
7 days), so the bound holds even if no operator ever looks; a hook fires when a job dies.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from arq.jobs import deserialize_job_raw, serialize_job

from taskkit.errors import JobConflict, JobNotFound
from taskkit.keys import Keys
from taskkit.records import JobRecord, failure_fields, payload_json
from taskkit.retryqueue import _iter_index
from taskkit.scripts import Scripts

DeathHook = Callable[[JobRecord], Awaitable[None] | None]

# A requeued job must start within this long (as a fresh enqueue: 7 days).
REQUEUE_TTL_MS = 7 * 86_400_000


@dataclass(frozen=True)
class DeadLetterPolicy:
    """Bounds of a dead-letter queue. Defaults: 10,000 jobs per queue, kept 7 days."""

    max_count: int = 10_000
    max_age_s: float = 7 * 86400.0


class DeadLetterQueue:
    """Read and change the dead-letter queue of any queue under one key prefix."""

    def __init__(self, redis: Any, keys: Keys, policy: DeadLetterPolicy | None = None,
                 scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.policy = policy or DeadLetterPolicy()
        self.scripts = scripts or Scripts(redis)

    async def add(self, *, queue: str, job_id: str, task: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  attempts: int, exc: BaseException, kind: str, reason: str, enqueued_ms: int,
                  idempotency_key: str | None = None, record: dict[str, Any] | None = None) -> int:
        """Dead-letter a job (removing it from the retry queue); returns how many old entries were trimmed.

        `record`, if given, receives the fields written (so a caller can still describe the job when the
        count/age bound trimmed it at once)."""
        k = self.keys
        fields = {"job_id": job_id, "queue": queue, "task": task, "payload": payload_json(args, kwargs),
                  "attempts": attempts, "reason": reason, "enqueued_ms": enqueued_ms,
                  "last_failed_ms": int(time.time() * 1000),
                  "raw": serialize_job(task, args, kwargs, None, enqueued_ms), **failure_fields(exc, kind)}
        if record is not None:
            record.update(fields, first_failed_ms=fields["last_failed_ms"], died_ms=fields["last_failed_ms"])
        flat: list[Any] = []
        for f, v in fields.items():
            flat += [f, v]
        idem = k.idempotency(queue, idempotency_key) if idempotency_key else k.idempotency(queue, "-")
        return await self.scripts.deadletter(
            keys=[k.dlq_index(queue), k.dlq_record(queue, job_id), k.retry_index(queue),
                  k.retry_record(queue, job_id), idem, k.stats(queue)],
            args=[job_id, int(time.time() * 1000), self.policy.max_count, k.dlq_record_prefix(queue),
                  int(self.policy.max_age_s * 1000), 1 if idempotency_key else 0, *flat],
        )

    async def trim(self, queue: str) -> int:
        """Apply the count and age bounds now; returns how many entries were removed."""
        k = self.keys
        return await self.scripts.deadletter(
            keys=[k.dlq_index(queue), k.dlq_index(queue), k.retry_index(queue), k.retry_index(queue),
                  k.idempotency(queue, "-"), k.stats(queue)],
            args=["", int(time.time() * 1000), self.policy.max_count, k.dlq_record_prefix(queue),
                  int(self.policy.max_age_s * 1000), 0],
        )

    async def size(self, queue: str) -> int:
        return await self.redis.zcard(self.keys.dlq_index(queue))

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        h = await self.redis.hgetall(self.keys.dlq_record(queue, job_id))
        return JobRecord.from_hash("dead", h) if h else None

    async def iter(self, queue: str) -> AsyncIterator[JobRecord]:
        """All dead jobs of a queue, oldest death first."""
        async for rec in _iter_index(self.redis, self.keys.dlq_index(queue),
                                     lambda j: self.keys.dlq_record(queue, j), "dead"):
            yield rec

    async def requeue(self, queue: str, job_id: str) -> None:
        """Put a dead job back on its queue to run now, with a fresh attempt count."""
        k = self.keys
        raw = await self.redis.hget(k.dlq_record(queue, job_id), "raw")
        if raw is None:
            raise JobNotFound(f"job {job_id!r} is not in the dead-letter queue of {queue!r}")
        function, args, kwargs, _try, _et = deserialize_job_raw(raw)
        now = int(time.time() * 1000)
        job = serialize_job(function, args, kwargs, None, now)
        r = await self.scripts.requeue_dead(
            keys=[k.dlq_index(queue), k.dlq_record(queue, job_id), k.arq_queue(queue), k.job(job_id),
                  k.result(job_id), k.arq_retry(job_id), k.in_progress(job_id)],
            args=[job_id, job, now, REQUEUE_TTL_MS],
        )
        if r == 0:
            raise JobNotFound(f"job {job_id!r} is not in the dead-letter queue of {queue!r}")
        if r == -1:
            raise JobConflict(f"a job with id {job_id!r} is already queued or running; drop it or wait")

    async def remove(self, queue: str, job_ids: list[str]) -> int:
        """Delete dead jobs (purge); returns how many were there."""
        removed = 0
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i:i + 500]
            async with self.redis.pipeline(transaction=True) as p:
                p.zrem(self.keys.dlq_index(queue), *chunk)
                p.delete(*[self.keys.dlq_record(queue, j) for j in chunk])
                n, _ = await p.execute()
            removed += n
        return removed
