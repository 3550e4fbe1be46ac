"""The producer: enqueue a job with idempotency and backpressure in one atomic Redis step.

Why not ARQ's `enqueue_job`: it dedups only by job id while the job or its result exists, and cannot
refuse work. Here one Lua script (taskkit/lua/enqueue.lua) checks the idempotency marker, checks
depth against the watermarks (with hysteresis), and writes ARQ's own job key and queue entry — so an
ARQ worker runs the job exactly as if ARQ had enqueued it. `enqueue_many` does the same for a whole
request in one script call (taskkit/lua/enqueue_many.lua): one round trip, one watermark decision,
all or nothing.

Redis replicates asynchronously: a job acknowledged just before a failover may not have reached the replica
that is promoted. `wait_replicas` closes that window — the script and a WAIT go in one pipeline (WAIT counts
the writes of its own connection) and the enqueue is acknowledged only once that many replicas have the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from arq.jobs import serialize_job

from taskkit import metrics, tracing
from taskkit.backpressure import Watermarks
from taskkit.errors import QueueFull, QueueUnavailable, UnknownTask
from taskkit.idempotency import DEFAULT_WINDOW_S, Enqueued, KeyFunc, key_for
from taskkit.keys import DEFAULT_PREFIX, Keys
from taskkit.scripts import Scripts
from taskkit.tasks import TaskSpec, spec_of

# A queued job not started within this long expires (ARQ: "job expired"); ARQ itself uses 1 day.
DEFAULT_JOB_TTL_S = 7 * 86400.0
_STATES = {1: "created", 0: "queued", 2: "recent"}


@dataclass(frozen=True)
class JobSpec:
    """One job of an `enqueue_many` request: its arguments and idempotency key (None: the task's own)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.args, tuple | list) or not isinstance(self.kwargs, Mapping) or not (
                self.idempotency_key is None or isinstance(self.idempotency_key, str)):
            raise TypeError(f"a job is (args tuple, kwargs dict, idempotency key str or None), got {self!r}")


@dataclass(frozen=True)
class EnqueuedMany:
    """What `enqueue_many` did: one Enqueued per job, in request order, and the counts.

    `accepted` jobs were created now; `duplicates` were not (an equal job is queued, was recently done,
    or came earlier in the same request: each outcome's `job_id` names that job).
    """

    queue: str
    jobs: tuple[Enqueued, ...]

    @property
    def accepted(self) -> int:
        return sum(1 for j in self.jobs if j.created)

    @property
    def duplicates(self) -> int:
        return len(self.jobs) - self.accepted


class Producer:
    """Enqueues jobs for taskkit workers. One per process; safe for concurrent use.

    `watermarks` is one Watermarks for every queue, or a mapping queue → Watermarks (queues not in it
    get the defaults); `idempotency_window_s` (default 1 h) is how long a done job's key still dedups.
    `wait_replicas` > 0: a new job is acknowledged only once that many replicas have it (WAIT, at most
    `wait_timeout_ms`); fewer → QueueUnavailable (the job may exist: sending again is deduplicated by its key).
    """

    def __init__(self, redis: Any, *, prefix: str = DEFAULT_PREFIX,
                 watermarks: Watermarks | Mapping[str, Watermarks] | None = None,
                 idempotency_window_s: float = DEFAULT_WINDOW_S, job_ttl_s: float = DEFAULT_JOB_TTL_S,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._watermarks = watermarks
        self.idempotency_window_s = idempotency_window_s
        self.job_ttl_s = job_ttl_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._scripts = Scripts(redis)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Producer:
        from taskkit.connection import QueueRedis

        return cls.from_config(QueueRedis(url=url), **kwargs)

    @classmethod
    def from_config(cls, queue_redis: Any, **kwargs: Any) -> Producer:
        """A Producer on its own client of the queues' Redis (taskkit.connection.QueueRedis), with its WAIT
        setting; `close()` closes the client."""
        kwargs.setdefault("wait_replicas", queue_redis.wait_replicas)
        kwargs.setdefault("wait_timeout_ms", queue_redis.wait_timeout_ms)
        return cls(queue_redis.client(), **kwargs)

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
        name, queue, key_func = self._resolve(task, _queue, "enqueue", "_queue=")
        with tracing.send(name, queue, 1) as span:  # its context rides in the job (taskkit/tracing.py)
            e = await self._enqueue(span, name, queue, key_func, args, kwargs, _idempotency_key, _defer_s,
                                    _backpressure)
            tracing.enqueued(span, [e])
            return e

    async def _enqueue(self, span: Any, name: str, queue: str, key_func: KeyFunc | None, args: tuple[Any, ...],
                       kwargs: dict[str, Any], _idempotency_key: str | None, _defer_s: float,
                       _backpressure: bool) -> Enqueued:
        key = _idempotency_key if _idempotency_key is not None else key_for(key_func, args, kwargs)
        k = self.keys
        token, job_id = self._job_id(queue, key)
        now = int(time.time() * 1000)
        score = now + int(_defer_s * 1000)
        job = serialize_job(name, args, tracing.carry(kwargs, span), None, now)
        wm = self.watermarks(queue)
        status, existing, ra_ms, depth, age_ms = await self._replicated(
            self._scripts.enqueue, lambda out: out[0] == 1, queue,
            keys=[k.arq_queue(queue), k.job(job_id), k.result(job_id),
                  k.idempotency(queue, token), k.backpressure(queue), k.queues, k.stats(queue)],
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

    async def enqueue_many(self, task: Any, jobs: Iterable[JobSpec | tuple[Any, ...]], *,
                           queue: str | None = None, defer_s: float = 0.0,
                           backpressure: bool = True) -> EnqueuedMany:
        """Enqueue many jobs of `task` (as in `enqueue`) in ONE Redis round trip, all or nothing.

        `jobs` are JobSpec(args, kwargs, idempotency_key) or (args, kwargs, idempotency_key) tuples; a job
        without a key gets the task's declared one. Each job is deduplicated as in `enqueue` — against
        queued and recently done jobs, and against earlier jobs of the same request. The new jobs are
        admitted together only if the queue is open and depth + new <= high (`admit_many`); otherwise
        nothing is written (no job, no marker) and QueueFull(retry_after) is raised, the estimate as in
        `enqueue`, one rejection counted. More distinct jobs than the high watermark can never fit:
        ValueError. One script over every job's keys: not cluster-safe by design (a queue lives on one
        Redis node). Each job is written exactly as `enqueue` writes it, so ARQ and FastWorker run it.
        """
        name, queue, key_func = self._resolve(task, queue, "enqueue_many", "queue=")
        with tracing.send(name, queue, 0) as span:  # one span for the one script call; every job carries it
            many = await self._enqueue_many(span, name, queue, key_func, jobs, defer_s, backpressure)
            if span.is_recording():
                span.set_attribute("messaging.batch.message_count", len(many.jobs))
            tracing.enqueued(span, many.jobs)
            return many

    async def _enqueue_many(self, span: Any, name: str, queue: str, key_func: KeyFunc | None,
                            jobs: Iterable[JobSpec | tuple[Any, ...]], defer_s: float,
                            backpressure: bool) -> EnqueuedMany:
        k = self.keys
        now = int(time.time() * 1000)
        score = now + int(defer_s * 1000)
        window_ms = int(self.idempotency_window_s * 1000)
        wm = self.watermarks(queue)
        slot: list[int] = []          # request position → index into the distinct jobs sent
        first: dict[str, int] = {}    # job id → its index
        job_keys: list[str] = []
        job_args: list[Any] = []
        for spec in jobs:
            j = spec if isinstance(spec, JobSpec) else JobSpec(*spec)
            args, kwargs = tuple(j.args), dict(j.kwargs)
            key = j.idempotency_key if j.idempotency_key is not None else key_for(key_func, args, kwargs)
            token, job_id = self._job_id(queue, key)
            if job_id in first:
                slot.append(first[job_id])
                continue
            first[job_id] = len(first)
            slot.append(first[job_id])
            job_keys += [k.job(job_id), k.result(job_id), k.idempotency(queue, token)]
            job_args += [job_id, serialize_job(name, args, tracing.carry(kwargs, span), None, now),
                         1 if key and window_ms > 0 else 0]
        if not slot:
            return EnqueuedMany(queue=queue, jobs=())
        if backpressure and len(first) > wm.high:
            raise ValueError(f"enqueue_many: {len(first)} jobs can never fit under queue {queue!r}'s high "
                             f"watermark ({wm.high}): split the request")
        out = await self._replicated(
            self._scripts.enqueue_many, lambda out: 1 in out[4::2], queue,
            keys=[k.arq_queue(queue), k.backpressure(queue), k.queues, k.stats(queue), *job_keys],
            args=[now, queue, score, int(self.job_ttl_s * 1000) + (score - now), window_ms,
                  wm.high, wm.low, int(wm.max_age_s * 1000), int(wm.min_retry_after_s * 1000),
                  int(wm.max_retry_after_s * 1000), 1 if backpressure else 0, *job_args],
        )
        status, ra_ms, depth, age_ms = out[:4]
        if status == -1:
            metrics.REJECTIONS.labels(queue).inc()
            raise QueueFull(queue, ra_ms / 1000, depth=depth, oldest_age_s=age_ms / 1000)
        distinct = [
            Enqueued(job_id=jid.decode() if isinstance(jid, bytes) else jid, queue=queue,
                     created=state == 1, state=_STATES[state])  # type: ignore[arg-type]
            for state, jid in zip(out[4::2], out[5::2], strict=True)
        ]
        seen: set[int] = set()
        outcomes = []
        for i in slot:
            e = distinct[i]
            if i in seen and e.created:  # a repeat within the request: a duplicate of the job just created
                e = Enqueued(job_id=e.job_id, queue=queue, created=False, state="queued")
            seen.add(i)
            outcomes.append(e)
        return EnqueuedMany(queue=queue, jobs=tuple(outcomes))

    async def _replicated(self, script: Any, wrote: Any, queue: str, *, keys: list[Any], args: list[Any]) -> Any:
        """Run an enqueue script; with `wait_replicas`, WAIT on the same connection and refuse to acknowledge a
        write (`wrote(out)`) fewer replicas have."""
        if not self.wait_replicas:
            return await script(keys=keys, args=args)
        async with self.redis.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            out, acked = await pipe.execute()
        if wrote(out) and acked < self.wait_replicas:
            raise QueueUnavailable(queue, f"the job was written but only {acked} of {self.wait_replicas} replicas "
                                          f"confirmed it within {self.wait_timeout_ms} ms, so a failover could lose "
                                          "it; send it again (its idempotency key deduplicates)")
        return out

    @staticmethod
    def _resolve(task: Any, queue: str | None, caller: str, param: str) -> tuple[str, str, KeyFunc | None]:
        """(task name, queue, declared key function) of a declared task, a TaskSpec, or a name + queue."""
        if isinstance(task, str):
            if queue is None:
                raise UnknownTask(f"{caller}({task!r}): a task given by name needs {param}")
            return task, queue, None
        spec: TaskSpec = spec_of(task)
        return spec.name, queue or spec.queue, spec.idempotency_key

    def _job_id(self, queue: str, key: str | None) -> tuple[str, str]:
        """(idempotency token, job id) of a job: derived from its key, or a fresh id and token "-"."""
        k = self.keys
        if key:
            return k.idem_token(key), k.idempotent_job_id(queue, key)
        return "-", k.new_job_id(queue)
