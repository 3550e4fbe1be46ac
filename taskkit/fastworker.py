"""FastWorker: an arq.worker.Worker that starts and finishes jobs in batches, on ARQ's own keys.

ARQ 0.28 spends about 0.45-0.65 ms of worker CPU and ~6 Redis round trips on every job: per id read from
the queue, WATCH + EXISTS + ZSCORE + MULTI/SET/EXEC to claim it, a pipeline to read the job and count the
try, a pipeline to finish it, plus a ZCARD per poll in burst mode. One worker process therefore starts at
most ~1,500-2,000 jobs/s, whatever the jobs do.

FastWorker keeps every key and every step of ARQ, but groups them:

- claim: one Lua call (taskkit/lua/claim.lua) takes up to `max_jobs - running` ready ids, oldest first,
  skipping those with an in-progress key; for each it sets the in-progress key (ARQ's in-progress timeout),
  counts the try on `arq:retry:<id>` (TTL 88400 s) and returns the job data. Atomic, so it mixes safely
  with plain ARQ workers (whose WATCH on the in-progress key then fails) and other FastWorkers.
- finish: jobs that end in the same event-loop turn (or while the previous write is in flight) are written
  together by one Lua call (taskkit/lua/finish.lua) doing what `finish_job` / `finish_failed_job` do: delete
  the in-progress key, set `arq:result:<id>` for `keep_result`, delete the job and retry keys, remove the
  id from the queue (or ZINCRBY it for `Retry(defer=)`). A job's task ends only once its write is done.
- the job function runs in the job's own task (ARQ makes a second task per job) under `asyncio.timeout`.

Same semantics as ARQ for: results (readable by `arq.jobs.Job.result`), `Retry`, max_tries, job expiry,
cancellation on shutdown (the job runs again), a killed worker (its jobs run again once their in-progress
keys expire: nothing is removed from the queue before the job's end is written), burst mode, health
check key, cron jobs, on_job_start/on_job_end/after_job_end. Not supported: `allow_abort_jobs=True` -- such
a worker runs ARQ's own loop unchanged. `arq module.WorkerSettings` still builds a plain ARQ Worker; use
`create_worker(settings, fast=True)` / `run_worker(settings)` from here for the fast path. One difference from
ARQ's loop, which exits on the first Redis error: a Redis that stops answering (a failover) pauses the loop, which
then reconnects (to the new master, with Sentinel); a job whose end could not be written runs again.

`_run_claimed` and `close` are copies of ARQ 0.28.0's `Worker.run_job` and `Worker.close`, so importing
this module with another ARQ version fails (see `check_arq_version`) until both are re-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import signal
from typing import Any

from arq.connections import create_pool, log_redis_info
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    keep_cronjob_progress,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms, to_ms, truncate
from arq.worker import JobExecutionFailed, Retry, RetryJob, Worker, get_kwargs
from redis.exceptions import RedisError

from taskkit.scripts import source

# The ARQ release whose Worker.run_job and Worker.close this module copies.
ARQ_VERSION = "0.28.0"
# What the main loop survives (unlike ARQ's, which exits): Redis away for a while, e.g. during a failover.
REDIS_DOWN = (RedisError, OSError)
REDIS_DOWN_PAUSE_S = 0.5  # first pause; doubling (with jitter) up to REDIS_DOWN_PAUSE_MAX_S
REDIS_DOWN_PAUSE_MAX_S = 5.0


def check_arq_version(installed: str) -> None:
    """Refuse an ARQ other than the one FastWorker's copied code was written against."""
    if installed != ARQ_VERSION:
        raise RuntimeError(
            f"taskkit.fastworker copies arq {ARQ_VERSION}'s internals, but arq {installed} is installed. "
            f"Re-check both copies against arq/worker.py of {installed}: FastWorker._run_claimed (a copy of "
            "arq.worker.Worker.run_job) and FastWorker.close (a copy of arq.worker.Worker.close), then set "
            "ARQ_VERSION in taskkit/fastworker.py (or install arq==" + ARQ_VERSION + ")."
        )


check_arq_version(importlib.metadata.version("arq"))

logger = logging.getLogger("arq.worker")  # the same log lines as ARQ's worker
_no_result = object()


class FastWorker(Worker):
    """A drop-in arq Worker (same arguments) with batched job claims and batched job ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast = not self.allow_abort_jobs
        self._slot_free = asyncio.Event()
        self._task_error: BaseException | None = None
        self._finish_args: list[Any] = []
        self._finish_fut: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._claim_script: Any = None
        self._finish_script: Any = None
        self._in_progress_ms = int(self.in_progress_timeout_s * 1000)
        self._down_since: float | None = None  # when Redis stopped answering the loop (None: it answers)
        self._down_pause = REDIS_DOWN_PAUSE_S  # the next pause while it does not answer
        self.claims = 0  # Lua claim calls made (for tests and benchmarks)
        self.finish_writes = 0  # Lua finish calls made

    # --- main loop ------------------------------------------------------------------------------
    async def main(self) -> None:
        if not self._fast:
            return await super().main()
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        logger.info("Starting worker (taskkit fast path, %s loop) for %d functions: %s",
                    type(asyncio.get_running_loop()).__module__.split(".")[0], len(self.functions),
                    ", ".join(self.functions))
        await log_redis_info(self.pool, logger.info)
        self.ctx["redis"] = self.pool
        self._claim_script = self.pool.register_script(source("claim"))
        self._finish_script = self.pool.register_script(source("finish"))
        if self.on_startup:
            await self.on_startup(self.ctx)

        poll_delay = self.poll_delay_s
        while True:
            if self._task_error is not None:
                raise self._task_error
            self._slot_free.clear()  # before counting free slots, so no job end between here and the wait is missed
            want = claimed = 0
            if self.allow_pick_jobs:
                want = self.max_jobs - self.job_counter
                if self.burst and self.max_burst_jobs >= 0:
                    want = min(want, self.max_burst_jobs - self._jobs_started())
                if want > 0:
                    try:
                        claimed = await self._claim(want)
                    except REDIS_DOWN as exc:
                        await self._redis_down(exc)
                        continue
            try:
                await self.heart_beat()
            except REDIS_DOWN as exc:
                await self._redis_down(exc)
                continue
            if self._down_since is not None:
                logger.warning("Redis answers again after %.1fs", self.loop.time() - self._down_since)
                self._down_since = None
            if self.burst:
                if 0 <= self.max_burst_jobs <= self._jobs_started():
                    await asyncio.gather(*self.tasks.values())
                    return None
                if claimed < want and await self.pool.zcard(self.queue_name) == 0:
                    await asyncio.gather(*self.tasks.values())
                    return None
            if want > 0 and claimed == want:
                continue  # the queue may hold more: take them as soon as slots free up
            if want > 0 or not self.allow_pick_jobs:
                await asyncio.sleep(poll_delay)  # queue drained (or not picking): poll like ARQ
            else:
                # every slot busy: wake when a job ends (or after poll_delay, for the heartbeat)
                if not self._slot_free.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_free.wait(), poll_delay)

    async def _claim(self, want: int) -> int:
        res = await self._claim_script(
            keys=[self.queue_name],
            args=[timestamp_ms(), want, max(self.queue_read_limit, want), self._in_progress_ms,
                  in_progress_key_prefix, job_key_prefix, retry_key_prefix],
        )
        self.claims += 1
        create_task = self.loop.create_task
        for i in range(0, len(res), 4):
            job_id = res[i].decode()
            self.job_counter += 1
            t = create_task(self._run_claimed(job_id, int(float(res[i + 1])), res[i + 2], int(res[i + 3])),
                            name=job_id)
            t.add_done_callback(self._job_done)
            self.tasks[job_id] = t
        return len(res) // 4

    async def _redis_down(self, exc: BaseException) -> None:
        """Redis did not answer (a failover, a restart): say so once, wait, try again — the pool reconnects (with
        Sentinel, to the master it names now), so the worker follows a new primary without a restart."""
        now = self.loop.time()
        if self._down_since is None:
            self._down_since = now
            self._down_pause = REDIS_DOWN_PAUSE_S
            logger.warning("Redis did not answer (%s: %s); retrying with backoff (%.1fs doubling to %.0fs)",
                           type(exc).__name__, exc, REDIS_DOWN_PAUSE_S, REDIS_DOWN_PAUSE_MAX_S)
        # Jitter: workers that lost one Redis together do not all come back in the same instant.
        await asyncio.sleep(self._down_pause * random.uniform(0.5, 1.0))
        self._down_pause = min(REDIS_DOWN_PAUSE_MAX_S, self._down_pause * 2)

    def _job_done(self, t: asyncio.Task[Any]) -> None:
        self.job_counter -= 1
        job_id = t.get_name()
        if self.tasks.get(job_id) is t:
            del self.tasks[job_id]
        if not t.cancelled() and t.exception() is not None and self._task_error is None:
            exc = t.exception()
            if isinstance(exc, REDIS_DOWN):  # its end was not written: it runs again once its in-progress key expires
                logger.warning("job %s: its end could not be written (%s: %s); it runs again after its in-progress "
                               "timeout", job_id, type(exc).__name__, exc)
            else:
                self._task_error = exc  # raised by the main loop, as ARQ's t.result() does
        self._slot_free.set()

    # --- one job (arq.worker.Worker.run_job, minus the Redis reads the claim already did) -------------
    async def _run_claimed(self, job_id: str, score: int, v: bytes | None, job_try: int) -> None:
        start_ms = timestamp_ms()
        function_name, enqueue_time_ms = "<unknown>", 0
        args: tuple[Any, ...] = ()
        kwargs: dict[Any, Any] = {}

        async def job_failed(exc: BaseException) -> None:
            self.jobs_failed += 1
            result_data_ = serialize_result(
                function=function_name, args=args, kwargs=kwargs, job_try=job_try,
                enqueue_time_ms=enqueue_time_ms, success=False, result=exc, start_ms=start_ms,
                finished_ms=timestamp_ms(), ref=f"{job_id}:{function_name}", serializer=self.job_serializer,
                queue_name=self.queue_name, job_id=job_id,
            )
            await asyncio.shield(self.finish_failed_job(job_id, result_data_))

        if not v:
            logger.warning("job %s expired", job_id)
            return await job_failed(JobExecutionFailed("job expired"))
        try:
            function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
                v, deserializer=self.job_deserializer
            )
        except SerializationError as e:
            logger.exception("deserializing job %s failed", job_id)
            return await job_failed(e)
        try:
            function = self.functions[function_name]
        except KeyError:
            logger.warning("job %s, function %r not found", job_id, function_name)
            return await job_failed(JobExecutionFailed(f"function {function_name!r} not found"))

        if hasattr(function, "next_run"):  # cron job
            ref = function_name
            keep_in_progress: float | None = keep_cronjob_progress
        else:
            ref = f"{job_id}:{function_name}"
            keep_in_progress = None

        if enqueue_job_try and enqueue_job_try > job_try:
            job_try = enqueue_job_try
            await self.pool.setex(retry_key_prefix + job_id, 88400, str(job_try))

        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            t_s = (timestamp_ms() - enqueue_time_ms) / 1000
            logger.warning("%6.2fs ! %s max retries %d exceeded", t_s, ref, max_tries)
            self.jobs_failed += 1
            result_data = serialize_result(
                function_name, args, kwargs, job_try, enqueue_time_ms, False,
                JobExecutionFailed(f"max {max_tries} retries exceeded"), start_ms, timestamp_ms(), ref,
                self.queue_name, job_id=job_id, serializer=self.job_serializer,
            )
            return await asyncio.shield(self.finish_failed_job(job_id, result_data))

        result: Any = _no_result
        finish = False
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        incr_score: int | None = None
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueue_time_ms),
               "score": score}
        if self.on_job_start:
            await self.on_job_start(ctx)

        start_ms = timestamp_ms()
        success = False
        log_info = logger.isEnabledFor(logging.INFO)
        result_str = ""
        exc_extra: Any = None
        try:
            if log_info:
                extra = f" try={job_try}" if job_try > 1 else ""
                if (start_ms - score) > 1200:
                    extra += f" delayed={(start_ms - score) / 1000:0.2f}s"
                logger.info("%6.2fs → %s(%s)%s", (start_ms - enqueue_time_ms) / 1000, ref,
                            args_to_string(args, kwargs), extra)
            try:
                async with asyncio.timeout(timeout_s or None):
                    result = await function.coroutine(ctx, *args, **kwargs)
            except (Exception, asyncio.CancelledError) as e:
                exc_extra = getattr(e, "extra", None)
                if callable(exc_extra):
                    exc_extra = exc_extra()
                raise
            else:
                if log_info and result is not None and self.log_results:
                    result_str = truncate(repr(result))
        except (Exception, asyncio.CancelledError) as e:
            finished_ms = timestamp_ms()
            t_s = (finished_ms - start_ms) / 1000
            if self.retry_jobs and isinstance(e, Retry):
                incr_score = e.defer_score
                logger.info("%6.2fs ↻ %s retrying job in %0.2fs", t_s, ref, (e.defer_score or 0) / 1000)
                if e.defer_score:
                    incr_score = e.defer_score + (timestamp_ms() - score)
                self.jobs_retried += 1
            elif self.retry_jobs and isinstance(e, (asyncio.CancelledError, RetryJob)):
                logger.info("%6.2fs ↻ %s cancelled, will be run again", t_s, ref)
                self.jobs_retried += 1
            else:
                logger.exception("%6.2fs ! %s failed, %s: %s", t_s, ref, e.__class__.__name__, e,
                                 extra={"extra": exc_extra})
                result = e
                finish = True
                self.jobs_failed += 1
        else:
            success = True
            finished_ms = timestamp_ms()
            if log_info:
                logger.info("%6.2fs ← %s ● %s", (finished_ms - start_ms) / 1000, ref, result_str)
            finish = True
            self.jobs_complete += 1

        keep_result_forever = (
            self.keep_result_forever if function.keep_result_forever is None else function.keep_result_forever
        )
        result_timeout_s = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        result_data = None
        if result is not _no_result and (keep_result_forever or result_timeout_s > 0):
            result_data = serialize_result(
                function_name, args, kwargs, job_try, enqueue_time_ms, success, result, start_ms, finished_ms,
                ref, self.queue_name, job_id=job_id, serializer=self.job_serializer,
            )
        if self.on_job_end:
            await self.on_job_end(ctx)
        await asyncio.shield(self.finish_job(job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                             incr_score, keep_in_progress))
        if self.after_job_end:
            await self.after_job_end(ctx)

    # --- batched ends -----------------------------------------------------------------------------
    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
                         keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None) -> None:
        if not self._fast:
            return await super().finish_job(job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                             incr_score, keep_in_progress)
        px = 0 if keep_result_forever or result_timeout_s is None else to_ms(result_timeout_s)
        await self._write_end(job_id, finish, result_data if finish else None, px, incr_score or 0,
                              to_ms(keep_in_progress) if keep_in_progress is not None else 0)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        if not self._fast:
            return await super().finish_failed_job(job_id, result_data)
        keep = self.keep_result_forever or self.keep_result_s > 0
        px = 0 if self.keep_result_forever else to_ms(self.keep_result_s)
        await self._write_end(job_id, True, result_data if keep else None, px, 0, 0)

    def _write_end(self, job_id: str, finish: bool, result_data: bytes | None, px: int | None, incr: int,
                   keep_ms: int | None) -> asyncio.Future[None]:
        """Queue one job's end for the next batched write; the future resolves once it is written."""
        self._finish_args += (job_id, b"1" if finish else b"0", result_data or b"", px or 0, incr, keep_ms or 0)
        fut = self._finish_fut
        if fut is None:
            fut = self._finish_fut = self.loop.create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = self.loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        # Started with call_soon semantics, so every job that ends in this loop turn joins the first write;
        # jobs ending while a write is in flight join the next one (group commit).
        while self._finish_fut is not None:
            fut, args = self._finish_fut, self._finish_args
            self._finish_fut, self._finish_args = None, []
            try:
                await self._finish_script(keys=[self.queue_name, abort_jobs_ss],
                                          args=[in_progress_key_prefix, job_key_prefix, retry_key_prefix,
                                                result_key_prefix, *args])
            except BaseException as exc:  # every job of the batch sees the error, as ARQ's finish_job raises
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: the waiters may already be gone (shutdown)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                self.finish_writes += 1
                if not fut.done():
                    fut.set_result(None)

    async def close(self) -> None:
        # arq.worker.Worker.close, plus: wait for the last batched write before the pool closes.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when asked for and installed, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # optional dependency
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def create_worker(settings_cls: Any, *, fast: bool = True, **kwargs: Any) -> Worker:
    """Like arq.worker.create_worker; `fast=True` builds a FastWorker (same settings, same keys)."""
    cls = FastWorker if fast else Worker
    return cls(**{**get_kwargs(settings_cls), **kwargs})


def run_worker(settings_cls: Any, *, fast: bool = True, use_uvloop: bool = True, **kwargs: Any) -> Worker:
    """Like arq.worker.run_worker, on a FastWorker and (if installed) uvloop unless told otherwise."""
    asyncio.set_event_loop(new_event_loop(use_uvloop))
    worker = create_worker(settings_cls, fast=fast, **kwargs)
    worker.run()
    return worker


__all__ = ["FastWorker", "create_worker", "new_event_loop", "run_worker"]
