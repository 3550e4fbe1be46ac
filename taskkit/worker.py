"""Build an ARQ WorkerSettings class for one queue from declared tasks, and run each job under the
retry / dead-letter rules.

ARQ re-runs a job only when it raises `arq.Retry`; every other exception fails it at once and leaves
only a result key. So each task is wrapped: a transient failure becomes `Retry(defer=backoff)` after the
retry queue has recorded it (and raised the TTL of ARQ's keys), a permanent or final one is written to
the dead-letter queue and then re-raised so ARQ's own result says "failed" too. The timeout is enforced
inside the wrapper (ARQ's own one would fail the job without a dead-letter record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from arq.connections import RedisSettings
from arq.worker import Retry, func
from redis.exceptions import RedisError

from taskkit import metrics
from taskkit.backpressure import AimdController, AimdPolicy
from taskkit.connection import QueueRedis
from taskkit.deadletter import DeadLetterPolicy, DeadLetterQueue, DeathHook
from taskkit.errors import WorkerLost
from taskkit.idempotency import DEFAULT_WINDOW_S, mark_done
from taskkit.keys import DEFAULT_PREFIX, Keys
from taskkit.records import JobRecord
from taskkit.retry import PERMANENT, TRANSIENT, classify, error_class
from taskkit.retryqueue import RetryQueue
from taskkit.scripts import Scripts
from taskkit.tasks import TaskSpec, spec_of
from taskkit.tracing import TRACE_KWARG
from taskkit.tracing import process as traced_process

log = logging.getLogger("taskkit.worker")

# ARQ counts tries itself and fails a job past max_tries without calling it; taskkit counts instead
# (so it can dead-letter), hence a bound ARQ never reaches.
ARQ_MAX_TRIES = 1_000_000
# Grace between taskkit's timeout and ARQ's, so taskkit's fires first.
TIMEOUT_GRACE_S = 1.0
DEFAULT_HEALTH_INTERVAL_S = 5.0
# When Redis refuses to record a failure (retry or dead-letter), the attempt is re-run after this long.
STORE_FAILURE_RETRY_S = 5.0

Hook = Callable[[dict[str, Any]], Awaitable[None]]


class Runtime:
    """Per-worker-process state of taskkit, in `ctx["taskkit"]`: Redis helpers, counters, health loop."""

    def __init__(self, redis: Any, *, queue: str, specs: dict[str, TaskSpec], keys: Keys,
                 dead_letter: DeadLetterPolicy, on_death: DeathHook | None, idempotency_window_s: float,
                 health_interval_s: float, concurrency: int) -> None:
        self.redis = redis
        self.queue = queue
        self.specs = specs
        self.keys = keys
        self.scripts = Scripts(redis)
        self.retries = RetryQueue(redis, keys, self.scripts)
        self.dead = DeadLetterQueue(redis, keys, dead_letter, self.scripts)
        self.on_death = on_death
        self.idempotency_window_s = idempotency_window_s
        self.health_interval_s = health_interval_s
        self.concurrency = concurrency
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.started_ms = int(time.time() * 1000)
        self.completed = 0
        self.retried = 0
        self.died = 0
        self.in_flight = 0
        self._flushed_completed = 0
        self._last_tick: tuple[float, int] = (time.monotonic(), 0)
        self._health_task: asyncio.Task[None] | None = None
        self._aimd: dict[str, AimdController] = {}
        metrics.IN_FLIGHT.labels(queue).set_function(lambda: self.in_flight)  # read at scrape time
        self._completed_counters = {name: metrics.COMPLETED.labels(queue, name) for name in specs}

    # --- per job ------------------------------------------------------------------------------------
    def _job_fields(self, spec: TaskSpec, ctx: dict[str, Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> dict[str, Any]:
        """What the retry and dead-letter records need about a job (built only when it failed)."""
        enqueued = ctx.get("enqueue_time")
        return dict(queue=self.queue, job_id=ctx["job_id"], task=spec.name, args=args, kwargs=kwargs,
                    enqueued_ms=int(enqueued.timestamp() * 1000) if enqueued else 0,
                    idempotency_key=self.keys.idem_token_of_job(self.queue, ctx["job_id"]))

    async def run(self, spec: TaskSpec, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The producer's trace context (taskkit/tracing.py) leaves kwargs here: neither the task nor the retry and
        # dead-letter records see it; each attempt is one span, a child of the producer's.
        carrier = kwargs.pop(TRACE_KWARG, None)
        with traced_process(spec.name, self.queue, ctx, carrier):
            return await self._run(spec, ctx, args, kwargs)

    async def _run(self, spec: TaskSpec, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The success path of a first attempt makes no Redis call of its own: that is what keeps a
        # no-op job within a few percent of plain ARQ.
        attempt: int = ctx["job_try"]
        ctx["attempt"] = attempt
        if attempt > spec.retry.max_attempts:
            # Only reachable when earlier attempts ended with the worker killed or stopped mid-job.
            exc = WorkerLost(f"attempt {attempt} of {spec.retry.max_attempts}: earlier attempts ended "
                             "with the worker dying or stopping while the job ran")
            await self._dead(spec, exc, PERMANENT, "worker-lost", attempt - 1, self._job_fields(spec, ctx, args, kwargs))
            raise exc
        self.in_flight += 1
        try:
            async with asyncio.timeout(spec.timeout_s):
                result = await spec.fn(ctx, *args, **kwargs)
        except (asyncio.CancelledError, Retry):
            raise  # worker shutdown (ARQ runs it again) or an explicit arq.Retry: ARQ's rules apply
        except Exception as exc:
            verdict = classify(exc, spec.classify)
            common = self._job_fields(spec, ctx, args, kwargs)
            try:
                if verdict.transient and not spec.retry.exhausted(attempt):
                    delay = spec.retry.delay(attempt, hint=verdict.retry_after)
                    await self.retries.schedule(attempt=attempt, exc=exc, kind=TRANSIENT, delay_s=delay, **common)
                    self.retried += 1
                    metrics.RETRIED.labels(self.queue, spec.name, error_class(exc)).inc()
                    raise Retry(defer=delay) from exc
                reason = "exhausted" if verdict.transient else "permanent"
                await self._dead(spec, exc, verdict.kind, reason, attempt, common)
            except RedisError as store_exc:
                # Could not record the failure: never let ARQ drop the job silently, run it again later.
                log.error("job %s: cannot record its failure (%s); running it again in %.0fs", ctx["job_id"],
                          store_exc, STORE_FAILURE_RETRY_S)
                raise Retry(defer=STORE_FAILURE_RETRY_S) from exc
            raise
        finally:
            self.in_flight -= 1
        if attempt > 1:
            await self.retries.clear(self.queue, ctx["job_id"])
        token = self.keys.idem_token_of_job(self.queue, ctx["job_id"])
        if token is not None:  # enqueued with an idempotency key: start its "recently done" window
            try:
                await mark_done(self.redis, self.keys, self.queue, token, ctx["job_id"], self.idempotency_window_s)
            except RedisError as exc:  # the job did succeed: a lost marker only shortens its dedup window
                log.warning("job %s: done, but its idempotency marker was not written (%s)", ctx["job_id"], exc)
        self.completed += 1
        self._completed_counters[spec.name].inc()
        return result

    async def _dead(self, spec: TaskSpec, exc: BaseException, kind: str, reason: str, attempts: int,
                    common: dict[str, Any]) -> None:
        written: dict[str, Any] = {}
        await self.dead.add(attempts=attempts, exc=exc, kind=kind, reason=reason, record=written, **common)
        self.died += 1
        metrics.DEAD.labels(self.queue, spec.name, error_class(exc)).inc()
        log.warning("job %s (%s) dead-lettered after %d attempt(s): %s: %s", common["job_id"], spec.name,
                    attempts, type(exc).__name__, exc)
        if self.on_death is not None:
            rec = await self.dead.get(self.queue, common["job_id"])
            if rec is None:  # already trimmed by the count bound (many jobs died at once): the hook still fires
                rec = JobRecord.from_hash("dead", {k: v if isinstance(v, bytes) else str(v).encode()
                                                   for k, v in written.items()})
            if rec is not None:
                try:
                    r = self.on_death(rec)
                    if asyncio.iscoroutine(r):
                        await r
                except Exception:  # a broken hook must not lose the job's failure result
                    log.exception("dead-letter hook failed for job %s", common["job_id"])

    # --- shared helpers for tasks --------------------------------------------------------------------
    def aimd(self, name: str, policy: AimdPolicy | None = None) -> AimdController:
        """The AIMD controller `name` (one per process, state shared through Redis)."""
        c = self._aimd.get(name)
        if c is None:
            c = self._aimd[name] = AimdController(self.redis, name, keys=self.keys, policy=policy,
                                                  scripts=self.scripts)
        return c

    # --- health ----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.redis.sadd(self.keys.queues, self.queue)
        await self.tick()
        self._health_task = asyncio.create_task(self._health_loop(), name="taskkit-health")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        with contextlib.suppress(Exception):  # best effort on the way out
            await self.tick()
            async with self.redis.pipeline(transaction=False) as p:
                p.delete(self.keys.health(self.queue, self.worker_id))
                p.zrem(self.keys.workers(self.queue), self.worker_id)
                await p.execute()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.tick()
            except Exception:  # Redis blip: keep the loop, the next tick retries
                log.exception("taskkit health refresh failed")

    async def tick(self) -> dict[str, Any]:
        """Refresh this worker's health record, the queue's drain rate and the shared-state gauges."""
        k, q = self.keys, self.queue
        now_ms = int(time.time() * 1000)
        mono = time.monotonic()
        last_t, last_c = self._last_tick
        rate = (self.completed - last_c) / (mono - last_t) if mono > last_t else 0.0
        self._last_tick = (mono, self.completed)
        delta = self.completed - self._flushed_completed
        self._flushed_completed = self.completed
        record = {"worker_id": self.worker_id, "queue": q, "pid": os.getpid(), "host": socket.gethostname(),
                  "started_ms": self.started_ms, "updated_ms": now_ms, "completed": self.completed,
                  "retried": self.retried, "dead": self.died, "in_flight": self.in_flight,
                  "concurrency": self.concurrency, "rate": f"{rate:.3f}"}
        stale = now_ms - int(3 * self.health_interval_s * 1000)
        async with self.redis.pipeline(transaction=False) as p:
            p.hset(k.health(q, self.worker_id), mapping=record)
            p.pexpire(k.health(q, self.worker_id), int(3 * self.health_interval_s * 1000))
            p.zadd(k.workers(q), {self.worker_id: now_ms})
            p.zremrangebyscore(k.workers(q), "-inf", stale)
            if delta:
                p.hincrby(k.stats(q), "completed", delta)
            p.zcount(k.arq_queue(q), "-inf", now_ms)
            p.zcount(k.arq_queue(q), f"({now_ms}", "+inf")
            p.zrangebyscore(k.arq_queue(q), "-inf", now_ms, start=0, num=1, withscores=True)
            p.zcard(k.retry_index(q))
            p.zcard(k.dlq_index(q))
            p.zrange(k.workers(q), 0, -1)
            res = await p.execute()
        depth, scheduled, oldest, retry_n, dlq_n, workers = res[-6:]
        oldest_age = (now_ms - oldest[0][1]) / 1000 if oldest else 0.0
        async with self.redis.pipeline(transaction=False) as p:
            for w in workers:
                p.hget(k.health(q, w.decode()), "rate")
            rates = await p.execute()
        total_rate = sum(float(r) for r in rates if r is not None)
        await self.redis.hset(k.backpressure(q), "rate", f"{total_rate:.3f}")
        await self.dead.trim(q)
        metrics.QUEUE_DEPTH.labels(q).set(depth)
        metrics.QUEUE_SCHEDULED.labels(q).set(scheduled)
        metrics.OLDEST_AGE.labels(q).set(oldest_age)
        metrics.RETRY_SIZE.labels(q).set(retry_n)
        metrics.DLQ_SIZE.labels(q).set(dlq_n)
        return record


def _wrap(spec: TaskSpec) -> Callable[..., Awaitable[Any]]:
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return await ctx["taskkit"].run(spec, ctx, args, kwargs)

    run.__name__ = run.__qualname__ = spec.name
    run.__doc__ = spec.fn.__doc__
    return run


_metrics_servers: set[int] = set()


def worker_settings(queue: str, tasks: Sequence[Any], *, redis_settings: RedisSettings | None = None,
                    concurrency: int = 10, prefix: str = DEFAULT_PREFIX,
                    dead_letter: DeadLetterPolicy | None = None, on_death: DeathHook | None = None,
                    idempotency_window_s: float = DEFAULT_WINDOW_S,
                    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S, poll_delay_s: float = 0.5,
                    keep_result_s: float = 3600, on_startup: Hook | None = None,
                    on_shutdown: Hook | None = None, metrics_port: int | None = None,
                    extra: dict[str, Any] | None = None, class_name: str = "WorkerSettings") -> type:
    """An ARQ WorkerSettings class running `tasks` (declared with @task) from `queue`.

    Run it with `arq module.WorkerSettings` or `arq.worker.run_worker(cls)`. `concurrency` is ARQ's
    max_jobs; `extra` are more Worker arguments passed through as is (e.g. `burst`, `handle_signals`).
    """
    specs = {s.name: s for s in (spec_of(t) for t in tasks)}
    if not specs:
        raise ValueError(f"queue {queue!r}: no tasks given")
    wrong = [s.name for s in specs.values() if s.queue != queue]
    if wrong:
        raise ValueError(f"tasks {wrong} are declared for another queue than {queue!r}")
    keys = Keys(prefix)
    dlq = dead_letter or DeadLetterPolicy()

    async def startup(ctx: dict[str, Any]) -> None:
        rt = Runtime(ctx["redis"], queue=queue, specs=specs, keys=keys, dead_letter=dlq, on_death=on_death,
                     idempotency_window_s=idempotency_window_s, health_interval_s=health_interval_s,
                     concurrency=concurrency)
        ctx["taskkit"] = rt
        if metrics_port and metrics_port not in _metrics_servers:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
            _metrics_servers.add(metrics_port)
        await rt.start()
        if on_startup is not None:
            await on_startup(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        try:
            if on_shutdown is not None:
                await on_shutdown(ctx)
        finally:
            rt = ctx.get("taskkit")
            if rt is not None:
                await rt.stop()

    functions = [
        func(_wrap(s), name=s.name, timeout=s.timeout_s + TIMEOUT_GRACE_S, max_tries=ARQ_MAX_TRIES,
             keep_result=keep_result_s)
        for s in specs.values()
    ]
    attrs: dict[str, Any] = {
        "functions": functions,
        "queue_name": keys.arq_queue(queue),
        "redis_settings": redis_settings or RedisSettings(),
        "max_jobs": concurrency,
        "max_tries": ARQ_MAX_TRIES,
        "keep_result": keep_result_s,
        "poll_delay": poll_delay_s,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "health_check_interval": health_interval_s,
        "taskkit_queue": queue,
        "taskkit_prefix": prefix,
        **(extra or {}),
    }
    return type(class_name, (), attrs)


class ServiceConfig(Protocol):
    """What a service worker needs from the settings the edge loaded (hotpath's CommonSettings has it)."""

    taskkit_prefix: str

    def queue_redis_config(self) -> QueueRedis:
        """The queues' Redis (one node, or a Sentinel-managed master)."""


# A service worker's drain on SIGTERM: running jobs get this long to finish, then they run again elsewhere.
SHUTDOWN_DRAIN_S = 8


def service_worker_settings(queue: str, tasks: Sequence[Any], settings: ServiceConfig, *, concurrency: int,
                            check: Callable[[Any], Awaitable[None]] | None = None, **kwargs: Any) -> type:
    """The WorkerSettings of one of hotpath's workers (`hotpath worker <kind>`, `arq <kind>_worker.worker.
    WorkerSettings`): the queues' Redis (`settings.queue_redis_config()`; a Cluster node is refused at start-up)
    and key prefix from `settings`, `ctx["settings"] = settings`, `await check(settings)` at start-up (a
    dependency that does not answer stops the worker at once, with the setting to fix), SIGTERM handled with a
    drain of SHUTDOWN_DRAIN_S. `kwargs` go to worker_settings.

    So a worker module holds only what differs: its queue, its tasks, its check and its concurrency.
    """

    queue_redis = settings.queue_redis_config()

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        await queue_redis.check()
        if check is not None:
            await check(settings)

    extra = {"handle_signals": True, "job_completion_wait": SHUTDOWN_DRAIN_S, **kwargs.pop("extra", {})}
    return worker_settings(
        queue, tasks,
        redis_settings=queue_redis.arq_settings(),
        concurrency=concurrency, prefix=settings.taskkit_prefix, on_startup=startup, extra=extra, **kwargs,
    )


def redis_settings_from_url(url: str, **kwargs: Any) -> RedisSettings:
    """ARQ RedisSettings of one node from a redis:// URL (QueueRedis(url).arq_settings(**kwargs))."""
    return QueueRedis(url=url).arq_settings(**kwargs)


__all__ = ["Runtime", "ServiceConfig", "redis_settings_from_url", "service_worker_settings", "worker_settings"]
